"""The wire protocol, free of I/O: bytes in, frames out, frames in, bytes out.

Nothing in this package reads a clock, opens a socket or logs; that is what
keeps it fast to test and fuzzable.
"""

from ccc_relay.protocol.codec import FrameTooLarge, LineBuffer, decode_client_frame, encode
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION",
    "ErrorCode",
    "FrameTooLarge",
    "LineBuffer",
    "ProtocolError",
    "decode_client_frame",
    "encode",
]
