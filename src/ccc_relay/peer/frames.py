"""Direct mode's frames: what a frame must prove before its body is believed.

The rule this module owns: a frame is signed with HMAC-SHA256 under the pair
key over a canonical encoding of *every* field (its type, the protocol
version, sender, recipient, seq, timestamp, body), and a signature is compared
only with ``hmac.compare_digest``. The listener's answers are signed the same
way and name the request's signature, so a sender can tell its own frame was
judged by the holder of the pair key and not by whatever else is bound at the
socket path.

Like ``protocol/``, this is free of I/O: no sockets, no clock, no logging.

Wire (one JSON object per line, as the relay's protocol)::

    sender -> listener  {"type":"send","v":1,"from":"bob","to":"alice","seq":7,
                         "ts":1718000000123,"body":"...","mac":"<64 hex>"}
    listener -> sender  {"type":"accepted","seq":7,"id":"d_...","changes":[...],"mac":"..."}
                        {"type":"error","code":"replay","message":"...","seq":7,
                         "next_seq":9,"mac":"..."}
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Annotated

import msgspec

from ccc_relay.protocol.codec import body_size
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import AgentName, Seq

PEER_PROTOCOL_VERSION = 1
# Every signed byte string starts with this, so a direct-mode signature can
# never be taken for a signature of anything else made with the same key.
MAC_DOMAIN = b"ccc-relay direct mode v1\x00"
MAX_TS_MS = 4102444800 * 1000  # 2100-01-01, as frames.Timestamp bounds the relay's times
MAX_SENTENCE = 1000  # an error sentence; longer is not a sentence
MAX_CHANGES = 32  # sanitize reports one line per kind; far fewer kinds exist

Mac = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
# Milliseconds: an integer has one canonical spelling, a float does not.
TimestampMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TS_MS)]
Sentence = Annotated[str, msgspec.Meta(max_length=MAX_SENTENCE)]
MessageId = Annotated[str, msgspec.Meta(pattern=r"^d_[A-Za-z0-9_-]{8,64}$")]


class _PeerFrame(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    pass


class PeerSend(_PeerFrame, tag="send"):
    v: int
    sender: AgentName = msgspec.field(name="from")
    recipient: AgentName = msgspec.field(name="to")
    seq: Seq
    ts: TimestampMs
    body: str
    mac: Mac


class PeerAccepted(_PeerFrame, tag="accepted"):
    seq: Seq
    id: MessageId
    mac: Mac
    changes: Annotated[list[Sentence], msgspec.Meta(max_length=MAX_CHANGES)] = msgspec.field(
        default_factory=list
    )


class PeerError(_PeerFrame, tag="error"):
    """A refusal. ``mac`` is present only when the request proved its sender."""

    code: Annotated[str, msgspec.Meta(max_length=64)]
    message: Sentence
    seq: Seq | None = None
    next_seq: Seq | None = None  # signed refusals: the seq the listener expects next
    retry_after: Annotated[float, msgspec.Meta(ge=0, le=86400)] | None = None
    mac: Mac | None = None


PeerReply = PeerAccepted | PeerError

_send_decoder = msgspec.json.Decoder(PeerSend)
_reply_decoder = msgspec.json.Decoder(PeerReply)


# --- canonical encoding and signatures ---------------------------------------

_Field = str | int | None | Sequence[str]


def _canonical_parts(kind: str, fields: Sequence[_Field]) -> list[bytes]:
    # Each field is typed and length-prefixed, so no two different field lists
    # share an encoding ("ab","c" vs "a","bc"; the int 5 vs the string "5").
    parts = [MAC_DOMAIN]
    for value in (kind, *fields):
        if value is None:
            parts.append(b"n")
        elif isinstance(value, int):
            digits = str(value).encode("ascii")
            parts += (b"i", len(digits).to_bytes(8, "big"), digits)
        elif isinstance(value, str):
            data = value.encode("utf-8")
            parts += (b"s", len(data).to_bytes(8, "big"), data)
        else:
            parts += (b"l", len(value).to_bytes(8, "big"))
            for item in value:
                data = item.encode("utf-8")
                parts += (b"s", len(data).to_bytes(8, "big"), data)
    return parts


def canonical(kind: str, *fields: _Field) -> bytes:
    """The exact bytes a signature covers (exposed for the docs and the tests)."""
    return b"".join(_canonical_parts(kind, fields))


def _mac(key: bytes, kind: str, *fields: _Field) -> str:
    digest = hmac.new(key, digestmod=hashlib.sha256)
    for part in _canonical_parts(kind, fields):  # no 1 MB join just to hash it
        digest.update(part)
    return digest.hexdigest()


def _ms(seconds: float | None) -> int | None:
    # retry_after travels as a float; its signature covers whole milliseconds.
    return None if seconds is None else round(seconds * 1000)


def _whole_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000) / 1000


def send_mac(key: bytes, *, v: int, sender: str, recipient: str, seq: int, ts: int,
             body: str) -> str:  # fmt: skip
    """The signature of a ``send`` frame. Raises UnicodeEncodeError for a lone surrogate."""
    return _mac(key, "send", v, sender, recipient, seq, ts, body)


def sign_send(key: bytes, *, sender: str, recipient: str, seq: int, ts: int,
              body: str) -> PeerSend:  # fmt: skip
    """A signed ``send`` frame. Raises ProtocolError(INVALID) for a body that is not Unicode."""
    body_size(body)
    v = PEER_PROTOCOL_VERSION
    mac = send_mac(key, v=v, sender=sender, recipient=recipient, seq=seq, ts=ts, body=body)
    return PeerSend(v=v, sender=sender, recipient=recipient, seq=seq, ts=ts, body=body, mac=mac)


def verify_send(key: bytes, frame: PeerSend) -> None:
    """Raises ProtocolError(AUTH_FAILED, fatal) unless ``frame`` was signed with ``key``.

    The body must already have passed ``check_body`` (a lone surrogate cannot
    be encoded, so it cannot be verified).
    """
    expected = send_mac(key, v=frame.v, sender=frame.sender, recipient=frame.recipient,
                        seq=frame.seq, ts=frame.ts, body=frame.body)  # fmt: skip
    if not hmac.compare_digest(expected, frame.mac):
        raise bad_signature()


def bad_signature() -> ProtocolError:
    # One sentence for "no key for that sender" and "wrong signature": which
    # pairs exist is none of an unauthenticated peer's business.
    return ProtocolError(
        ErrorCode.AUTH_FAILED,
        "the frame's signature does not verify with the pair key of its sender and recipient; "
        "the connection is closed",
        fatal=True,
    )


def _accepted_mac(key: bytes, listener: str, request: PeerSend, id: str,
                  changes: Sequence[str]) -> str:  # fmt: skip
    # Signing and checking an answer share this one field list, and it names
    # the request's signature: an answer fits exactly one frame.
    return _mac(key, "accepted", listener, request.sender, request.seq, id, changes, request.mac)


def _error_mac(key: bytes, listener: str, request: PeerSend, code: str, message: str,
               next_seq: int | None, retry_after: float | None) -> str:  # fmt: skip
    return _mac(key, "error", listener, request.sender, request.seq, code, message, next_seq,
                _ms(retry_after), request.mac)  # fmt: skip


def sign_accepted(key: bytes, *, listener: str, request: PeerSend, id: str,
                  changes: Sequence[str]) -> PeerAccepted:  # fmt: skip
    mac = _accepted_mac(key, listener, request, id, changes)
    return PeerAccepted(seq=request.seq, id=id, changes=list(changes), mac=mac)


def sign_error(key: bytes, *, listener: str, request: PeerSend, error: ProtocolError,
               next_seq: int | None) -> PeerError:  # fmt: skip
    code, message = error.code.value, error.message[:MAX_SENTENCE]
    retry_after = _whole_ms(error.retry_after)
    mac = _error_mac(key, listener, request, code, message, next_seq, retry_after)
    return PeerError(code=code, message=message, seq=request.seq, next_seq=next_seq,
                     retry_after=retry_after, mac=mac)  # fmt: skip


def unsigned_error(error: ProtocolError, *, seq: int | None = None) -> PeerError:
    """A refusal of a frame that did not prove its sender: nothing to sign it for."""
    return PeerError(code=error.code.value, message=error.message[:MAX_SENTENCE], seq=seq,
                     retry_after=_whole_ms(error.retry_after))  # fmt: skip


def verify_reply(key: bytes, reply: PeerReply, *, listener: str, request: PeerSend) -> bool:
    """True when ``reply`` was signed with ``key`` by ``listener`` for exactly ``request``."""
    if reply.mac is None or reply.seq != request.seq:
        return False
    if isinstance(reply, PeerAccepted):
        expected = _accepted_mac(key, listener, request, reply.id, reply.changes)
    else:
        expected = _error_mac(key, listener, request, reply.code, reply.message, reply.next_seq,
                              reply.retry_after)  # fmt: skip
    return hmac.compare_digest(expected, reply.mac)


# --- the checks, in the order the listener applies them -----------------------


def decode_send(line: bytes) -> PeerSend:
    """One line from a sender. Raises ProtocolError(INVALID) for anything but a valid frame."""
    try:
        frame: PeerSend = _send_decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID, f"invalid frame: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.INVALID, f"not a JSON object in UTF-8: {exc}") from None
    return frame


def decode_reply(line: bytes) -> PeerReply:
    """One line from a listener. Raises ProtocolError(INVALID)."""
    try:
        reply: PeerReply = _reply_decoder.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.INVALID, f"the listener's answer is invalid: {exc}") from None
    return reply


def check_version(frame: PeerSend) -> None:
    """Raises ProtocolError(UNSUPPORTED_VERSION, fatal)."""
    if frame.v != PEER_PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"direct-mode version {frame.v} is not supported; this listener speaks "
            f"{PEER_PROTOCOL_VERSION}",
            fatal=True,
        )


def check_body(body: str, max_message_size: int) -> None:
    """Raises ProtocolError: TOO_LARGE (fatal) over the limit, INVALID for non-Unicode text."""
    size = body_size(body)
    if size > max_message_size:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"body is {size} bytes; the limit is {max_message_size} bytes; "
            "the connection is closed",
            fatal=True,
        )


def check_seq(last_seq: int, seq: int) -> None:
    """The relay's rule: each sender's seq grows by exactly 1.

    Raises ProtocolError(REPLAY) for a seq at or below ``last_seq`` and
    ProtocolError(OUT_OF_ORDER) for one that skips ahead. A gap is refused, not
    tolerated as a lost frame: the sender learns the expected seq from the
    signed refusal and sends the frame again.
    """
    if seq <= last_seq:
        raise ProtocolError(
            ErrorCode.REPLAY,
            f"seq {seq} was already used by this sender (last was {last_seq})",
        )
    if seq != last_seq + 1:
        raise ProtocolError(
            ErrorCode.OUT_OF_ORDER,
            f"seq {seq} skips ahead; the next seq is {last_seq + 1}",
        )
