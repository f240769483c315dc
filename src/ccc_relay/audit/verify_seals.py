"""What ``verify`` checks of seals and tamper alarms, line by line along the chain.

Seals (the rule is in ``sealing.py``): every ``seal`` line must seal the line
before it. Given a seal key, the seals made with it must run through the
epochs one by one from epoch 0 (or from wherever the log starts after a
retention cut), and each MAC must be the one that epoch's key makes: a MAC
that does not match is a **forged seal**, a skipped or repeated epoch a
**missing seal** -- either way the first bad epoch is named. The lines after
the last verified seal are the **unsealed tail**: nothing vouches for them.

Tamper alarms (``tamper.py``): a ``tamper_alarm`` line fails the log until a
later ``tamper_alarm_acknowledged`` line names its seq. Lines a crashed run
left after relay.db's head (``uncommitted_lines_set_aside``) are a note.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ccc_relay.audit.lines import Line
from ccc_relay.audit.report import Break, Kind, Report
from ccc_relay.audit.sealing import EpochKeys, SealKey
from ccc_relay.audit.tamper import ALARM_ACK, TAMPER_ALARM, UNCOMMITTED


def at(kind: Kind, line: Line, detail: str) -> Break:
    return Break(kind, line.path.name, line.number, detail)


def epochs(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}..{last}"


class SealWalk:
    """The seals met so far, and what the seal key (if any) made of them."""

    def __init__(self, key: SealKey | None, report: Report) -> None:
        self.key = key
        self.keys = EpochKeys(key) if key is not None else None
        self.report = report
        self.expected: int | None = None  # the next epoch of the key's series
        self.last_verified = 0  # seq of the last seal verified with the key
        self.below = 0  # the series' seals before the key's first epoch: not checkable
        self.others: Counter[str] = Counter()  # seals made with other keys

    def check(self, line: Line, prev: Line | None, after_cut: bool) -> Break | None:
        """The problem with the seal ``line``, or None. Verified seals are counted."""
        report = self.report
        report.seals += 1
        fields = line.fields or {}
        seq, head = (prev.seq, prev.hash) if prev is not None else (line.seq - 1, line.prev)
        if fields.get("sealed_seq") != seq or fields.get("sealed_head") != head:
            return at(Kind.EDITED, line, "this seal does not seal the line before it")
        if self.key is None or self.keys is None:
            return None
        key_id, epoch = fields.get("key_id"), fields.get("epoch")
        if key_id != self.key.key_id:
            self.others[str(key_id)] += 1
            return None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            return self._bad(Kind.FORGED_SEAL, line, 0, "this seal's epoch is malformed")
        expected = self.expected
        self.expected = epoch + 1
        if expected is None and epoch != 0 and not after_cut:
            return self._bad(Kind.MISSING_SEAL, line, 0, f"the first seal made with key "
                             f"{key_id} is of epoch {epoch}: the seals of {epochs(0, epoch - 1)} "
                             "are missing")  # fmt: skip
        if expected is not None and epoch > expected:
            return self._bad(Kind.MISSING_SEAL, line, expected, f"a seal of epoch {epoch} follows "
                             f"epoch {expected - 1}: the seals of {epochs(expected, epoch - 1)} "
                             "are missing")  # fmt: skip
        if expected is not None and epoch < expected:
            return self._bad(Kind.FORGED_SEAL, line, epoch, f"a second seal of epoch {epoch} "
                             f"(after epoch {expected - 1})")  # fmt: skip
        if epoch < self.key.epoch:
            self.below += 1
            return None
        if not self.keys.mac_matches(fields):
            return self._bad(Kind.FORGED_SEAL, line, epoch, f"the seal of epoch {epoch} does not "
                             f"verify with seal key {key_id}: lines before it were changed after "
                             "it was made, or the seal itself was forged")  # fmt: skip
        report.seals_verified += 1
        first = report.sealed_epochs[0] if report.sealed_epochs else epoch
        report.sealed_epochs = (first, epoch)
        self.last_verified = line.seq
        return None

    def _bad(self, kind: Kind, line: Line, epoch: int, detail: str) -> Break:
        self.report.bad_epoch = epoch
        return at(kind, line, detail)

    def finish(self, notes: list[str]) -> None:
        """Once the chain holds: the unsealed tail, and what was not verified."""
        report = self.report
        if self.key is None:
            return
        if report.lines and self.last_verified < report.head.seq:
            first = self.last_verified + 1 if self.last_verified else (
                report.head.seq - report.lines + 1)  # fmt: skip
            report.unsealed = (first, report.head.seq)
        if self.below:
            notes.append(f"{self.below} seal(s) of epochs before {self.key.epoch} were not "
                         f"verified: the seal key given starts at epoch {self.key.epoch} (its "
                         "first seal still covers every line before it)")  # fmt: skip
        if self.others:
            named = ", ".join(f"{k} ({n})" for k, n in sorted(self.others.items()))
            notes.append(f"seals made with other seal keys were not verified: {named}")


class AlarmWalk:
    """The tamper alarms met so far, and which of them were acknowledged."""

    def __init__(self) -> None:
        self.open: dict[int, Line] = {}
        self.acknowledged: list[tuple[Line, Line]] = []
        self.set_aside: list[Line] = []

    def see(self, line: Line) -> None:
        if line.event == TAMPER_ALARM:
            self.open[line.seq] = line
        elif line.event == UNCOMMITTED:
            self.set_aside.append(line)
        elif line.event == ALARM_ACK:
            alarm = self.open.pop(_int((line.fields or {}).get("alarm_seq")), None)
            if alarm is not None:
                self.acknowledged.append((alarm, line))

    def finish(self, report: Report, notes: list[str]) -> Break | None:
        for line in self.set_aside:
            aside = (line.fields or {}).get("set_aside") or {}
            notes.append(f"at seq {line.seq} the relay set apart {aside.get('lines')} line(s) "
                         f"a crashed run left uncommitted ({aside.get('file')})")  # fmt: skip
        for alarm, ack in self.acknowledged:
            notes.append(f"the tamper alarm at seq {alarm.seq} ({_reason(alarm)}) was "
                         f"acknowledged at seq {ack.seq}")  # fmt: skip
        report.alarms = [
            {"seq": a.seq, "reason": _reason(a), "detail": (a.fields or {}).get("detail")}
            for a in self.open.values()
        ]
        if not self.open:
            return None
        first = next(iter(self.open.values()))
        more = f" ({len(self.open) - 1} more after it)" if len(self.open) > 1 else ""
        detail = (first.fields or {}).get("detail") or _reason(first)
        return at(Kind.ALARM, first, f"seq {first.seq}, not acknowledged{more}: {detail}. Once "
                  f"investigated: 'ccc audit acknowledge {first.seq}'")  # fmt: skip


def _reason(line: Line) -> str:
    return str((line.fields or {}).get("reason", "unknown"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
