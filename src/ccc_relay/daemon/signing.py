"""The relay's message-signing key: Ed25519, kept 0600 in the state dir.

Created on first start, loaded on every later one -- only when it is a regular
file of the relay's own user that nobody else may read or write. Its public half is what
agents put in ``CCC_RELAY_PUBKEY`` (``ccc-statusd pubkey`` prints it) to check
that what they received is what the relay delivered, unchanged.

Signing a 1 KiB message costs about 30 microseconds of CPU, so the relay
signs for the sessions that verify (``hello.signatures``), not for everyone.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ccc_relay.audit.signing import SigningKeyError
from ccc_relay.daemon.privileges import sudo
from ccc_relay.protocol.frames import Message
from ccc_relay.protocol.signature import message_signed_bytes

KEY_FILE = "relay-signing.key"
MAX_KEY_FILE = 16 * 1024  # a PEM key is a few hundred bytes; refuse to slurp anything huge


class MessageKeyError(SigningKeyError):
    """The message-signing key is exposed, planted or malformed; the message says the fix."""


class MessageSigner:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, state_dir: Path, *, owner: int | None = None) -> MessageSigner:
        """Load the key, or create it (0600, never through a symlink) when there is none.

        An existing key must be a regular file of ``owner`` (this process's
        user when None) that nobody else may read or write: anyone who could
        have read it can forge the relay's signatures, anyone who could have
        written it may have planted their own.

        Raises MessageKeyError (a ValueError) for a key that is exposed, not
        a file or not an Ed25519 key, OSError when it cannot be read or written.
        """
        path = state_dir / KEY_FILE
        try:
            data = _read_private(path, os.geteuid() if owner is None else owner)
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
        try:
            loaded = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise MessageKeyError(f"{path} is not a PEM private key") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise MessageKeyError(f"{path} does not hold an Ed25519 private key")
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

    def sign_bytes(self, data: bytes) -> str:
        """The signature over ``data`` (base64 Ed25519): what the relay forwards
        to another relay (``protocol/federation.signed_bytes``)."""
        return base64.b64encode(self._key.sign(data)).decode("ascii")


class PeerKeys:
    """The public keys the operator registered for other relays, by host name."""

    def __init__(self, peers: Mapping[str, str]) -> None:
        self._keys = {
            host: Ed25519PublicKey.from_public_bytes(base64.b64decode(key))
            for host, key in peers.items()
        }

    def verify(self, host: str, data: bytes, signature: str) -> bool:
        """Whether ``signature`` over ``data`` is by ``host``'s registered key;
        False for a host nobody registered or a malformed signature."""
        key = self._keys.get(host)
        if key is None:
            return False
        try:
            key.verify(base64.b64decode(signature, validate=True), data)
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


def public_key_of(state_dir: Path) -> str | None:
    """The relay's public key (base64), or None before the relay first ran.

    The key must belong to whoever owns ``state_dir`` (the relay's user, also
    when root asks). Raises what ``MessageSigner.load_or_create`` raises.
    """
    path = state_dir / KEY_FILE
    if not os.path.lexists(path):
        return None
    owner = os.lstat(state_dir).st_uid
    return MessageSigner.load_or_create(state_dir, owner=owner).public_key_b64()


def _read_private(path: Path, owner: int) -> bytes:
    """The bytes of the key file at ``path`` after checking who may touch it.

    Raises FileNotFoundError when there is none, MessageKeyError when it is
    a symlink, not a regular file, another user's or open to others.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MessageKeyError(
                f"{path} is a symlink; the relay's key must be a file of its own: "
                f"remove the link (rm {path}) and the relay makes a new key"
            ) from None
        raise
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise MessageKeyError(f"{path} is not a regular file; remove it with: rm -r {path}")
        if info.st_uid != owner:
            raise MessageKeyError(
                f"{path} belongs to uid {info.st_uid}, not to uid {owner} that the relay runs "
                f"as, so it may have been planted: remove it (rm {path}) and the relay makes "
                f"a new one, or if you made it fix it with: {sudo()}chown {owner} {path}"
            )
        if info.st_mode & 0o077:
            raise MessageKeyError(
                f"{path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}), "
                f"so the key may be known to them: if it never left your hands fix it with: "
                f"chmod 600 {path}; else remove it (rm {path}) and the relay makes a new one"
            )
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise MessageKeyError(f"{path} is too large to be a key")
    return data
