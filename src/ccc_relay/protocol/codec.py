"""Framing and decoding: newline-delimited JSON, one frame per line.

``LineBuffer`` enforces the line cap *while* bytes arrive, so an oversized frame
is refused as soon as its unfinished line crosses the cap -- it is never
buffered whole. ``decode_*`` turns one complete line into a typed frame or a
``ProtocolError(INVALID)``; it never raises anything else.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import ClientFrame, RelayFrame
from ccc_relay.protocol.plain import plain_words

# Bytes a frame may carry besides the body: type, seq, names, thread, ids.
ENVELOPE_ALLOWANCE = 16 * 1024
# JSON may escape one body byte as six ("\u0001"); a body of exactly the limit
# must still fit in a line, so the line cap allows for the worst case.
JSON_ESCAPE_FACTOR = 6


def line_cap_for(max_message_size: int) -> int:
    """The longest line (without newline) that can carry a body of the limit."""
    return max_message_size * JSON_ESCAPE_FACTOR + ENVELOPE_ALLOWANCE


class FrameTooLarge(ProtocolError):
    def __init__(self, cap: int) -> None:
        super().__init__(
            ErrorCode.TOO_LARGE,
            f"frame longer than {cap} bytes; the connection is closed",
            fatal=True,
        )


class LineBuffer:
    """Accumulates stream bytes and yields complete lines, capped."""

    __slots__ = ("_buf", "_cap", "_scan_from")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._buf = bytearray()
        self._scan_from = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the complete lines it finished.

        Raises FrameTooLarge when an unfinished line exceeds the cap; the
        buffer is then unusable and the connection must be closed.
        """
        buf = self._buf
        buf += data
        lines: list[bytes] = []
        start = 0
        find = buf.find
        pos = find(b"\n", self._scan_from)
        while pos != -1:
            if pos - start > self._cap:
                raise FrameTooLarge(self._cap)
            lines.append(bytes(buf[start:pos]))
            start = pos + 1
            pos = find(b"\n", start)
        if start:
            del buf[:start]
        if len(buf) > self._cap:
            raise FrameTooLarge(self._cap)
        self._scan_from = len(buf)
        return lines

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held right now."""
        return len(self._buf)


_client_decoder = msgspec.json.Decoder(ClientFrame)
_relay_decoder = msgspec.json.Decoder(RelayFrame)
_encoder = msgspec.json.Encoder()


def _decode(decoder: msgspec.json.Decoder[Any], line: bytes) -> Any:
    try:
        return decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID, f"invalid frame: {plain_words(str(exc))}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.INVALID, f"not a JSON object in UTF-8: {exc}") from None
    except RecursionError:
        # msgspec recurses per nesting level: b"[" * 5000 must be a refusal, not a crash.
        raise ProtocolError(ErrorCode.INVALID, "invalid frame: nested too deeply") from None


def decode_client_frame(line: bytes) -> ClientFrame:
    """Decode one line sent by a client. Raises ProtocolError(INVALID)."""
    frame: ClientFrame = _decode(_client_decoder, line)
    return frame


def decode_relay_frame(line: bytes) -> RelayFrame:
    """Decode one line sent by the relay. Raises ProtocolError(INVALID)."""
    frame: RelayFrame = _decode(_relay_decoder, line)
    return frame


def encode(frame: msgspec.Struct) -> bytes:
    """One frame as a line, newline included."""
    return _encoder.encode(frame) + b"\n"


def body_size(body: str) -> int:
    """A body's size as the limit counts it: UTF-8 bytes.

    Raises ProtocolError(INVALID) for text that is not valid Unicode (a lone
    surrogate decoded from a ``\\ud800`` escape).
    """
    try:
        return len(body.encode("utf-8"))
    except UnicodeEncodeError:
        raise ProtocolError(ErrorCode.INVALID, "body is not valid Unicode text") from None
