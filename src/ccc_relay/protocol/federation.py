"""What one relay hands another through the federation stream: the Envelope.

One JSON object per stream message, on subject ``ccc.v1.<to_host>``:

* ``kind: "message"``: ``sender`` (an agent at ``from_host``) wrote to
  ``recipient`` (an agent at ``to_host``); ``id`` is the message id the sender
  was given (the stream's ``Nats-Msg-Id`` is the SHA-256 of the published bytes,
  so that no other relay can take it first: ``federation/link.py``);
* ``kind: "refused"``: ``to_host`` refused the message ``id`` that
  ``recipient`` (the original sender, an agent at ``to_host`` now) sent to
  ``sender`` (at ``from_host``), with ``code`` and ``reason``; its outbox key is
  ``refused:<id>``.

``sig`` is the Ed25519 signature of ``from_host``'s relay over
``signed_bytes(envelope)``: a domain tag, then the envelope with ``sig`` empty,
encoded by msgspec in the struct's fixed field order with every field present.
The receiving relay checks it against the key its operator registered for
``from_host`` before it believes anything in the envelope. Pure: no keys, no
I/O here.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ccc_relay.protocol.frames import AgentName, MessageId, Thread, Timestamp
from ccc_relay.protocol.names import HOST_PATTERN, MAX_HOST

DOMAIN = b"ccc-relay/federation/v1\n"  # a signature for one purpose never verifies for another
SUBJECT_PREFIX = "ccc.v1."
# The longest envelope a relay decodes: a body of the largest size any relay
# may configure (16 MB), every character escaped as \uXXXX, and the rest.
MAX_ENVELOPE = 6 * 16 * 1000**2 + 64 * 1024
MAX_REASON = 1024
MAX_CODE = 64

Host = Annotated[str, msgspec.Meta(pattern=HOST_PATTERN, max_length=MAX_HOST)]


class Envelope(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False, frozen=True):
    kind: Literal["message", "refused"]
    id: MessageId
    from_host: Host
    to_host: Host
    sender: AgentName
    recipient: AgentName
    sent_at: Timestamp
    body: str = ""
    thread: Thread | None = None
    reply_to: MessageId | None = None
    deliver_at: Timestamp | None = None
    code: Annotated[str, msgspec.Meta(max_length=MAX_CODE)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] | None = None
    sig: str = ""

    @property
    def stream_id(self) -> str:
        """The envelope's key in the sender's outbox: one row per message or refusal."""
        return self.id if self.kind == "message" else f"refused:{self.id}"

    @property
    def sender_address(self) -> str:
        return f"{self.sender}@{self.from_host}"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def subject_for(host: str) -> str:
    return SUBJECT_PREFIX + host


def signed_bytes(envelope: Envelope) -> bytes:
    """What ``sig`` covers: every other field, in one fixed encoding."""
    return DOMAIN + _encoder.encode(msgspec.structs.replace(envelope, sig=""))


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


class EnvelopeError(ValueError):
    """Bytes from the stream that are not an envelope (the message says what is wrong)."""


def decode_envelope(data: bytes) -> Envelope:
    """Raises EnvelopeError for anything but one valid envelope within MAX_ENVELOPE."""
    if len(data) > MAX_ENVELOPE:
        raise EnvelopeError(f"an envelope of {len(data)} bytes is over the {MAX_ENVELOPE} cap")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise EnvelopeError(f"not a valid envelope: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"not JSON: {exc}") from None
