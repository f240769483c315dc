"""The client library: the only way the CLI, the MCP server and hooks reach the relay.

``RelayClient`` is blocking, ``AsyncRelayClient`` is for asyncio; both only
move bytes for one ``ClientSession`` (``ccc_relay.protocol.client_session``),
which numbers sends, matches answers, keeps the inbox and drops duplicate
deliveries, and both raise ``RelayError`` with the relay's stable code and
sentence. ``AdminClient`` talks to the owner-only admin socket.
"""

from ccc_relay.client.admin import AdminClient
from ccc_relay.client.aio import AsyncRelayClient
from ccc_relay.client.base import RelayError, RelayUnavailable
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.client.sync import RelayClient

__all__ = [
    "AdminClient",
    "AsyncRelayClient",
    "Endpoint",
    "RelayClient",
    "RelayError",
    "RelayUnavailable",
]
