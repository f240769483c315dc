"""The checks at start: does the log end where relay.db says the relay left it,
and does the seal key agree with the log's last seal? Where not: a tamper alarm.

``check_recorded_head`` compares the files' last line (after a power cut's lines
were restored from the outbox) with ``meta.audit_head``. When the files hold
lines after the recorded head, the relay did not commit them: someone appended
them while it was stopped, or it crashed between writing a batch and
committing it. Either way it does not chain from them: they are moved, byte for
byte, to ``audit-set-aside-after-<seq>.jsonl`` in the log dir (not a day file,
so no longer part of the chain) and the day file is cut back to the recorded
head. If the relay had stopped cleanly at that head (``close_audit`` records
it in relay.db), nobody but an intruder wrote them: a ``tamper_alarm`` line
names what was recorded, what was found and where the lines went. After a
crash they may be the relay's own batch that never committed (decisions that
did not happen): an ``uncommitted_lines_set_aside`` line names them, with a
warning, and no alarm. When the line at the recorded seq differs, or the files
end before it, nothing can be set apart: the alarm names the mismatch and the
chain goes on from the files' last line.

``check_seal_state`` finds the log's last ``seal`` (or ``seal_key_created``)
line. Its key and epoch must be the seal key's: the epoch before the current
one, or the current one when the relay stopped after a seal was committed but
before it destroyed that epoch's key (then the key evolves now). A missing or
replaced seal key file, or an epoch that does not fit, is a tamper alarm. A
new seal key is announced by a ``seal_key_created`` line.

Every alarm is also logged at CRITICAL; the daemon keeps the unacknowledged
ones in relay.db for ``ccc status`` and ``ccc audit verify`` fails on them
until ``ccc audit acknowledge`` writes a ``tamper_alarm_acknowledged`` line.

A mixin of ``AuditLog``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ccc_relay.audit.files import audit_files, day_of_file, decode_line, line_hash, read_backwards
from ccc_relay.audit.recorded import Head
from ccc_relay.audit.records import AuditRecord, fsync_dir
from ccc_relay.audit.sealing import SEAL, SEAL_KEY_CREATED, Sealer
from ccc_relay.audit.signing import CHECKPOINT

log = logging.getLogger("ccc_relay.audit")

TAMPER_ALARM = "tamper_alarm"
ALARM_ACK = "tamper_alarm_acknowledged"
UNCOMMITTED = "uncommitted_lines_set_aside"
SET_ASIDE_PREFIX = "audit-set-aside-after-"
_COPY_BLOCK = 1024 * 1024


class TamperChecks:
    # Provided by AuditLog.
    log_dir: Path
    seq: int
    head: str
    sealer: Sealer | None
    _file_mode: int
    _group_id: int | None
    _floor: str | None
    _last_file: str | None
    _checkpointed: int
    _sealed: int
    append: Callable[[Sequence[AuditRecord]], None]
    _close_file: Callable[[], None]

    # --- the recorded head --------------------------------------------------------------

    def check_recorded_head(
        self, recorded: Head | None, now: float, *, stopped_cleanly: bool
    ) -> dict[str, Any] | None:
        """Raise a tamper alarm when the files do not end at ``recorded``; the alarm, or None.

        Lines after the recorded head are set apart and the chain continues
        from the head; they are an alarm only when the relay had
        ``stopped_cleanly`` there. Raises OSError.
        """
        if recorded is None or (recorded.seq, recorded.hash) == (self.seq, self.head):
            return None
        fields: dict[str, Any] = {
            "recorded_seq": recorded.seq, "recorded_hash": recorded.hash,
            "found_seq": self.seq, "found_hash": self.head,
        }  # fmt: skip
        extra = self.seq - recorded.seq
        found = self._find(recorded) if extra > 0 else None
        if found is not None:
            path, end, event = found
            aside = self._set_aside(path, end, recorded, event)
            fields.update(reason="lines_after_recorded_head", stopped_cleanly=stopped_cleanly,
                          set_aside=aside)  # fmt: skip
            moved = (
                f"they were moved to {aside['file']} and the chain continues from the recorded head"
            )
            if not stopped_cleanly:
                detail = (
                    f"the files held {extra} line(s) after the head relay.db recorded (seq "
                    f"{recorded.seq}), where the relay did not stop cleanly: a batch it wrote "
                    f"but never committed (or lines appended after a crash); {moved}"
                )
                log.warning("audit: %s", detail)
                self.append([AuditRecord(now, UNCOMMITTED, {**fields, "detail": detail})])
                return None
            detail = (
                f"the files held {extra} line(s) after the head relay.db recorded (seq "
                f"{recorded.seq}), where the relay had stopped cleanly: it did not write "
                f"them; {moved}"
            )
        elif extra >= 0:
            fields["reason"] = "head_differs"
            detail = (
                f"the line at seq {recorded.seq} is not the one relay.db recorded "
                f"({recorded.hash[:16]}...): the log was changed at or before it; the chain "
                f"continues from the files' last line (seq {self.seq})"
            )
        else:
            fields["reason"] = "lines_missing"
            detail = (
                f"the files end at seq {self.seq} but relay.db recorded seq {recorded.seq}: "
                f"{-extra} line(s) were removed; the chain continues from the files' last line"
            )
        return self._alarm(now, fields, detail)

    def _find(self, recorded: Head) -> tuple[Path, int, str] | None:
        """Where the recorded head's line ends: (file, offset after its newline, its event);
        None unless the files hold it unchanged."""
        for path, offset, line in read_backwards(audit_files(self.log_dir)):
            try:
                record = decode_line(line)
            except ValueError:
                return None
            if record["seq"] > recorded.seq:
                continue
            if record["seq"] != recorded.seq or line_hash(line) != recorded.hash:
                return None
            return path, offset + len(line) + 1, str(record["event"])
        return None

    def _set_aside(self, path: Path, end: int, recorded: Head, event: str) -> dict[str, Any]:
        """Move everything after byte ``end`` of ``path`` (and every later file) to a new
        file outside the chain; the log then ends at ``recorded``."""
        self._close_file()
        later = [p for p in audit_files(self.log_dir) if p.name > path.name]
        target, fd = self._evidence_file(recorded.seq)
        digest = hashlib.sha256()
        count = 0
        try:
            for source, start in [(path, end), *((p, 0) for p in later)]:
                with open(source, "rb") as f:
                    f.seek(start)
                    while block := f.read(_COPY_BLOCK):
                        digest.update(block)
                        count += block.count(b"\n")
                        view = memoryview(block)
                        while view:
                            view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.log_dir)  # the copy is durable before anything is removed
        cut = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(cut, end)
            os.fsync(cut)
        finally:
            os.close(cut)
        for p in later:
            p.unlink()
        fsync_dir(self.log_dir)
        self.seq, self.head = recorded.seq, recorded.hash
        self._floor, self._last_file = day_of_file(path), path.name
        self._checkpointed = self.seq if event == CHECKPOINT else 0
        self._sealed = self.seq if event == SEAL else 0
        removed = [p.name for p in later]
        return {"file": target.name, "lines": count, "sha256": digest.hexdigest(),
                "files_removed": removed}  # fmt: skip

    def _evidence_file(self, seq: int) -> tuple[Path, int]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for n in range(1, 1000):
            suffix = "" if n == 1 else f"-{n}"
            target = self.log_dir / f"{SET_ASIDE_PREFIX}{seq}{suffix}.jsonl"
            try:
                fd = os.open(target, flags, self._file_mode)
            except FileExistsError:
                continue
            with contextlib.suppress(OSError):
                if self._group_id is not None:
                    os.fchown(fd, -1, self._group_id)
            return target, fd
        raise OSError(f"too many set-aside files for seq {seq} in {self.log_dir}")

    # --- the seal key -------------------------------------------------------------------

    def check_seal_state(self, now: float) -> list[dict[str, Any]]:
        """Check the seal key against the log's last seal; the alarms raised. Raises OSError."""
        sealer = self.sealer
        if sealer is None:
            return []
        last = self._last_seal()
        found: tuple[dict[str, Any], str] | None = None  # an alarm's fields and detail
        announce = False
        if last is None:
            announce = sealer.epoch == 0
            if not announce:
                found = (
                    {"reason": "seals_missing", "key_id": sealer.key_id, "epoch": sealer.epoch},
                    f"the seal key {sealer.key_id} is at epoch {sealer.epoch}, but the log "
                    "holds no seal: its seals were removed",
                )
        elif last.get("key_id") != sealer.key_id:
            reason = "seal_key_missing" if sealer.created else "seal_key_replaced"
            what = "its key file is gone" if sealer.created else "its key file was replaced"
            found = (
                {"reason": reason, "log_key_id": last.get("key_id"), "key_id": sealer.key_id},
                f"the log was sealed with key {last.get('key_id')} (seq {last['seq']}) but "
                f"{what}: seals from here on are made with key {sealer.key_id}",
            )
            announce = True
        else:
            # seal_key_created counts as the seal of epoch -1.
            epoch = last.get("epoch", -2) if last["event"] == SEAL else -1
            if epoch == sealer.epoch:
                sealer.evolve()  # the seal was committed; its key must go now
            elif epoch != sealer.epoch - 1:
                found = (
                    {
                        "reason": "seal_epoch_mismatch",
                        "key_id": sealer.key_id,
                        "epoch": sealer.epoch,
                        "log_epoch": epoch,
                    },
                    f"the seal key is at epoch {sealer.epoch} but the log's last seal line "
                    f"(seq {last['seq']}) is of epoch {epoch}: seals were removed or the key "
                    "file was changed",
                )
        alarms = [] if found is None else [self._alarm(now, *found)]
        if announce:
            self.append([AuditRecord(now, SEAL_KEY_CREATED, {"key_id": sealer.key_id})])
        return alarms

    def _last_seal(self) -> dict[str, Any] | None:
        for _, _, line in read_backwards(audit_files(self.log_dir)):
            if b'"event":"seal' not in line:
                continue
            with contextlib.suppress(ValueError):
                record = decode_line(line)
                if record["event"] in (SEAL, SEAL_KEY_CREATED):
                    return record
        return None

    def _alarm(self, now: float, fields: dict[str, Any], detail: str) -> dict[str, Any]:
        """Write a chained, fsynced tamper_alarm line; what relay.db keeps of it."""
        log.critical("audit TAMPER ALARM: %s", detail)
        self.append([AuditRecord(now, TAMPER_ALARM, {**fields, "detail": detail})])
        return {"seq": self.seq, "ts": round(now, 6), "reason": fields["reason"], "detail": detail}
