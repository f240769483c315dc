"""The asyncio shell around the relay core: it moves bytes and carries out effects.

``RelayShell.run`` is the one place effects become I/O: frames are written to
connections, store work goes to the committer (consecutive work nobody waits
for becomes one job), big bodies go to a worker thread, log lines to the log.
When the store answers, the shell hands the answer back to the core and runs
what that returns.

No exception is dropped. A store failure reaches the core, which answers the
waiting agent ``unavailable`` and audits it; the committer has already logged
it. Anything else that escapes a callback is a defect: it is logged with its
traceback, audited, answered ``internal`` on the connection it concerns, and
that connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgspec

from ccc_relay.core.effects import (
    Close,
    Effect,
    Forward,
    Log,
    Persist,
    Reply,
    Sanitize,
    ScheduleChanged,
    Then,
)
from ccc_relay.core.relay import RelayCore
from ccc_relay.daemon.committer import Committer, Job
from ccc_relay.policy.sanitize import Sanitized, SanitizeOptions, sanitize
from ccc_relay.protocol.errors import ErrorCode
from ccc_relay.protocol.frames import Error, Goodbye, Send
from ccc_relay.store import StoreFailure
from ccc_relay.store.ops import DeleteExpiredSessions, Nothing, ReadSchedule

log = logging.getLogger("ccc_relay.daemon")

SCHEDULER_IDLE = 60.0  # seconds the scheduler sleeps when nothing is scheduled
SCHEDULER_RETRY = 5.0  # seconds before the scheduler reads again after a store failure
TICK_INTERVAL = 1.0  # how often the core is told the time when nothing else happens


class Connection(Protocol):
    """What the shell needs of a connection (``daemon/connection.py``)."""

    def write(self, frame: msgspec.Struct) -> None: ...
    def close(self) -> None: ...
    def hold_input(self) -> None: ...
    def release_input(self) -> None: ...


class RelayShell:
    def __init__(
        self, core: RelayCore, committer: Committer, clock: Callable[[], float] = time.time
    ) -> None:
        self.core = core
        self.committer = committer
        self.clock = clock
        self.connections: dict[int, Connection] = {}
        self._next_id = 0
        self._schedule_changed = asyncio.Event()
        # Set when the relay federates: takes envelopes the core put in the outbox.
        self.forward: Callable[[Forward], None] | None = None

    # --- connections ------------------------------------------------------------------

    def connected(
        self, conn: Connection, peer: tuple[int, int, int], bound_agent: str | None
    ) -> int:
        self._next_id += 1
        cid = self._next_id
        self.connections[cid] = conn
        self._guarded(
            cid, lambda: self.core.connect(cid, peer, self.clock(), bound_agent=bound_agent)
        )
        return cid

    def received(self, cid: int, data: bytes) -> None:
        self._guarded(cid, lambda: self.core.receive(cid, data, self.clock()))

    def hello_timed_out(self, cid: int) -> None:
        self._guarded(cid, lambda: self.core.hello_timed_out(cid, self.clock()))

    def disconnected(self, cid: int) -> None:
        self.connections.pop(cid, None)
        self._guarded(None, lambda: self.core.disconnected(cid, self.clock()))

    def say_goodbye(self, reason: str) -> None:
        """Close every agent connection with a ``goodbye`` (the relay is stopping)."""
        self._guarded(None, lambda: self.core.stopping(self.clock()))
        for conn in list(self.connections.values()):
            conn.write(Goodbye(reason=reason))
            conn.close()

    # --- effects ------------------------------------------------------------------------------

    def run(self, effects: Iterable[Effect]) -> None:
        """Carry out ``effects`` in order."""
        lazy: Job[None] | None = None  # work nobody waits for, gathered into one job
        for effect in effects:
            match effect:
                case Reply(conn=cid, frame=frame):
                    conn = self.connections.get(cid)
                    if conn is not None:
                        conn.write(frame)
                case Persist(then=None, op=Nothing()):
                    if lazy is None:
                        lazy = Job()
                    lazy.audit += effect.audit
                    lazy.messages += effect.messages
                    lazy.seqs.update(effect.seqs)
                case Persist():
                    if lazy is not None:
                        self._submit_lazy(lazy)
                        lazy = None
                    self._persist(effect)
                case Close(conn=cid):
                    conn = self.connections.get(cid)
                    if conn is not None:
                        conn.close()
                case Sanitize():
                    self._sanitize(effect)
                case Log(level=level, text=text):
                    log.log(level, "%s", text)
                case ScheduleChanged():
                    self._schedule_changed.set()
                case Forward():
                    if self.forward is not None:
                        self.forward(effect)
        if lazy is not None:
            self._submit_lazy(lazy)

    def _submit_lazy(self, job: Job[Any]) -> None:
        try:
            self.committer.submit(job, want_result=False)
        except StoreFailure:
            log.error(
                "the store has failed; %d audit line(s) lost: %s",
                len(job.audit),
                ", ".join(record.event for record in job.audit),
            )

    def _persist(self, effect: Persist) -> None:
        job: Job[Any] = Job(
            op=effect.op, messages=effect.messages, audit=effect.audit, seqs=effect.seqs
        )
        then = effect.then
        if then is None:
            self._submit_lazy(job)
            return
        try:
            future = self.committer.submit(job)
        except StoreFailure as exc:
            reason = str(exc)
            self._guarded(then.conn, lambda: self.core.persist_failed(then, reason, self.clock()))
            return
        assert future is not None
        future.add_done_callback(lambda done: self._answered(then, done))

    def _answered(self, then: Then, done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            return  # the committer stopped at shutdown; the connections are closing
        exc = done.exception()
        if exc is None:
            result = done.result()
            self._guarded(then.conn, lambda: self.core.persisted(then, result, self.clock()))
            return
        defect = not isinstance(exc, StoreFailure)  # a failing store: already logged
        if defect:
            log.error("store work for connection %d failed", then.conn, exc_info=exc)
        reason = str(exc)
        self._guarded(
            then.conn,
            lambda: self.core.persist_failed(then, reason, self.clock(), defect=defect),
        )

    def _sanitize(self, effect: Sanitize) -> None:
        conn = self.connections.get(effect.conn)
        if conn is not None:
            conn.hold_input()
        options = self.core.limits.sanitize
        work = asyncio.get_running_loop().run_in_executor(
            None, sanitize, effect.frame.body, options
        )
        work.add_done_callback(
            lambda done: self._sanitized(effect.conn, effect.frame, effect.action, options, done)
        )

    def _sanitized(
        self,
        cid: int,
        frame: Send,
        action: str,
        options: SanitizeOptions,
        done: asyncio.Future[Sanitized],
    ) -> None:
        conn = self.connections.get(cid)
        if conn is not None:
            conn.release_input()
        if done.cancelled():
            return
        cleaned = done.result() if done.exception() is None else None
        if cleaned is None:
            self._defect(cid, done.exception())
            return
        self._guarded(
            cid,
            lambda: self.core.sanitized(cid, frame, action, cleaned, self.clock(), options=options),
        )

    def _guarded(self, cid: int | None, step: Callable[[], list[Effect]]) -> None:
        """Run one step of the core and its effects; a defect in either is reported."""
        try:
            self.run(step())
        except Exception as exc:
            self._defect(cid, exc)

    # For the parts beside the shell (federation): one step of the core, guarded.
    guarded = _guarded

    def _defect(self, cid: int | None, exc: BaseException | None) -> None:
        log.error("internal error on connection %s", cid, exc_info=exc)
        now = self.clock()
        link = self.core.links.get(cid) if cid is not None else None
        self._submit_lazy(
            Job(
                audit=[
                    self.core.record(
                        now,
                        "internal_error",
                        agent=link.agent if link is not None else None,
                        session=link.session.session_id if link is not None else None,
                        error=type(exc).__name__,
                    )
                ]
            )
        )
        conn = self.connections.get(cid) if cid is not None else None
        if conn is not None:
            conn.write(
                Error(
                    code=ErrorCode.INTERNAL.value,
                    message="the relay hit an internal error; the connection is closed",
                )
            )
            conn.close()

    # --- tasks the daemon runs --------------------------------------------------------------------

    async def run_scheduler(self) -> None:
        """Wake links when a ``deliver_at`` falls due."""
        last = self.clock()
        while True:
            now = self.clock()
            try:
                due, upcoming = await self.committer.read(ReadSchedule(now, last))
            except StoreFailure:
                # The committer logged it and probes the store; look again later.
                await asyncio.sleep(SCHEDULER_RETRY)
                continue
            last = now
            if due:
                self._guarded(None, lambda: self.core.schedule_due(due, self.clock()))  # noqa: B023
            self._schedule_changed.clear()
            timeout = SCHEDULER_IDLE if upcoming is None else max(0.0, upcoming - self.clock())
            try:
                await asyncio.wait_for(
                    self._schedule_changed.wait(), timeout=min(timeout, SCHEDULER_IDLE)
                )
            except TimeoutError:
                pass

    async def run_ticks(self) -> None:
        """Let the core see time pass while nothing else happens."""
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            self._guarded(None, lambda: self.core.tick(self.clock()))

    def stalled(self, cid: int) -> None:
        self._guarded(cid, lambda: self.core.stalled(cid, self.clock()))

    def expire_sessions(self) -> None:
        now = self.clock()
        self._guarded(None, lambda: self.core.expire_sessions(now))
        self._submit_lazy(Job(op=DeleteExpiredSessions(now)))

    def audit(self, event: str, **fields: Any) -> None:
        """An audit line nobody waits for (it rides with the next commit)."""
        self._submit_lazy(Job(audit=[self.core.record(self.clock(), event, **fields)]))

    def quarantine(self, agent: str, reason: str) -> None:
        self._guarded(None, lambda: self.core.quarantine(agent, reason, self.clock()))
