"""The relay's message-signing key: Ed25519, kept 0600 in the state dir.

Created on first start, loaded on every later one. Its public half is what
agents put in ``CCC_RELAY_PUBKEY`` (``ccc-statusd pubkey`` prints it) to check
that what they received is what the relay delivered, unchanged.

Signing costs about 40 microseconds per message in this process, so the relay
signs for the sessions that verify (``hello.signatures``), not for everyone.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ccc_relay.protocol.frames import Message
from ccc_relay.protocol.signature import message_signed_bytes

KEY_FILE = "relay-signing.key"


class MessageSigner:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, state_dir: Path) -> MessageSigner:
        """Raises OSError when the key file cannot be read or written, ValueError
        when it is not an Ed25519 key."""
        path = state_dir / KEY_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            return cls(key)
        loaded = serialization.load_pem_private_key(data, password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(loaded)

    def public_key_b64(self) -> str:
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode("ascii")

    def sign(self, message: Message) -> str:
        """The signature for a ``message`` frame (base64 Ed25519)."""
        data = message_signed_bytes(message)
        return base64.b64encode(self._key.sign(data)).decode("ascii")


def public_key_of(state_dir: Path) -> str | None:
    """The relay's public key (base64), or None before the relay first ran."""
    path = state_dir / KEY_FILE
    if not path.exists():
        return None
    return MessageSigner.load_or_create(state_dir).public_key_b64()
