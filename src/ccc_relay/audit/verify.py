"""Checking the audit chain: the first break, named by file, line number and kind.

The rules, checked along the files oldest first:

* every line ends with a newline and is a JSON object with ``seq``, ``ts``,
  ``prev`` and ``event``;
* ``seq`` grows by exactly one and ``prev`` is the SHA-256 of the line before;
* the first line is seq 1 after GENESIS, or is explained by a ``retention_cut``
  line later in the chain, and that cut is vouched for by the recorded head or
  a verified checkpoint (lines past every anchor could have been appended by
  anyone);
* a ``checkpoint`` signs the line before it and, given a public key, its
  signature verifies;
* a ``seal`` seals the line before it and, given a seal key, the seals run
  through the epochs one by one and each MAC verifies (``verify_seals.py``);
  the lines after the last verified seal are reported as the unsealed tail;
* the head recorded outside the log (``audit_head`` in relay.db) is a line of
  the chain. The log may run ahead of it (lines are written before the
  database commits) but may not stop short of it or differ at it -- unless the
  lines it lacks are in relay.db's ``audit_outbox`` and continue the chain to
  the head exactly: a power cut took them from the files before their fsync,
  and the relay writes them back at its next start. Once the relay stopped
  cleanly the log may not run ahead either: it did not write those lines, and
  its next start sets them apart with a tamper alarm;
* every ``tamper_alarm`` line is acknowledged by a later
  ``tamper_alarm_acknowledged`` line.

Where a check fails the neighbourhood decides the kind: a line whose true
predecessor comes later was reordered; a line the chain skips over was
inserted; a gap in seq that nothing later fills is a deletion (of a whole file
when the next file's ``file_opened`` line names a file that is gone); a hash
that no longer matches is an edit. Only the first break is reported: nothing
after it is anchored any more.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ccc_relay.audit.files import FILE_OPENED, GENESIS, audit_files, decode_line, line_hash
from ccc_relay.audit.lines import Line, Peekable, read_lines, retention_cuts
from ccc_relay.audit.recorded import Head
from ccc_relay.audit.report import Break, Kind, Report
from ccc_relay.audit.retention import explains_start
from ccc_relay.audit.sealing import SEAL, SealKey
from ccc_relay.audit.signing import CHECKPOINT, signature_problem
from ccc_relay.audit.verify_seals import AlarmWalk, SealWalk

LOOKAHEAD = 1000  # lines examined to tell a moved line from a deleted one


def _bridged(prev: Line, recorded: Head, outbox: Sequence[tuple[int, bytes]]) -> bool:
    """Do the outbox's lines continue the chain from ``prev`` exactly to ``recorded``?"""
    seq, head = prev.seq, prev.hash
    for line_seq, line in outbox:
        if line_seq <= seq:
            continue
        try:
            record = decode_line(line)
        except ValueError:
            return False
        if line_seq != seq + 1 or record["seq"] != line_seq or record["prev"] != head:
            return False
        seq, head = line_seq, line_hash(line)
        if seq == recorded.seq:
            return head == recorded.hash
    return False


def _at(kind: Kind, line: Line, detail: str) -> Break:
    return Break(kind, line.path.name, line.number, detail)


