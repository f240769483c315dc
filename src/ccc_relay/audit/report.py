"""What ``verify`` reports: the counts, the head, notes, and the first break by kind.

The kinds are what the command line and its JSON name; how a break is
classified is ``verify``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ccc_relay.audit.files import GENESIS
from ccc_relay.audit.recorded import Head


class Kind(StrEnum):
    EDITED = "edited"
    DELETED = "deleted"
    FILE_DELETED = "file deleted"
    REORDERED = "reordered"
    INSERTED = "inserted"
    TRUNCATED = "truncated"
    FORGED = "forged checkpoint"
    FORGED_SEAL = "forged seal"
    MISSING_SEAL = "missing seal"
    APPENDED = "appended"
    ALARM = "tamper alarm"


@dataclass(frozen=True, slots=True)
class Break:
    """The first place the chain does not hold."""

    kind: Kind
    file: str | None
    line: int | None
    detail: str

    def __str__(self) -> str:
        if self.file is None:
            return f"{self.kind}: {self.detail}"
        where = self.file if self.line is None else f"{self.file} line {self.line}"
        return f"{self.kind} at {where}: {self.detail}"


@dataclass(slots=True)
class Report:
    files: int = 0
    lines: int = 0
    head: Head = field(default_factory=lambda: Head(0, GENESIS))
    checkpoints: int = 0
    signatures: int = 0  # checkpoints whose signature was verified with a key
    starts_after_cut: bool = False
    seals: int = 0
    seals_verified: int = 0  # seals whose MAC was verified with a seal key
    sealed_epochs: tuple[int, int] | None = None  # the first and last verified epoch
    unsealed: tuple[int, int] | None = None  # seqs after the last verified seal (with a key)
    bad_epoch: int | None = None  # the first epoch whose seal is forged or missing
    alarms: list[dict[str, Any]] = field(default_factory=list)  # unacknowledged tamper alarms
    problem: Break | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        problem = self.problem
        return {
            "ok": self.ok,
            "files": self.files,
            "lines": self.lines,
            "head": {"seq": self.head.seq, "hash": self.head.hash},
            "checkpoints": self.checkpoints,
            "signatures_verified": self.signatures,
            "starts_after_retention_cut": self.starts_after_cut,
            "seals": self.seals,
            "seals_verified": self.seals_verified,
            "sealed_epochs": None if self.sealed_epochs is None else list(self.sealed_epochs),
            "unsealed_tail": None
            if self.unsealed is None
            else {"first_seq": self.unsealed[0], "last_seq": self.unsealed[1]},
            "bad_epoch": self.bad_epoch,
            "tamper_alarms": self.alarms,
            "notes": self.notes,
            "problem": None
            if problem is None
            else {
                "kind": str(problem.kind),
                "file": problem.file,
                "line": problem.line,
                "detail": problem.detail,
            },
        }
