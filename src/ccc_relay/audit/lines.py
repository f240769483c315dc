"""The audit files line by line, as ``verify`` walks them.

Every line comes out, complete or not and decodable or not, with its file, its
line number and the SHA-256 of its bytes: a damaged line is something to name,
not to skip. Only the few events ``verify`` reads keep their fields.
``Peekable`` lets the walk look ahead to tell a moved line from a deleted one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from ccc_relay.audit.files import FILE_OPENED, decode_line, line_hash
from ccc_relay.audit.retention import RETENTION_CUT
from ccc_relay.audit.sealing import SEAL
from ccc_relay.audit.signing import CHECKPOINT
from ccc_relay.audit.tamper import ALARM_ACK, TAMPER_ALARM, UNCOMMITTED

# Lines whose fields verify reads.
_KEPT_EVENTS = {FILE_OPENED, CHECKPOINT, RETENTION_CUT, SEAL, TAMPER_ALARM, ALARM_ACK, UNCOMMITTED}


@dataclass(slots=True)
class Line:
    """One line of a file as verify sees it: where it is, its hash, its chain keys or its fault."""

    path: Path
    number: int
    complete: bool
    hash: str
    seq: int
    prev: str
    event: str
    fields: dict[str, Any] | None  # kept only for the events verify reads
    problem: str | None

    @property
    def where(self) -> str:
        return f"{self.path.name} line {self.number}"


def read_lines(files: list[Path]) -> Iterator[Line]:
    """Every line of ``files`` in order, the unreadable ones too. Raises OSError."""
    for path in files:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                complete = raw.endswith(b"\n")
                data = raw[:-1] if complete else raw
                digest = line_hash(data)
                try:
                    record = decode_line(data)
                except ValueError as exc:
                    yield Line(path, number, complete, digest, 0, "", "", None, str(exc))
                    continue
                event = record["event"]
                fields = record if event in _KEPT_EVENTS else None
                yield Line(
                    path,
                    number,
                    complete,
                    digest,
                    record["seq"],
                    record["prev"],
                    event,
                    fields,
                    None,
                )


def retention_cuts(files: list[Path]) -> list[tuple[int, dict[str, Any]]]:
    """Every retention_cut line: (its seq, its record). Raises OSError."""
    found = []
    for path in files:
        with open(path, "rb") as f:
            for raw in f:
                if RETENTION_CUT.encode() not in raw:
                    continue
                try:
                    record = decode_line(raw.rstrip(b"\n"))
                except ValueError:
                    continue
                if record["event"] == RETENTION_CUT:
                    found.append((int(record["seq"]), record))
    return found


class Peekable:
    """An iterator that can look ahead without consuming."""

    def __init__(self, it: Iterator[Line]) -> None:
        self._it = it
        self._buf: deque[Line] = deque()

    def __iter__(self) -> Peekable:
        return self

    def __next__(self) -> Line:
        return self._buf.popleft() if self._buf else next(self._it)

    def peek(self, count: int) -> list[Line]:
        while len(self._buf) < count:
            try:
                self._buf.append(next(self._it))
            except StopIteration:
                break
        return list(islice(self._buf, count))
