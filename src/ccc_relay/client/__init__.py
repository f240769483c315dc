"""The client library: the only way the CLI, the MCP server and hooks reach the relay.

``RelayClient`` is blocking, ``AsyncRelayClient`` is for asyncio; both only
move bytes for one ``ClientSession`` (``ccc_relay.protocol.client_session``),
which numbers sends, matches answers, keeps the inbox and drops duplicate
deliveries, and both raise ``RelayError`` with the relay's stable code and
sentence. ``AdminClient`` talks to the owner-only admin socket.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ccc_relay.client.errors import RelayError, RelayUnavailable

if TYPE_CHECKING:
    from ccc_relay.client.admin import AdminClient
    from ccc_relay.client.aio import AsyncRelayClient
    from ccc_relay.client.endpoint import Endpoint
    from ccc_relay.client.sync import RelayClient

# Loaded on first use: a Claude Code hook needs the blocking client and should
# not pay for asyncio.
_LAZY = {
    "AdminClient": "ccc_relay.client.admin",
    "AsyncRelayClient": "ccc_relay.client.aio",
    "Endpoint": "ccc_relay.client.endpoint",
    "RelayClient": "ccc_relay.client.sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AdminClient",
    "AsyncRelayClient",
    "Endpoint",
    "RelayClient",
    "RelayError",
    "RelayUnavailable",
]
