"""Restoring after a power cut: writing back the lines relay.db kept but the files lost.

The committer keeps each line written without an fsync in relay.db's outbox,
committed with the decisions it records, until an fsync has put it on disk. A
power cut can leave relay.db with lines the day files never got; at start
``restore`` writes them back, but only when they continue the chain exactly --
an outbox that disagrees with the files stops the start with
``AuditLogError``. The write-back is recorded as an ``audit_lines_restored``
line.

A mixin of ``AuditLog``: it uses the log's head (``seq``, ``head``), its open
day and its ``_open``/``_flush``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ccc_relay.audit.files import day_of_file, decode_line, line_hash
from ccc_relay.audit.records import AuditLogError, StagedLine

log = logging.getLogger("ccc_relay.audit")

RESTORED = "audit_lines_restored"


class Restoring:
    # Provided by AuditLog.
    log_dir: Path
    seq: int
    head: str
    _day: str | None
    _floor: str | None
    _last_file: str | None
    _pending: list[tuple[str, dict[str, Any]]]
    _open: Callable[[str], bool]
    _flush: Callable[..., None]

    def restore(self, rows: Sequence[StagedLine]) -> int:
        """Write back lines that were committed to relay.db but never reached disk.

        ``rows`` are the outbox's lines, oldest first. Those the files already
        hold are skipped; the rest must continue the chain exactly. Returns
        how many were written (and fsynced). Raises AuditLogError when the
        outbox does not continue the log, OSError on I/O failure.
        """
        todo = [row for row in rows if row.seq > self.seq]
        for row in rows:
            if row.seq == self.seq and line_hash(row.line) != self.head:
                raise AuditLogError(
                    f"relay.db's audit outbox disagrees with the log at seq {row.seq}; "
                    "run 'ccc audit verify'"
                )
        # The files may hold the rest only in the page cache (a crash, not a
        # power cut): make them durable before the caller forgets the outbox.
        for name in sorted({row.file for row in rows if row.seq <= self.seq}):
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self.log_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        lines: list[bytes] = []
        for row in todo:
            try:
                prev = decode_line(row.line)["prev"]
            except ValueError as exc:
                raise AuditLogError(f"relay.db's audit outbox line {row.seq}: {exc}") from None
            day = day_of_file(Path(row.file))
            if row.seq != self.seq + 1 or prev != self.head or day is None:
                raise AuditLogError(
                    f"relay.db's audit outbox does not continue the log at seq {self.seq}; "
                    "run 'ccc audit verify'"
                )
            if day != self._day:
                self._flush(lines, sync=False)
                lines.clear()
                self._open(day)  # fsyncs the file before it
                self._floor, self._last_file = day, row.file
            lines.append(row.line)
            self.seq, self.head = row.seq, line_hash(row.line)
        self._flush(lines)
        if todo:
            log.warning(
                "audit: restored %d line(s) (seq %d-%d) from relay.db that never reached the files",
                len(todo), todo[0].seq, todo[-1].seq,
            )  # fmt: skip
            self._pending.append((RESTORED, {
                "lines": len(todo), "first_seq": todo[0].seq, "last_seq": todo[-1].seq,
            }))  # fmt: skip
        return len(todo)
