"""The running relay's periodic housekeeping: expired sessions, audit retention, checkpoints.

Each loop runs as a task in the daemon's task group until it is cancelled; the
durable part of its work goes to the committer, so ``relay.db``'s recorded
audit head always covers what it wrote.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ccc_relay.audit.log import AuditLog
from ccc_relay.daemon.committer import Committer, Job
from ccc_relay.store.ops import StoreOp

if TYPE_CHECKING:
    from collections.abc import Callable

    from ccc_relay.daemon.shell import RelayShell
    from ccc_relay.store.sqlite import Store

SWEEP_INTERVAL = 30.0  # how often expired sessions are looked for
CHECKPOINT_INTERVAL = 300.0  # a signed checkpoint at most every 5 minutes (if lines were added)
RETENTION_EVERY_CHECKPOINTS = 12  # retention runs hourly


@dataclass(frozen=True, slots=True)
class ApplyRetention(StoreOp[list[Path]]):
    """Delete audit files past ``retention``; the cut is recorded in the log."""

    audit: AuditLog
    now: float
    retention: float

    def apply(self, store: Store) -> list[Path]:
        return self.audit.apply_retention(self.now, self.retention)


@dataclass(frozen=True, slots=True)
class WriteCheckpoint(StoreOp[bool]):
    """A signed checkpoint line over the chain head (nothing when no line was added)."""

    audit: AuditLog
    now: float
    key: Ed25519PrivateKey

    def apply(self, store: Store) -> bool:
        return self.audit.checkpoint(self.now, self.key)


async def audit_upkeep(
    committer: Committer,
    audit: AuditLog,
    key: Ed25519PrivateKey,
    retention: float,
    clock: Callable[[], float],
) -> None:
    """Retention at start and hourly; a signed checkpoint at start and every 5 minutes."""
    ticks = 0
    while True:
        now = clock()
        if ticks % RETENTION_EVERY_CHECKPOINTS == 0:
            committer.submit(Job(op=ApplyRetention(audit, now, retention)), want_result=False)
        committer.submit(Job(op=WriteCheckpoint(audit, now, key)), want_result=False)
        ticks += 1
        await asyncio.sleep(CHECKPOINT_INTERVAL)


async def sweep_sessions(shell: RelayShell) -> None:
    interval = min(SWEEP_INTERVAL, shell.core.limits.session_timeout / 4)
    while True:
        await asyncio.sleep(interval)
        shell.expire_sessions()
