"""The relay core: every decision on the message path, as plain code over plain data.

Nothing in this package does I/O: no asyncio, no sockets, no SQLite, no clock.
``RelayCore`` takes events (a connection opened, bytes arrived, the store
answered, time passed) and returns effects (``effects.py``) for the shell in
``ccc_relay.daemon`` to carry out. ``admission.py`` owns who may authenticate
and send, ``routing.py`` where a committed message goes.
"""