def verify_log(
    log_dir: Path,
    *,
    recorded: Head | None = None,
    public_key: Ed25519PublicKey | None = None,
    outbox: Sequence[tuple[int, bytes]] = (),
    seal_key: SealKey | None = None,
    stopped_cleanly: bool = False,
) -> Report:
    """Walk the chain in ``log_dir`` and report the first break, if any.

    ``recorded`` is the head kept outside the log (relay.db) and ``outbox``
    the lines relay.db still keeps (``recorded.read_outbox``); ``public_key``
    checks checkpoint signatures and ``seal_key`` seals. ``stopped_cleanly``
    says the relay stopped cleanly at ``recorded`` and is not running, so
    nothing may follow the recorded head.
    Raises OSError when a file cannot be read.
    """
    files = audit_files(log_dir)
    report = Report(files=len(files))
    names = {p.name for p in files}
    cuts = retention_cuts(files)
    lines = Peekable(read_lines(files))
    prev: Line | None = None
    before: Line | None = None
    head_seen = False
    start_cut: int | None = None  # seq of the cut line that explains the start
    anchor = recorded.seq if recorded is not None else 0  # lines up to here are vouched for
    seals = SealWalk(seal_key, report)
    alarms = AlarmWalk()
    after_head: Line | None = None  # the first line after the recorded head
    for line in lines:
        if not line.complete:
            if lines.peek(1):
                report.problem = _at(Kind.TRUNCATED, line, "the file ends inside this line")
                return report
            report.notes.append(f"the last line ({line.where}) is unfinished (being written, "
                                "or cut off) and was not checked")  # fmt: skip
            break
        if prev is None:
            problem, start_cut = _check_start(line, cuts, names, lines.peek(1))
        elif line.problem is None and line.seq == prev.seq + 1 and line.prev == prev.hash:
            problem = None
        else:
            problem = _classify(line, prev, before, lines.peek(LOOKAHEAD), names, recorded)
        if problem is None and line.event == CHECKPOINT:
            problem = _check_checkpoint(line, prev, public_key, report)
            if problem is None and public_key is not None:
                anchor = max(anchor, line.seq - 1)
        if problem is None and line.event == SEAL:
            problem = seals.check(line, prev, start_cut is not None)
            if problem is None and seals.last_verified == line.seq:
                anchor = max(anchor, line.seq - 1)
        if problem is None and recorded is not None and line.seq == recorded.seq:
            head_seen = True
            if line.hash != recorded.hash:
                problem = _at(Kind.EDITED, line, f"this line (seq {line.seq}) is not the "
                              "head relay.db recorded: it was changed")  # fmt: skip
        if problem is not None:
            report.problem = problem
            return report
        report.lines += 1
        alarms.see(line)
        if recorded is not None and line.seq == recorded.seq + 1 and after_head is None:
            after_head = line
        before, prev = prev, line
    if prev is not None:
        report.head = Head(prev.seq, prev.hash)
    report.problem = _check_tail(prev, recorded, head_seen)
    if report.problem is not None and report.problem.kind == Kind.TRUNCATED:
        assert prev is not None
        assert recorded is not None
        if _bridged(prev, recorded, outbox):
            report.problem = None
            report.notes.append(f"{_span(prev.seq + 1, recorded.seq)} are not in the files yet "
                                "but in relay.db's audit outbox, continuing the chain to the "
                                "recorded head (a crash came before the files' fsync); the "
                                "relay writes them back when it next starts")  # fmt: skip
    if report.problem is None and start_cut is not None:
        report.starts_after_cut = True
        if recorded is None and start_cut > anchor:
            report.notes.append("the log starts after a retention cut that nothing outside "
                                "the log vouches for (no recorded head or checkpoint)")  # fmt: skip
        elif start_cut > anchor:
            first = report.head.seq - report.lines + 1
            report.problem = Break(Kind.DELETED, None, None, f"the log starts at seq {first}, "
                                   f"explained only by a retention cut (seq {start_cut}) past the "
                                   "recorded head and every verified checkpoint")  # fmt: skip
    if report.problem is None and recorded is not None and prev is not None:
        if (extra := prev.seq - recorded.seq) > 0 and stopped_cleanly and after_head is not None:
            report.problem = _at(Kind.APPENDED, after_head, f"{extra} line(s) follow the head "
                                 f"relay.db recorded (seq {recorded.seq}), where the relay "
                                 "stopped cleanly: it did not write them; its next start sets "
                                 "them apart and raises a tamper alarm")  # fmt: skip
        elif extra > 0:
            report.notes.append(f"{extra} line(s) follow the head relay.db recorded (written "
                                "before the database committed, or appended since)")  # fmt: skip
    if report.problem is None:
        report.problem = alarms.finish(report, report.notes)
    if report.problem is None:
        seals.finish(report.notes)
    return report


def _check_start(
    line: Line, cuts: list[tuple[int, dict[str, Any]]], names: set[str], ahead: list[Line]
) -> tuple[Break | None, int | None]:
    """The first line: genesis, or explained by a retention cut; else what is missing."""

    def starts(x: Line) -> bool:
        return x.problem is None and (x.seq == 1 and x.prev == GENESIS)

    if starts(line):
        return None, None
    if line.problem is None:
        for seq, cut in cuts:
            if explains_start(cut, line.seq, line.prev):
                return None, seq
    if ahead and (starts(ahead[0]) or (ahead[0].problem is None and any(
            explains_start(cut, ahead[0].seq, ahead[0].prev) for _, cut in cuts))):  # fmt: skip
        return _at(Kind.INSERTED, line, "this line stands before the start of the chain"), None
    if line.problem is not None:
        return _at(Kind.EDITED, line, f"not a valid audit line: {line.problem}"), None
    if line.seq == 1:
        return _at(Kind.EDITED, line, "the first line's prev is not the genesis value"), None
    # Lines an earlier cut accounts for are not missing; the ones after it are.
    cut_off = [c["last_seq"] for _, c in cuts if isinstance(c.get("last_seq"), int)]
    missing = _span(max((s for s in cut_off if s < line.seq), default=0) + 1, line.seq - 1)
    after = line.fields.get("after") if line.fields and line.event == FILE_OPENED else None
    if isinstance(after, str) and after not in names:
        gone = f"{line.where} says it follows this file, which is gone ({missing} missing)"
        return Break(Kind.FILE_DELETED, after, None, f"{gone}; no retention cut records it"), None
    return _at(Kind.DELETED, line, f"the log starts at seq {line.seq}: {missing} missing "
               "and no retention cut records their removal"), None  # fmt: skip


