"""The running relay's periodic housekeeping: expired sessions, audit retention, checkpoints.

Each loop runs as a task in the daemon's TaskGroup until it is cancelled; the
durable part of its work goes to the committer as jobs.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ccc_relay.daemon.committer import Committer, Job
from ccc_relay.daemon.relay import Relay

SWEEP_INTERVAL = 30.0
CHECKPOINT_INTERVAL = 300.0  # a signed checkpoint at most every 5 minutes (if lines were added)
RETENTION_EVERY_CHECKPOINTS = (
    12  # retention runs hourly  # how often expired sessions are looked for
)


class AuditJobs(Protocol):
    """Where the audit upkeep gets its jobs from (the ``Daemon``)."""

    def retention_job(self, relay: Relay) -> Job: ...

    def checkpoint_job(self, relay: Relay) -> Job: ...


async def audit_upkeep(jobs: AuditJobs, relay: Relay, committer: Committer) -> None:
    """Retention at start and hourly; a signed checkpoint at start and every 5 minutes."""
    ticks = 0
    while True:
        if ticks % RETENTION_EVERY_CHECKPOINTS == 0:
            committer.submit(jobs.retention_job(relay), want_result=False)
        committer.submit(jobs.checkpoint_job(relay), want_result=False)
        ticks += 1
        await asyncio.sleep(CHECKPOINT_INTERVAL)


async def sweep_sessions(relay: Relay) -> None:
    interval = min(SWEEP_INTERVAL, relay.limits.session_timeout / 4)
    while True:
        await asyncio.sleep(interval)
        relay.expire_sessions()
        now = relay.clock()
        relay.committer.submit(_expiry_job(now), want_result=False)


def _expiry_job(now: float) -> Job:
    return Job(run=lambda s: s.delete_expired_sessions(now))
