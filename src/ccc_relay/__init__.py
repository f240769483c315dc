"""ccc-relay: a host relay for agents in isolated containers.

Layers, from the bottom up (imports only point downwards):

* ``protocol``  -- sans-IO frame codec, message structs and error codes
* ``policy``    -- frozen configuration, name rules, access control, rate limits
* ``store``     -- SQLite persistence with group commit
* ``audit``     -- the hash-chained audit log
* ``daemon``    -- the asyncio shell that wires the layers to sockets
* ``client``    -- the sync and asyncio client library
* ``cli``       -- the ``ccc`` and ``ccc-statusd`` commands
"""

__version__ = "0.1.0"