def _classify(
    line: Line, prev: Line, before: Line | None, ahead: list[Line], names: set[str],
    recorded: Head | None,
) -> Break:  # fmt: skip
    """Name what happened where ``line`` does not follow ``prev``."""
    exp = prev.seq + 1
    nxt = ahead[0] if ahead else None
    skips = nxt is not None and nxt.problem is None and nxt.seq == exp and nxt.prev == prev.hash
    if line.problem is not None:
        if skips:
            return _at(Kind.INSERTED, line, f"not part of the chain ({line.problem}); the next "
                       f"line continues from {prev.where}")  # fmt: skip
        return _at(Kind.EDITED, line, f"not a valid audit line: {line.problem}")
    seq = line.seq
    if line.prev == prev.hash:
        return _at(Kind.EDITED, line, f"seq {seq} where {exp} belongs; the line chains "
                   "correctly, so its seq was changed")  # fmt: skip
    if before is not None and line.prev == before.hash and seq == before.seq + 1:
        return _at(Kind.INSERTED, prev, f"this line (seq {prev.seq}) does not belong: "
                   f"{line.where} chains straight from the line before it")  # fmt: skip
    if (copy := next((a for a in ahead if a.hash == line.hash), None)) is not None:
        return _at(Kind.INSERTED, line, f"a copy of {copy.where} (seq {seq})")
    origin = next((a for a in ahead if a.hash == line.prev and a.seq == seq - 1), None)
    if origin is not None:
        return _at(Kind.REORDERED, line, f"seq {seq} stands before seq {exp}; it belongs "
                   f"after {origin.where} (lines swapped or moved)")  # fmt: skip
    if skips:
        return _at(Kind.INSERTED, line, f"this line (seq {seq}) does not belong: the next "
                   f"line chains straight from {prev.where}")  # fmt: skip
    if seq == exp:
        return _edited(line, prev, nxt, recorded)
    if seq < exp:
        return _at(Kind.INSERTED, line, f"seq {seq} repeats or goes back after seq {prev.seq}")
    missing = _span(exp, seq - 1)
    later = next((a for a in ahead if a.problem is None and exp <= a.seq < seq), None)
    if later is not None:
        return _at(Kind.REORDERED, line, f"seq {seq} stands before {later.where} "
                   f"(seq {later.seq}): lines out of order")  # fmt: skip
    if line.path == prev.path:
        return _at(Kind.DELETED, line, f"{missing} missing before this line "
                   f"({seq - exp} line(s) deleted)")  # fmt: skip
    after = line.fields.get("after") if line.fields and line.event == FILE_OPENED else None
    if isinstance(after, str) and after not in names and after != prev.path.name:
        return Break(Kind.FILE_DELETED, after, None, f"{line.where} says it follows this "
                     f"file, which is gone ({missing} missing after {prev.where})")  # fmt: skip
    return _at(Kind.DELETED, line, f"{missing} missing between {prev.where} and this line, "
               "the first of its file (lines or a whole file deleted)")  # fmt: skip


def _edited(line: Line, prev: Line, nxt: Line | None, recorded: Head | None) -> Break:
    """``line`` has the right seq but its prev does not name ``prev``: which one changed?"""
    if nxt is not None:
        intact = nxt.prev == line.hash
    else:
        intact = recorded is not None and recorded.seq == line.seq and recorded.hash == line.hash
    if intact:
        return _at(Kind.EDITED, prev, f"this line (seq {prev.seq}) was changed: its SHA-256 "
                   f"no longer matches the prev of {line.where}")  # fmt: skip
    if nxt is None:
        return _at(Kind.EDITED, prev, f"this line (seq {prev.seq}) was changed, or the prev "
                   f"of {line.where} was")  # fmt: skip
    return _at(Kind.EDITED, line, f"this line (seq {line.seq}) was changed: its prev no longer "
               f"names {prev.where}, nor does the next line's prev name it")  # fmt: skip


def _check_checkpoint(
    line: Line, prev: Line | None, key: Ed25519PublicKey | None, report: Report
) -> Break | None:
    report.checkpoints += 1
    fields = line.fields or {}
    seq, head = (prev.seq, prev.hash) if prev is not None else (line.seq - 1, line.prev)
    if fields.get("signed_seq") != seq or fields.get("signed_head") != head:
        return _at(Kind.EDITED, line, "this checkpoint does not sign the line before it")
    if key is None:
        return None
    if (problem := signature_problem(fields, key)) is not None:
        return _at(Kind.FORGED, line, f"not signed by the given key: {problem}")
    report.signatures += 1
    return None


def _check_tail(prev: Line | None, recorded: Head | None, head_seen: bool) -> Break | None:
    if recorded is None or recorded.seq == 0 or head_seen:
        return None
    if prev is None:
        return Break(Kind.DELETED, None, None, "there are no audit lines, but relay.db "
                     f"records head seq {recorded.seq}")  # fmt: skip
    if prev.seq < recorded.seq:
        return _at(Kind.TRUNCATED, prev, f"the log ends here at seq {prev.seq} but relay.db "
                   f"records head seq {recorded.seq}: {_span(prev.seq + 1, recorded.seq)} cut "
                   "from the end (lines removed, or the newest file deleted)")  # fmt: skip
    return Break(Kind.DELETED, None, None, f"relay.db records head seq {recorded.seq}, "
                 "which lies before the start of the log")  # fmt: skip


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}..{last}"
