"""Checking the relay's signature on what it delivers.

With a relay public key (``CCC_RELAY_PUBKEY``: base64 of the raw Ed25519 key,
or a file holding it), a client asks the relay to sign deliveries and refuses
any message that is unsigned or whose signature does not verify: it raises
``RelayError("bad_signature")`` and does not acknowledge it.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ccc_relay.client.base import RelayError
from ccc_relay.protocol.frames import Message
from ccc_relay.protocol.signature import message_signed_bytes


def load_public_key(value: str) -> Ed25519PublicKey:
    """From base64 text or a file that holds it. Raises ValueError with a reason."""
    text = value.strip()
    if os.path.sep in text and Path(text).is_file():
        text = Path(text).read_text(encoding="ascii").strip()
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise ValueError(
            "CCC_RELAY_PUBKEY must be the relay's public key in base64 "
            "(ccc-statusd pubkey prints it) or a file holding it"
        ) from None


def public_key_from_env(env: Mapping[str, str] | None = None) -> Ed25519PublicKey | None:
    env = os.environ if env is None else env
    value = env.get("CCC_RELAY_PUBKEY")
    return load_public_key(value) if value else None


def verify_message(key: Ed25519PublicKey, message: Message) -> None:
    """Raises RelayError("bad_signature") unless the relay's signature verifies."""
    if not message.signature:
        raise RelayError("bad_signature", f"message {message.id} arrived unsigned; refusing it")
    data = message_signed_bytes(message)
    try:
        key.verify(base64.b64decode(message.signature, validate=True), data)
    except (InvalidSignature, binascii.Error, ValueError):
        raise RelayError(
            "bad_signature",
            f"message {message.id} has a signature that does not verify; refusing it",
        ) from None


def verifier(key: Ed25519PublicKey | None) -> Callable[[Message], None] | None:
    """What a ``ClientSession`` checks each delivery with: nothing without a key."""
    return None if key is None else partial(verify_message, key)
