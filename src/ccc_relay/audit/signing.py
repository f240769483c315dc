"""Signed checkpoints: the Ed25519 key in the state dir and what exactly it signs.

A ``checkpoint`` line signs the line before it: the message is
``ccc-audit-checkpoint/1\\n<seq>\\n<sha256>\\n<ts>\\n`` where seq and sha256 are
the preceding line's, and ts is the checkpoint line's own ``ts`` written with six
decimals. Anyone holding the public key (``ccc audit pubkey``) can then prove
that the chain up to that line existed at that time, even if an intruder later
rewrote the log and the head kept in ``relay.db``.

The private key is ``audit-signing.key`` (PKCS#8 PEM, mode 0600) in the state
dir, created on first use and refused when others can read it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ccc_relay.audit.records import write_new_private_file

KEY_FILE = "audit-signing.key"
CHECKPOINT = "checkpoint"
MESSAGE_TAG = b"ccc-audit-checkpoint/1\n"  # versioned so a signature cannot mean anything else
MAX_KEY_FILE = 16 * 1024  # a PEM key is a few hundred bytes; refuse to slurp anything huge


class SigningKeyError(ValueError):
    """A signing or public key that is missing, unreadable, malformed or exposed."""


class SigningKeyMissing(SigningKeyError):
    """No private key has been made yet."""


def key_path(state_dir: Path) -> Path:
    return state_dir / KEY_FILE


def _read_small(path: Path, *, private: bool = False) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SigningKeyError(f"{path} is not a regular file")
        if private and info.st_mode & 0o077:
            raise SigningKeyError(
                f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                "the key may be known to them: chmod 600 it or remove it to make a new one"
            )
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise SigningKeyError(f"{path} is too large to be a key")
    return data


def load_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """The relay's private checkpoint key.

    Raises SigningKeyMissing when there is none yet, SigningKeyError when it
    is unreadable, not an Ed25519 key or readable by group/others.
    """
    path = key_path(state_dir)
    try:
        data = _read_small(path, private=True)
    except FileNotFoundError:
        raise SigningKeyMissing(f"no signing key at {path} yet") from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return key


def load_or_create_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """Load the checkpoint key, creating it (0600, never through a symlink) when absent.

    Raises SigningKeyError for a bad or exposed existing key and OSError when
    a new one cannot be written.
    """
    with contextlib.suppress(SigningKeyMissing):
        return load_signing_key(state_dir)
    path = key_path(state_dir)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    try:
        write_new_private_file(path, pem)
    except FileExistsError:  # another process made it a moment ago
        return load_signing_key(state_dir)
    return key


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def public_base64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(key)).decode("ascii")


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a public key written by ``ccc audit pubkey``: PEM, or raw 32 bytes in base64.

    Raises SigningKeyError when the file is unreadable or holds no Ed25519 key.
    """
    try:
        data = _read_small(path).strip()
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from None
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise SigningKeyError(f"{path}: not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError(f"{path}: not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError(f"{path}: neither PEM nor base64") from None
    if len(raw) != 32:
        raise SigningKeyError(f"{path}: an Ed25519 public key is 32 bytes, this is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def checkpoint_message(seq: int, head: str, ts: float) -> bytes:
    return MESSAGE_TAG + f"{seq}\n{head}\n{ts:.6f}\n".encode("ascii")


def checkpoint_fields(key: Ed25519PrivateKey, seq: int, head: str, ts: float) -> dict[str, Any]:
    """The fields of a checkpoint line written at ``ts`` right after line ``seq`` (``head``)."""
    signature = key.sign(checkpoint_message(seq, head, ts))
    return {
        "signed_seq": seq,
        "signed_head": head,
        "key_id": key_id(key.public_key()),
        "sig": base64.b64encode(signature).decode("ascii"),
    }


def signature_problem(record: dict[str, Any], key: Ed25519PublicKey) -> str | None:
    """Why the checkpoint ``record`` is not signed by ``key``, or None when it is."""
    if record.get("key_id") != key_id(key):
        return f"it names key {record.get('key_id')!r}, not the given key {key_id(key)}"
    try:
        signature = base64.b64decode(str(record.get("sig", "")), validate=True)
        message = checkpoint_message(
            int(record["signed_seq"]), str(record["signed_head"]), float(record["ts"])
        )
        key.verify(signature, message)
    except (KeyError, TypeError, ValueError, binascii.Error):
        return "its signature fields are malformed"
    except InvalidSignature:
        return "its signature does not verify"
    return None
