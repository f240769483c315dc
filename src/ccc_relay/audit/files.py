"""The audit log as it lies on disk: file names, chain keys, line hashes, reading lines back.

The writer (``log.py``), ``verify`` and ``query`` must agree on all of it, so it
lives here once. A day's file is ``audit-YYYY-MM-DD.jsonl``; each line is a JSON
object with ``seq``, ``ts``, ``prev`` (the SHA-256 of the previous line's bytes,
without its newline, or ``GENESIS`` for the very first) and ``event``. Nothing
here writes.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

GENESIS = "0" * 64  # ``prev`` of the very first line
CHAIN_KEYS = ("seq", "ts", "prev", "event")  # an event's own fields never overwrite these
FILE_PREFIX = "audit-"
FILE_SUFFIX = ".jsonl"
FILE_OPENED = "file_opened"
_FILE_NAME = re.compile(r"^audit-(\d{4}-\d{2}-\d{2})\.jsonl$")
_READ_BLOCK = 64 * 1024  # first step when reading a file backwards; doubles for long lines


_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


def day_end(day: str) -> float:
    """The Unix time at which UTC day ``day`` (YYYY-MM-DD) ends."""
    return (datetime.date.fromisoformat(day).toordinal() - _EPOCH_ORDINAL + 1) * 86400.0


def day_of(ts: float) -> str:
    """The UTC day of ``ts`` (Unix days are exactly 86400 s: no leap seconds)."""
    return _day_name(int(ts // 86400))


@functools.lru_cache(maxsize=8)
def _day_name(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


def file_for_day(log_dir: Path, day: str) -> Path:
    return log_dir / file_name_for_day(day)


def file_name_for_day(day: str) -> str:
    return f"{FILE_PREFIX}{day}{FILE_SUFFIX}"


def day_of_file(path: Path) -> str | None:
    """``audit-2024-05-01.jsonl`` -> ``2024-05-01``; None for any other name."""
    match = _FILE_NAME.match(path.name)
    return match.group(1) if match else None


def audit_files(log_dir: Path) -> list[Path]:
    """The log's files, oldest first (the names sort by day); symlinks are not the log's."""
    try:
        entries = list(log_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for path in entries:
        if day_of_file(path) is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(path).st_mode):
                found.append(path)
    return sorted(found)


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@dataclass(frozen=True, slots=True)
class Tail:
    last: bytes | None  # the last complete line, without its newline
    torn: int  # bytes after the last newline: an unfinished line
    size: int


def read_tail(path: Path) -> Tail:
    """The last complete line of ``path``, however long. Raises OSError."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        buf = b""
        pos = size
        while True:
            nl = buf.rfind(b"\n")
            if nl != -1:
                start = buf.rfind(b"\n", 0, nl)
                if start != -1 or pos == 0:
                    return Tail(buf[start + 1 : nl], len(buf) - nl - 1, size)
            elif pos == 0:
                return Tail(None, len(buf), size)
            step = min(max(_READ_BLOCK, len(buf)), pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf


def decode_line(line: bytes) -> dict[str, Any]:
    """A line's record. Raises ValueError unless it is an object with the chain keys."""
    try:
        record = msgspec.json.decode(line)
    except msgspec.DecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    seq, prev = record.get("seq"), record.get("prev")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError("no valid 'seq'")
    if not isinstance(record.get("ts"), int | float) or isinstance(record.get("ts"), bool):
        raise ValueError("no valid 'ts'")
    if not isinstance(prev, str) or len(prev) != 64:
        raise ValueError("no valid 'prev'")
    if not isinstance(record.get("event"), str):
        raise ValueError("no valid 'event'")
    return record


def read_backwards(files: list[Path]) -> Iterator[tuple[Path, int, bytes]]:
    """The complete lines of ``files``, newest first: (file, offset of the line, line).

    Reads blocks from the end, so finding a line near the end of a long log is
    cheap. Bytes after a file's last newline (an unfinished line) are skipped.
    Raises OSError.
    """
    for path in reversed(files):
        with open(path, "rb") as f:
            pos = f.seek(0, os.SEEK_END)
            buf = b""  # the bytes from ``pos`` on that are not handed out yet
            complete = False  # whether an unfinished last line was cut from ``buf``
            while True:
                if pos > 0:
                    step = min(max(_READ_BLOCK, len(buf)), pos)
                    pos -= step
                    f.seek(pos)
                    buf = f.read(step) + buf
                if not complete:
                    cut = buf.rfind(b"\n")
                    if cut == -1:
                        if pos == 0:
                            break  # not one complete line
                        continue
                    buf, complete = buf[: cut + 1], True
                end = len(buf) - 1  # ``buf`` ends with the newline of the line before ``end``
                while (start := buf.rfind(b"\n", 0, end)) != -1:
                    yield path, pos + start + 1, buf[start + 1 : end]
                    end = start
                if pos == 0:
                    yield path, 0, buf[:end]
                    break
                buf = buf[: end + 1]
