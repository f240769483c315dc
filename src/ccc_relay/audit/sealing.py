"""Forward-secure sealing: a MAC key that evolves one way, epoch by epoch.

The relay holds one 256-bit key per epoch. Epoch 0's key is a random seed; each
later key is derived from the one before, ``k[n+1] = HMAC-SHA256(k[n],
"ccc-audit-seal/evolve")``, and the old key is then overwritten in place in
its file (``audit-seal.key`` in the state dir, 0600) and fsynced. Knowing
``k[n]`` gives every later key but none before it: whoever takes the relay's
host today holds today's key only, and cannot make a seal of any past epoch.

A ``seal`` line ends an epoch. Its MAC (HMAC-SHA256 with
``HMAC-SHA256(k[n], "ccc-audit-seal/mac")``) is over the message
``ccc-audit-seal/1\\n<key_id>\\n<epoch>\\n<sealed_seq>\\n<sealed_head>\\n<ts>\\n``:
the seq and hash of the line before the seal (through the hash chain, every
line before it) and the seal's own ``ts`` with six decimals. The relay seals
with every checkpoint (at start, every 5 minutes when lines were added, and at
a clean stop) and destroys the epoch's key once the seal is committed.

The operator verifies with the seed, exported once off the host
(``ccc audit seal-key export``). Until then a copy waits in
``audit-seal.seed`` (0600), which the export prints and destroys. The export
line is ``ccc-audit-seal-1:<key_id>:<epoch>:<key, 64 hex digits>``: epoch 0
and the seed, or -- a later, forced export -- the current epoch and its key,
which verify only seals from that epoch on. It is a secret: it can make seals
as well as check them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccc_relay.audit.records import write_new_private_file

SEAL = "seal"
SEAL_KEY_CREATED = "seal_key_created"
STATE_FILE = "audit-seal.key"
SEED_FILE = "audit-seal.seed"
EXPORT_PREFIX = "ccc-audit-seal-1"
MAC_TAG = b"ccc-audit-seal/1\n"  # versioned so a seal's MAC cannot mean anything else
_EVOLVE = b"ccc-audit-seal/evolve"
_MAC_KEY = b"ccc-audit-seal/mac"
_ID = b"ccc-audit-seal/id\n"
_STATE_TAG = "ccc-audit-seal-state-1"
_EXPORTED = re.compile(r"^ccc-audit-seal-1:([0-9a-f]{16}):(\d{1,12}):([0-9a-f]{64})$")
_STATE = re.compile(
    r"^ccc-audit-seal-state-1 ([0-9a-f]{16}) (\d{12}) ([0-9a-f]{64}) ([0-9a-f]{16})\n$"
)
MAX_FILE = 4096  # both files are one short line


class SealKeyError(ValueError):
    """A seal key or key file that is missing, unreadable, malformed or exposed."""


def next_key(key: bytes) -> bytes:
    """The next epoch's key: one way, so the previous key cannot be had from it."""
    return hmac.new(key, _EVOLVE, hashlib.sha256).digest()


def key_id_of(seed: bytes) -> str:
    """A name for a seed (and every key derived from it): 16 hex digits."""
    return hashlib.sha256(_ID + seed).hexdigest()[:16]


def seal_message(key_id: str, epoch: int, seq: int, head: str, ts: float) -> bytes:
    return MAC_TAG + f"{key_id}\n{epoch}\n{seq}\n{head}\n{ts:.6f}\n".encode("ascii")


