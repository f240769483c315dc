"""The running relay's periodic housekeeping: expired sessions, audit retention,
checkpoints and seals.

Each loop runs as a task in the daemon's task group until it is cancelled; the
durable part of its work goes to the committer, so ``relay.db``'s recorded
audit head always covers what it wrote. A seal's epoch key is destroyed in the
commit after the seal's own (``SettleSeal``), never before relay.db holds it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ccc_relay.audit.log import AuditLog
from ccc_relay.audit.recorded import Head
from ccc_relay.daemon.committer import Committer, Job
from ccc_relay.store.ops import StoreOp

if TYPE_CHECKING:
    from collections.abc import Callable

    from ccc_relay.daemon.shell import RelayShell
    from ccc_relay.store.sqlite import Store

log = logging.getLogger("ccc_relay.daemon")

SWEEP_INTERVAL = 30.0  # how often expired sessions are looked for
# A signed checkpoint and a seal (the end of a sealing epoch) at most every 5
# minutes, if lines were added; and at start and at a clean stop.
CHECKPOINT_INTERVAL = 300.0
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
    """A signed checkpoint line over the chain head, then a seal over both (nothing
    when no line was added); True when a seal was written."""

    audit: AuditLog
    now: float
    key: Ed25519PrivateKey

    def apply(self, store: Store) -> bool:
        _settle(self.audit, store)  # a seal not settled yet holds the next one back
        self.audit.checkpoint(self.now, self.key)
        return self.audit.seal(self.now)


@dataclass(frozen=True, slots=True)
class SettleSeal(StoreOp[bool]):
    """Destroy the key of the epoch just sealed, once relay.db has committed the seal."""

    audit: AuditLog

    def apply(self, store: Store) -> bool:
        return _settle(self.audit, store)


def _settle(audit: AuditLog, store: Store) -> bool:
    """Destroy a sealed epoch's key if relay.db's committed head reaches its seal."""
    text = store.get_meta("audit_head")
    return text is not None and audit.settle_seal(Head.parse(text).seq)


async def audit_upkeep(
    committer: Committer,
    audit: AuditLog,
    key: Ed25519PrivateKey,
    retention: float,
    clock: Callable[[], float],
) -> None:
    """Retention at start and hourly; a signed checkpoint and a seal at start and every
    5 minutes, the sealed epoch's key destroyed right after the seal's commit."""
    ticks = 0
    while True:
        now = clock()
        try:
            if ticks % RETENTION_EVERY_CHECKPOINTS == 0:
                committer.submit(Job(op=ApplyRetention(audit, now, retention)), want_result=False)
            sealed = committer.submit(Job(op=WriteCheckpoint(audit, now, key)))
            if sealed is not None and await sealed:
                await committer.perform(SettleSeal(audit))
        except Exception as exc:  # a failing store: the committer logged it and probes it
            log.error("audit: the checkpoint and seal were not written: %s", exc)
        ticks += 1
        await asyncio.sleep(CHECKPOINT_INTERVAL)


async def sweep_sessions(shell: RelayShell) -> None:
    interval = min(SWEEP_INTERVAL, shell.core.limits.session_timeout / 4)
    while True:
        await asyncio.sleep(interval)
        shell.expire_sessions()
