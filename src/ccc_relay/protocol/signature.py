"""What the relay's signature on a delivered message covers, byte for byte.

Both sides build the same canonical bytes: a domain tag, the message id, the
authenticated sender, the recipient, the send time, thread, reply_to and the
SHA-256 of the body, as a JSON array (msgspec encodes floats and strings
deterministically). The signature is Ed25519 over these bytes, base64 on the
wire. Pure: no keys, no I/O here.
"""

from __future__ import annotations

import hashlib

import msgspec

from ccc_relay.protocol.frames import Message

DOMAIN = "ccc-relay/message/v1"  # a signature for one purpose never verifies for another

_encoder = msgspec.json.Encoder()


def message_signed_bytes(message: Message) -> bytes:
    """What the signature on a delivered ``message`` frame covers."""
    return signed_bytes(
        message_id=message.id,
        sender=message.sender,
        to=message.to,
        sent_at=message.sent_at,
        body=message.body,
        thread=message.thread,
        reply_to=message.reply_to,
    )


def signed_bytes(
    *,
    message_id: str,
    sender: str,
    to: str,
    sent_at: float,
    body: str,
    thread: str | None,
    reply_to: str | None,
) -> bytes:
    body_hash = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return _encoder.encode([DOMAIN, message_id, sender, to, sent_at, thread, reply_to, body_hash])
