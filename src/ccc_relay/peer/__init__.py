"""Direct mode: the seed's fallback, agents talking over a shared Unix socket.

Used only when configured (``--direct``, or ``CCC_FALLBACK=direct`` when the
relay is unreachable), and loudly. Layers, downwards:

* ``frames``   sans-IO: the signed frame format, sign/verify, the seq rule;
* ``keys``     pair keys (256 bits, 0600 files) and where every file lives;
* ``inbox``    the durable store: received messages and seq high-water marks;
* ``listener`` the receiving end (checks in a fixed order, asyncio shell);
* ``sender``   the sending end, and when direct mode may be used at all.
"""

from ccc_relay.peer.frames import PEER_PROTOCOL_VERSION
from ccc_relay.peer.inbox import PeerStore, Received
from ccc_relay.peer.keys import (
    PairKey,
    PairKeyError,
    PeerConfig,
    PeerConfigError,
    read_pair_key,
    write_pair_key,
)
from ccc_relay.peer.listener import PeerListener, Receiver, prepare_shared_dir
from ccc_relay.peer.sender import (
    DirectReceipt,
    PeerUnavailable,
    direct_warning,
    fallback_mode,
    relay_or_direct,
    send_direct,
)

__all__ = [
    "PEER_PROTOCOL_VERSION",
    "DirectReceipt",
    "PairKey",
    "PairKeyError",
    "PeerConfig",
    "PeerConfigError",
    "PeerListener",
    "PeerStore",
    "PeerUnavailable",
    "Received",
    "Receiver",
    "direct_warning",
    "fallback_mode",
    "prepare_shared_dir",
    "read_pair_key",
    "relay_or_direct",
    "send_direct",
    "write_pair_key",
]
