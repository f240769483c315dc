"""Reading the audit log back for people: tail, follow, search, and safe printing.

Nothing here writes or judges the chain (that is ``verify``). Lines that do not
decode are skipped: a damaged log is ``verify``'s news, and a search should
still find what is intact. Every string printed for a terminal goes through
``printable`` first, because an audit line may hold anything an agent sent.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ccc_relay.audit.files import CHAIN_KEYS, audit_files, day_of, day_of_file, decode_line
from ccc_relay.policy.units import UnitError, parse_duration

SUMMARY_WIDTH = 80  # characters of body or details on a human-readable line
_DURATION = re.compile(r"^\s*\d+(?:\.\d+)?\s*[a-z]+\s*$", re.IGNORECASE)
_SHOWN_ELSEWHERE = {*CHAIN_KEYS, "from", "to", "agent", "code", "body", "reason"}


def read_records(path: Path, *, end: int | None = None) -> Iterator[dict[str, Any]]:
    """The decodable records of ``path``, up to byte ``end``. Raises OSError."""
    with open(path, "rb") as f:
        consumed = 0
        for raw in f:
            consumed += len(raw)
            if end is not None and consumed > end:
                return
            if not raw.endswith(b"\n"):
                return  # still being written
            try:
                yield decode_line(raw[:-1])
            except ValueError:
                continue


def tail(log_dir: Path, count: int, *, end: tuple[Path, int] | None = None) -> list[dict[str, Any]]:
    """The last ``count`` records across day files, oldest first.

    ``end`` stops reading at (file, byte offset), so a follower started there
    sees every later line exactly once. Raises OSError.
    """
    if count <= 0:
        return []
    files = audit_files(log_dir)
    if end is not None:
        files = [p for p in files if p.name <= end[0].name]
    found: list[dict[str, Any]] = []
    for path in reversed(files):
        stop = end[1] if end is not None and path.name == end[0].name else None
        found[:0] = deque(read_records(path, end=stop), maxlen=count - len(found))
        if len(found) >= count:
            break
    return found


class Follower:
    """Yields lines as they are appended, moving on to the next day's file when it appears."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        files = audit_files(log_dir)
        self.path: Path | None = files[-1] if files else None
        self.offset = self.path.stat().st_size if self.path is not None else 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        """Every complete record appended since the last poll. Raises OSError."""
        out = self._read_new()
        while True:
            newer = [p for p in audit_files(self.log_dir)
                     if self.path is None or p.name > self.path.name]  # fmt: skip
            if not newer:
                return out
            # The writer never returns to a file once the next day's exists, so
            # reading the old one once more gets everything it will ever hold.
            out += self._read_new()
            self.path, self.offset, self._partial = newer[0], 0, b""
            out += self._read_new()

    def _read_new(self) -> list[dict[str, Any]]:
        if self.path is None:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:  # deleted by retention under our feet
            return []
        self.offset += len(chunk)
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        out = []
        for raw in complete:
            try:
                out.append(decode_line(raw))
            except ValueError:
                continue
        return out


def parse_when(text: str, now: float) -> float:
    """``1h``/``30m``/``2d`` (that long ago), ``now``, ISO 8601 (UTC unless it says), or Unix time.

    Raises ValueError for anything else.
    """
    value = text.strip()
    if value.lower() == "now":
        return now
    if _DURATION.match(value):
        try:
            return now - parse_duration(value)
        except UnitError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use 1h, 2d, 2024-05-01, 2024-05-01T12:00Z or Unix seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class Query:
    """What ``ccc audit search`` looks for; every given condition must hold."""

    sender: str | None = None  # the acting agent: ``from`` of a message, else ``agent``
    recipient: str | None = None
    code: str | None = None
    words: tuple[str, ...] = ()  # each must appear in some string of the record, any case
    events: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        ts = record.get("ts")
        if not isinstance(ts, int | float):
            return False
        if (self.since is not None and ts < self.since) or (
            self.until is not None and ts > self.until):  # fmt: skip
            return False
        if self.events and record.get("event") not in self.events:
            return False
        if self.sender is not None and actor(record) != self.sender:
            return False
        if self.recipient is not None and record.get("to") != self.recipient:
            return False
        if self.code is not None and record.get("code") != self.code:
            return False
        if self.words:
            text = " ".join(_strings(record)).casefold()
            return all(word.casefold() in text for word in self.words)
        return True


def search(log_dir: Path, query: Query) -> Iterator[dict[str, Any]]:
    """Matching records, oldest first. Raises OSError."""
    first = day_of(query.since) if query.since is not None else None
    for path in audit_files(log_dir):
        # A day's file may hold lines stamped earlier (the clock stepped back), never
        # later, so only files before the first wanted day can be skipped unread.
        if first is not None and (day_of_file(path) or "") < first:
            continue
        for record in read_records(path):
            if query.matches(record):
                yield record


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def actor(record: dict[str, Any]) -> str | None:
    who = record.get("from", record.get("agent"))
    if who is None and "by_uid" in record:
        return f"uid:{record['by_uid']}"
    return None if who is None else str(who)


def printable(text: str) -> str:
    """``text`` with every control, format or separator character shown as an escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # as a UTF-16 surrogate pair, which JSON also accepts
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_line(record: dict[str, Any]) -> str:
    """One record as a JSON line that is safe on a terminal and still valid JSON."""
    # json.dumps escapes C0 controls; what it leaves (DEL, C1, bidi, tags, ...)
    # can only occur inside strings, where \\u escapes are valid JSON.
    return printable(json.dumps(record, ensure_ascii=False))


def human_line(record: dict[str, Any]) -> str:
    """time, seq, event, who->whom, code, then a short body or the other fields."""
    ts = record.get("ts")
    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"
            if isinstance(ts, int | float) else "?")  # fmt: skip
    who, whom = actor(record), record.get("to")
    route = f"{who or ''}->{whom}" if whom is not None else (who or "-")
    code = record.get("code")
    body = record.get("body", record.get("reason"))
    if isinstance(body, str):
        summary = repr(body) if len(body) <= SUMMARY_WIDTH else repr(body[:SUMMARY_WIDTH] + "...")
    else:
        summary = " ".join(
            f"{k}={_short(v)}" for k, v in record.items() if k not in _SHOWN_ELSEWHERE
        )
    parts = [when, f"#{record.get('seq', '?')}", str(record.get("event", "?")), str(route)]
    if code is not None:
        parts.append(f"[{code}]")
    parts.append(summary)
    return printable("  ".join(parts))


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a SHA-256: the first 12 digits identify it
        return value[:12]
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
