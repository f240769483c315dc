"""Appending to the audit log: one JSON line per decision, hash-chained.

Each line carries ``seq`` (one more than the line before), ``ts`` (Unix
seconds), ``prev`` (the SHA-256 of the previous line's bytes, without its
newline) and the event's own fields. Changing, removing, inserting or
reordering any line breaks the chain at that point. Lines go into one file per
UTC day, ``audit-YYYY-MM-DD.jsonl``, created 0600 (0640 when a group is
configured) and never followed through a symlink.

A day's file opens with a ``file_opened`` line naming the file before it, so
``verify`` can name a file deleted from the middle of the log. The writer never
goes back to an earlier day's file (a clock stepping back keeps writing into
the current one), so the files' order is always the chain's order.

On start the chain continues from the last line on disk. An unfinished last
line (a crash mid-write, before its fsync) is cut off and the cut is recorded
as a ``torn_line_dropped`` line. A lock on the directory
keeps a second writer (a second daemon starting up) from touching the files.

Retention cuts (``apply_retention``; the rule is in ``retention.py``), signed
checkpoints (``checkpoint``; the rule is in ``signing.py``) and forward-secure
seals (``seal``, with the ``sealer`` the daemon attaches; the rule is in
``sealing.py``) are lines of the same chain; they live in ``upkeep.py``. The
checks at start against relay.db's recorded head and the seal key, which raise
tamper alarms, live in ``tamper.py``. Only the committer thread calls the
writing methods. ``append_unsynced`` writes without an fsync and hands the
lines back: the committer keeps them in relay.db's outbox, committed with the
decisions they record, until a ``sync_owed`` fsync has put them on disk.
``restore`` (in ``restoring.py``) writes back what a power cut kept from the
files. ``AuditRecord``, ``StagedLine`` and ``AuditLogError`` live in
``records.py`` and are imported from here too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ccc_relay.audit.files import (
    CHAIN_KEYS,
    FILE_OPENED,
    GENESIS,
    Tail,
    audit_files,
    day_end,
    day_of,
    day_of_file,
    decode_line,
    file_for_day,
    file_name_for_day,
    line_hash,
    read_tail,
)
from ccc_relay.audit.records import AuditLogError, AuditRecord, StagedLine, fsync_dir
from ccc_relay.audit.restoring import RESTORED, Restoring
from ccc_relay.audit.sealing import SEAL, Sealer
from ccc_relay.audit.signing import CHECKPOINT
from ccc_relay.audit.tamper import TamperChecks
from ccc_relay.audit.upkeep import Upkeep

_CHAIN_KEY_SET = frozenset(CHAIN_KEYS)


@dataclass(frozen=True, slots=True)
class AuditMark:
    """Where the chain stood before a batch (see ``AuditLog.rewind``)."""

    day: str | None
    size: int | None
    seq: int
    head: str
    pending: list[tuple[str, dict[str, Any]]]
    floor: str | None
    last_file: str | None
    checkpointed: int
    sealed: int
    seal_due: int


__all__ = ["RESTORED", "TORN_LINE", "AuditLog", "AuditLogError", "AuditRecord", "StagedLine"]

log = logging.getLogger("ccc_relay.audit")

TORN_LINE = "torn_line_dropped"
# Names lines a rolled-back transaction had written that could not be cut back.
ROLLED_BACK = "rolled_back"

_encoder = msgspec.json.Encoder()


class AuditLog(Restoring, Upkeep, TamperChecks):
    """The writer. Raises AuditLogError from the constructor when the log is held or damaged."""

    def __init__(
        self, log_dir: Path, *, file_mode: int = 0o600, group_id: int | None = None
    ) -> None:
        self.log_dir = log_dir
        self._file_mode = file_mode
        self._group_id = group_id
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._day: str | None = None  # the day of the open file
        self._day_ends = 0.0  # when that day ends (Unix time)
        self._floor: str | None = None  # the day of the file holding the last line
        self._last_file: str | None = None  # that file's name
        self._pending: list[tuple[str, dict[str, Any]]] = []  # recorded with the next line
        self._checkpointed = 0  # seq of the last checkpoint line
        self._sealed = 0  # seq of the last seal line
        self._seal_due = 0  # that seal's seq while its epoch's key is not destroyed yet
        self.sealer: Sealer | None = None  # set by the daemon: seals need a seal key
        self._dirty = False  # lines written to the open file since its last fsync
        self._staged: list[StagedLine] | None = None  # collects what append_unsynced writes
        self._ts_seen, self._ts_rounded = 0.0, 0.0  # the last line's time, and as written
        self.seq = 0
        self.head = GENESIS
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock()
        try:
            self._recover_head()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        fd = os.open(self.log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditLogError(
                f"another process (a running ccc-statusd?) is writing the audit log "
                f"in {self.log_dir}"
            ) from None
        self._lock_fd = fd

    def _recover_head(self) -> None:
        """Continue the chain from the last complete line on disk."""
        for path in reversed(audit_files(self.log_dir)):
            tail = read_tail(path)
            if tail.torn:
                self._drop_torn(path, tail)
            if tail.last is None:
                continue
            try:
                record = decode_line(tail.last)
            except ValueError as exc:
                raise AuditLogError(
                    f"cannot continue the audit chain: the last line of {path} is damaged "
                    f"({exc}); run 'ccc audit verify'"
                ) from None
            self.seq, self.head = int(record["seq"]), line_hash(tail.last)
            self._floor, self._last_file = day_of_file(path), path.name
            if record["event"] == CHECKPOINT:
                self._checkpointed = self.seq
            elif record["event"] == SEAL:
                self._sealed = self.seq
            return

    def _drop_torn(self, path: Path, tail: Tail) -> None:
        keep = tail.size - tail.torn
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.lseek(fd, keep, os.SEEK_SET)
            dropped = os.read(fd, tail.torn)
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning("audit: dropped an unfinished last line of %d bytes from %s", tail.torn, path)
        self._pending.append((TORN_LINE, {
            "file": path.name, "bytes": tail.torn, "sha256": hashlib.sha256(dropped).hexdigest(),
        }))  # fmt: skip

    # --- writing ------------------------------------------------------------

    def append(self, records: Sequence[AuditRecord]) -> None:
        """Chain, write and fsync ``records``. Raises OSError on I/O failure."""
        if self.append_unsynced(records):
            self.sync_owed()()

    def append_unsynced(
        self, records: Sequence[AuditRecord], *, stage: bool = True
    ) -> list[StagedLine]:
        """Chain and write ``records`` without an fsync; return every line written
        (nothing with ``stage=False``, for a caller that fsyncs them itself).

        The lines are in the page cache, visible to readers, but on disk only
        after a later :meth:`sync_owed` callable returned. The caller keeps
        the returned lines durable meanwhile (the committer puts them in
        relay.db's outbox, in the transaction they describe, or fsyncs them
        before that transaction commits). Raises OSError on I/O failure.
        """
        staged: list[StagedLine] = []
        if not records:
            return staged
        self._staged = staged if stage else None
        try:
            lines: list[bytes] = []
            for record in records:
                self._enter(record.ts, lines)
                lines.append(self._chain(record.ts, record.event, record.fields))
            self._flush(lines, sync=False)
        finally:
            self._staged = None
        return staged

    def mark(self) -> AuditMark:
        """Where the chain stands now, for :meth:`rewind`."""
        size = os.fstat(self._fd).st_size if self._fd is not None else None
        return AuditMark(
            self._day, size, self.seq, self.head, list(self._pending), self._floor,
            self._last_file, self._checkpointed, self._sealed, self._seal_due,
        )  # fmt: skip

    def rewind(self, mark: AuditMark) -> None:
        """Take back the unsynced lines written since ``mark``: the transaction they
        described rolled back, so the log must not say it happened.

        The open file is cut back to where it stood. If a new day's file was
        opened meanwhile (a batch across midnight), its lines stay and a chained
        ``rolled_back`` line names them instead. A seal cut back this way was never
        committed, so its epoch's key is still the current one and seals again.
        Raises OSError.
        """
        if self.seq == mark.seq:
            return
        if self._day == mark.day and self._fd is not None and mark.size is not None:
            os.ftruncate(self._fd, mark.size)
            os.fsync(self._fd)
            self.seq, self.head = mark.seq, mark.head
            self._pending = mark.pending
            self._floor, self._last_file = mark.floor, mark.last_file
            self._checkpointed, self._sealed = mark.checkpointed, mark.sealed
            self._seal_due = mark.seal_due
            return
        first, last = mark.seq + 1, self.seq
        self.append(
            [AuditRecord(self._day_ends - 1e-6, ROLLED_BACK, {"first": first, "last": last})]
        )

    def sync_owed(self) -> Callable[[], int]:
        """A callable that fsyncs every line written so far and returns the last one's seq.

        It fsyncs (and closes) a duplicate of the file's descriptor, so it may
        run on another thread while this log goes on -- even into the next
        day's file (the old file is fsynced before it is closed). Raises
        OSError (the callable too).
        """
        seq = self.seq
        if self._fd is None or not self._dirty:
            return lambda: seq
        fd = os.dup(self._fd)
        self._dirty = False

        def sync() -> int:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return seq

        return sync

    def _enter(self, ts: float, lines: list[bytes]) -> None:
        """Make the file for ``ts`` the open one, flushing ``lines`` into the old one first."""
        if ts < self._day_ends and self._day is not None and not self._pending:
            return  # still the open file's day (or earlier: the log never goes back)
        day = day_of(ts)
        floor = self._day or self._floor
        if floor is not None and day < floor:
            day = floor
        if day != self._day:
            self._flush(lines)
            lines.clear()
            fresh = self._open(day)
            name = file_for_day(self.log_dir, day).name
            if fresh:
                lines.append(self._chain(ts, FILE_OPENED, {"after": self._last_file}))
            self._floor, self._last_file = day, name
        for event, fields in self._pending:
            lines.append(self._chain(ts, event, fields))
        self._pending.clear()

    def _chain(self, ts: float, event: str, fields: dict[str, Any]) -> bytes:
        if not _CHAIN_KEY_SET.isdisjoint(fields):
            fields = {(f"{k}_" if k in CHAIN_KEYS else k): v for k, v in fields.items()}
        # The lines of one batch mostly share a time, and rounding a float to a
        # number of digits is slower than the rest of the line's encoding.
        if ts != self._ts_seen or type(ts) is not type(self._ts_seen):  # 1 and 1.0 differ
            self._ts_seen, self._ts_rounded = ts, round(ts, 6)
        line = _encoder.encode(
            {
                "seq": self.seq + 1,
                "ts": self._ts_rounded,
                "prev": self.head,
                "event": event,
                **fields,
            }
        )
        self.seq += 1
        self.head = line_hash(line)
        return line

    def _open(self, day: str) -> bool:
        """Open ``day``'s file for appending; True when it is new (empty)."""
        if self._lock_fd is None:
            self._lock()
        self._close_file()
        path = file_for_day(self.log_dir, day)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, self._file_mode)
        try:
            os.fchmod(fd, self._file_mode)
            if self._group_id is not None:
                os.fchown(fd, -1, self._group_id)
            fresh = os.fstat(fd).st_size == 0
            if fresh:  # the file's name must survive a power cut as its lines do
                fsync_dir(self.log_dir)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._day = fd, day
        self._day_ends = day_end(day)
        return fresh

    def _flush(self, lines: list[bytes], *, sync: bool = True) -> None:
        if not lines:
            return
        assert self._fd is not None
        data = b"\n".join(lines) + b"\n"
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._staged is not None:  # ``lines`` are always the newest chained ones
            first = self.seq - len(lines) + 1
            name = file_name_for_day(self._day or "")  # no Path: this runs every batch
            self._staged.extend(StagedLine(first + i, name, line) for i, line in enumerate(lines))
        if sync:
            os.fsync(self._fd)
            self._dirty = False
        else:
            self._dirty = True

    def _close_file(self) -> None:
        if self._fd is not None:
            if self._dirty:  # sync_owed() promises every line written so far
                os.fsync(self._fd)
                self._dirty = False
            os.close(self._fd)
            self._fd = None
            self._day = None

    def close(self) -> None:
        """Close the open file (fsynced) and release the directory lock."""
        try:
            self._close_file()
        except OSError as exc:  # what it held is in relay.db's outbox, restored at start
            log.error("audit: the last fsync of %s failed: %s", self._day, exc)
            with contextlib.suppress(OSError):
                if self._fd is not None:
                    os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.sealer is not None:
            self.sealer.close()