def seal_mac(key: bytes, key_id: str, epoch: int, seq: int, head: str, ts: float) -> str:
    mac_key = hmac.new(key, _MAC_KEY, hashlib.sha256).digest()
    return hmac.new(mac_key, seal_message(key_id, epoch, seq, head, ts), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class SealKey:
    """Verification material: the key of ``epoch`` of the series ``key_id``."""

    key_id: str
    epoch: int
    key: bytes

    def export(self) -> str:
        return f"{EXPORT_PREFIX}:{self.key_id}:{self.epoch}:{self.key.hex()}"

    @classmethod
    def parse(cls, text: str) -> SealKey:
        """An exported key line. Raises SealKeyError when it is not one."""
        match = _EXPORTED.match(text.strip())
        if match is None:
            raise SealKeyError(f"not a seal key (expected '{EXPORT_PREFIX}:<id>:<epoch>:<key>')")
        return cls(match.group(1), int(match.group(2)), bytes.fromhex(match.group(3)))


class EpochKeys:
    """Every epoch's key from ``start`` on, derived forward; for verifying seals in order."""

    def __init__(self, start: SealKey) -> None:
        self.start = start
        self._epoch = start.epoch
        self._key = start.key

    def key(self, epoch: int) -> bytes:
        """The key of ``epoch`` (>= the start epoch). Cheap when epochs are asked in order."""
        if epoch < self._epoch:
            self._epoch, self._key = self.start.epoch, self.start.key
        while self._epoch < epoch:
            self._key = next_key(self._key)
            self._epoch += 1
        return self._key

    def mac_matches(self, fields: dict[str, Any]) -> bool:
        """Whether a seal line's ``mac`` is the one this series' key makes for it."""
        try:
            epoch, mac = int(fields["epoch"]), str(fields["mac"])
            expected = seal_mac(
                self.key(epoch), self.start.key_id, epoch, int(fields["sealed_seq"]),
                str(fields["sealed_head"]), float(fields["ts"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return False
        return hmac.compare_digest(mac, expected)


# --- the files in the state dir ----------------------------------------------------------


def _read_small(path: Path) -> str:
    """A key file's text. Raises FileNotFoundError, SealKeyError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SealKeyError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SealKeyError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise SealKeyError(
                f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                "the key may be known to them: chmod 600 it"
            )
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise SealKeyError(f"{path} is too large to be a seal key")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise SealKeyError(f"{path} is not a seal key file") from None


def _state_record(key_id: str, epoch: int, key: bytes) -> bytes:
    """The state file's one line, always the same length, so it is overwritten in place."""
    body = f"{_STATE_TAG} {key_id} {epoch:012d} {key.hex()}"
    check = hashlib.sha256(body.encode("ascii")).hexdigest()[:16]
    return f"{body} {check}\n".encode("ascii")


def _parse_state(text: str, path: Path) -> SealKey:
    match = _STATE.match(text)
    if match is None:
        raise SealKeyError(f"{path} is damaged: not a seal key state")
    key_id, epoch, key_hex, _check = match.groups()
    expected = _state_record(key_id, int(epoch), bytes.fromhex(key_hex))
    if expected.decode("ascii") != text:
        raise SealKeyError(f"{path} is damaged: its checksum does not match")
    return SealKey(key_id, int(epoch), bytes.fromhex(key_hex))


def read_state(state_dir: Path) -> SealKey | None:
    """The relay's current epoch and key; None when there is none yet. Raises SealKeyError."""
    path = state_dir / STATE_FILE
    try:
        return _parse_state(_read_small(path), path)
    except FileNotFoundError:
        return None


def read_seed(state_dir: Path) -> SealKey | None:
    """The epoch-0 key still waiting to be exported; None once exported. Raises SealKeyError."""
    path = state_dir / SEED_FILE
    try:
        text = _read_small(path)
    except FileNotFoundError:
        return None
    try:
        return SealKey.parse(text)
    except SealKeyError:
        raise SealKeyError(f"{path} is damaged: not an exported seal key") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def destroy_seed(state_dir: Path) -> None:
    """Overwrite the seed file with zeros, fsync it, remove it and fsync the directory."""
    path = state_dir / SEED_FILE
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        os.pwrite(fd, b"\0" * size, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    _fsync_dir(state_dir)


def seal_status(state_dir: Path) -> dict[str, Any] | None:
    """What ``ccc status`` shows: the seal key's id, epoch, and whether it was exported."""
    for attempt in range(3):  # the relay may be overwriting the record this very moment
        try:
            state = read_state(state_dir)
            break
        except SealKeyError as exc:
            if attempt == 2:
                return {"problem": str(exc)}
    if state is None:
        return None
    return {
        "key_id": state.key_id,
        "epoch": state.epoch,
        "exported": not (state_dir / SEED_FILE).exists(),
    }


class Sealer:
    """The relay's side: the current epoch's key, kept open to be overwritten in place."""

    def __init__(self, path: Path, fd: int, current: SealKey, *, created: bool) -> None:
        self.path = path
        self._fd: int | None = fd
        self.key_id = current.key_id
        self.epoch = current.epoch
        self._key = current.key
        self.created = created  # a new series was made by this open()

    @classmethod
    def open(cls, state_dir: Path) -> Sealer:
        """Load the seal key, or make one (seed and state, 0600) when there is none.

        When the state is missing but the seed still waits to be exported (a
        crash while both were made), the state is made from the seed. Raises
        SealKeyError for a damaged or exposed file, OSError when one cannot be
        written.
        """
        path = state_dir / STATE_FILE
        current = read_state(state_dir)
        created = False
        if current is None:
            current = read_seed(state_dir)
            if current is None:
                seed = os.urandom(32)
                current = SealKey(key_id_of(seed), 0, seed)
                write_new_private_file(
                    state_dir / SEED_FILE, (current.export() + "\n").encode("ascii")
                )
                created = True
            write_new_private_file(path, _state_record(current.key_id, current.epoch, current.key))
            _fsync_dir(state_dir)
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        return cls(path, fd, current, created=created)

    def fields(self, seq: int, head: str, ts: float) -> dict[str, Any]:
        """The fields of a seal line written at ``ts`` right after line ``seq`` (``head``)."""
        return {
            "key_id": self.key_id,
            "epoch": self.epoch,
            "sealed_seq": seq,
            "sealed_head": head,
            "mac": seal_mac(self._key, self.key_id, self.epoch, seq, head, ts),
        }

    def evolve(self) -> None:
        """End the epoch: derive the next key and overwrite the old one on disk. Raises OSError."""
        key = next_key(self._key)
        record = _state_record(self.key_id, self.epoch + 1, key)
        assert self._fd is not None
        # The record has a fixed length, so this overwrites the old key's bytes.
        if os.pwrite(self._fd, record, 0) != len(record):
            raise OSError(f"short write to {self.path}")
        os.fsync(self._fd)
        self.epoch += 1
        self._key = key

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
