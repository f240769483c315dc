"""Appending to the audit log: one JSON line per decision, hash-chained.

Each line carries ``seq`` (one more than the line before), ``ts`` (Unix
seconds), ``prev`` (the SHA-256 of the previous line's bytes) and the event's
own fields. Changing, removing, inserting or reordering any line breaks the
chain at that point. Lines go into one file per UTC day, ``audit-YYYY-MM-DD.jsonl``,
created 0600 (0640 when a group is configured) and never followed through a
symlink.

Only the committer thread calls ``append``; ``append`` writes and fsyncs, so a
line is on disk before the decision it records is answered.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

GENESIS = "0" * 64  # ``prev`` of the very first line
CHAIN_KEYS = ("seq", "ts", "prev", "event")  # an event's own fields never overwrite these
FILE_PREFIX = "audit-"
FILE_SUFFIX = ".jsonl"
_TAIL_PROBE = 64 * 1024  # enough to hold the last line of any file we write

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An event waiting for its place in the chain."""

    ts: float
    event: str
    fields: dict[str, Any]


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def file_for_day(log_dir: Path, day: str) -> Path:
    return log_dir / f"{FILE_PREFIX}{day}{FILE_SUFFIX}"


def audit_files(log_dir: Path) -> list[Path]:
    """The log's files, oldest first (the names sort by day)."""
    if not log_dir.is_dir():
        return []
    return sorted(
        p for p in log_dir.iterdir()
        if p.name.startswith(FILE_PREFIX) and p.name.endswith(FILE_SUFFIX) and not p.is_symlink()
    )  # fmt: skip


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _last_line(path: Path) -> bytes | None:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - _TAIL_PROBE))
        chunk = f.read()
    lines = [line for line in chunk.split(b"\n") if line.strip()]
    return lines[-1] if lines else None


class AuditLog:
    def __init__(self, log_dir: Path, *, file_mode: int = 0o600, group_id: int | None = None) -> None:
        self.log_dir = log_dir
        self._file_mode = file_mode
        self._group_id = group_id
        self._fd: int | None = None
        self._day: str | None = None
        self.seq = 0
        self.head = GENESIS
        self._recover_head()

    def _recover_head(self) -> None:
        """Continue the chain from the last line on disk."""
        for path in reversed(audit_files(self.log_dir)):
            last = _last_line(path)
            if last is None:
                continue
            try:
                record = msgspec.json.decode(last)
                self.seq = int(record["seq"])
            except (msgspec.DecodeError, KeyError, TypeError, ValueError):
                # A torn last line (power loss mid-write) is left for verify to
                # report; the chain continues from it so nothing later is lost.
                self.seq += 1
            self.head = line_hash(last)
            return

    def _open_for(self, ts: float) -> int:
        day = day_of(ts)
        if self._fd is not None and day == self._day:
            return self._fd
        self.close()
        path = file_for_day(self.log_dir, day)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, self._file_mode)
        os.fchmod(fd, self._file_mode)
        if self._group_id is not None:
            os.fchown(fd, -1, self._group_id)
        self._fd, self._day = fd, day
        return fd

    def append(self, records: Sequence[AuditRecord]) -> None:
        """Chain, write and fsync ``records``. Raises OSError on I/O failure."""
        if not records:
            return
        pending: list[bytes] = []
        fd = self._open_for(records[0].ts)
        for record in records:
            if day_of(record.ts) != self._day:
                self._flush(fd, pending)
                pending = []
                fd = self._open_for(record.ts)
            self.seq += 1
            fields = record.fields
            if any(key in fields for key in CHAIN_KEYS):
                fields = {(f"{k}_" if k in CHAIN_KEYS else k): v for k, v in fields.items()}
            line = _encoder.encode(
                {"seq": self.seq, "ts": round(record.ts, 6), "prev": self.head,
                 "event": record.event, **fields}
            )  # fmt: skip
            self.head = line_hash(line)
            pending.append(line)
        self._flush(fd, pending)

    @staticmethod
    def _flush(fd: int, lines: list[bytes]) -> None:
        if not lines:
            return
        data = b"\n".join(lines) + b"\n"
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._day = None


def body_fields(body: str, log_all_messages: bool) -> dict[str, Any]:
    """What the audit keeps of a body: all of it, or only its size and hash."""
    data = body.encode("utf-8")
    if log_all_messages:
        return {"body": body, "size": len(data)}
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
