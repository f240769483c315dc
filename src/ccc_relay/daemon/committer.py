"""Group commit: every durable effect goes through one queue and one thread.

Jobs queue up while the previous batch is being written; the next batch takes
them all at once. So an idle relay commits each message immediately (no timer,
no waiting for company), and a busy one amortises one fsync over hundreds of
messages. A job's future resolves only after its batch's COMMIT.

A small batch (an idle relay's) commits on the event loop itself: handing it to
the committer thread and back costs more than the commit's own CPU, and the
loop has nothing better to do meanwhile. Larger batches go to the thread, so
the loop keeps reading and checking the next messages during the fsync.

A batch's audit lines are written to their day file (no fsync) before its
transaction, and are durable before anyone is answered in one of two ways:

* a small batch keeps them in relay.db's ``audit_outbox``, in the same
  transaction as the decisions they record, so SQLite's WAL fsync makes both
  durable at once: one fsync, the shortest wait for an idle relay. After a
  batch, at most every tenth of a second, the audit file is fsynced on a
  background thread, off the commit path (a relay that falls quiet does it
  with its next batch -- the session sweep makes one at least every 30 s --
  or in ``close_audit`` when it stops); the next batch then drops those lines
  from the outbox. After a power cut, the daemon's start copies what the
  outbox holds beyond the files back.
* a big batch fsyncs the audit file on a second thread while SQLite takes the
  batch's statements, and waits for it before COMMIT: a second flush, amortised
  over hundreds of messages and cheaper in CPU than copying every line into
  relay.db. Either way relay.db never commits a decision whose audit line a
  power cut could still take.

The queue is strictly FIFO and reads go through it too, so a read issued after
a write always sees that write.

When the audit file or the database fails (disk full, EIO, fsync error) the
committer fails every job of the batch and every later one with StoreFailure:
acceptance stops loudly (logged at CRITICAL, ``accepting: false`` in status).
Nothing refused is ever retried: the committer only probes the store, with
backoff, by writing one ``store_recovered`` audit line and one transaction; when
both are durable, acceptance resumes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ccc_relay.audit.log import AuditLog, AuditMark, AuditRecord
from ccc_relay.store import Store, StoredMessage, StoreFailure
from ccc_relay.store.ops import Nothing, StoreOp

T = TypeVar("T")

log = logging.getLogger("ccc_relay.daemon")

MAX_BATCH = 4096  # jobs per transaction: bounds the latency of the first job in a burst
# Jobs nobody waits for (audit lines of refusals and deliveries, session
# bookkeeping) ride along with the next batch, or go on their own after this
# long: they need not cost an fsync of their own on an idle relay.
LAZY_DELAY = 0.02
# How often the audit file is fsynced while batches flow; the next batch then
# deletes the lines that fsync covered from the outbox, so the outbox holds
# about this long of audit lines. Short, because that delete runs inside a
# commit on the event loop: a second's worth (1,000 lines at 1,000 msg/s) made
# a 3-12 ms commit once a second, enough to set the p99 of everything queued
# behind it (lat-1k p99 7-17 ms at 1 s, 3-4 ms at 0.1 s). Ten background
# flushes a second cost the relay no measurable CPU.
AUDIT_SYNC_EVERY = 0.1
# Batches of up to this many jobs and messages together commit on the event
# loop (see above): an idle relay's single message. A job may carry a whole
# read's sends, so messages count, not jobs.
INLINE_BATCH = 8
# A COMMIT (SQLite's WAL write and fsync, the batch's statements already done)
# at least this long is counted as slow: at 1,000 msg/s it holds up the five
# messages that arrive meanwhile. On a healthy local disk they are rare; many
# of them mean the disk, not the relay, sets the latency.
SLOW_COMMIT = 0.005
# After the store failed (a full disk, an I/O error), it is tried again after
# this long, then twice as long each time up to the maximum.
RECOVERY_RETRY_MIN = 1.0
RECOVERY_RETRY_MAX = 30.0


@dataclass(slots=True)
class Job(Generic[T]):
    """One unit of durable work: one store operation and what rides with it.

    The ``messages`` of consecutive jobs are inserted together with
    ``executemany``; ``op`` runs after them (inside a savepoint when the
    operation ``may_fail``, so one failing admin operation cannot undo a batch of
    messages). ``seqs`` are sessions' new seq high-water marks.
    """

    op: StoreOp[T] = field(default_factory=Nothing)  # type: ignore[arg-type]
    messages: list[StoredMessage] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)
    seqs: dict[str, int] = field(default_factory=dict)
    future: asyncio.Future[T] | None = None


class Committer:
    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit
        self._queue: list[Job[Any]] = []
        self._waited = 0  # queued jobs someone waits for
        self._lazy_overdue = False  # a queued job nobody waits for has waited LAZY_DELAY
        # A batch on the committer thread, and its result to come: a stop that
        # cancels the wait for it must still answer it before writing anything else.
        self._working: tuple[list[Job[Any]], asyncio.Future[list[Any]]] | None = None
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccc-commit")
        # The audit file's fsyncs run here, beside the commits.
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccc-sync")
        self._audit_sync: Future[int] | None = None
        self._audit_synced_at = time.monotonic()
        self._synced = 0  # audit lines up to this seq are fsynced in their files
        self._outboxed = 0  # the newest line put in the outbox
        self._trimmed = 0  # outbox lines up to this seq are gone
        self._lazy_timer: asyncio.TimerHandle | None = None
        self.failure: str | None = None
        self.batches = 0
        self.jobs = 0
        self.slow_commits = 0  # COMMITs that took SLOW_COMMIT or longer
        self.longest_commit = 0.0  # seconds, the longest COMMIT
        self.on_failure: Callable[[str], None] | None = None
        self.on_recovery: Callable[[], None] | None = None
        self._retry_in = RECOVERY_RETRY_MIN

    def submit(self, job: Job[T], *, want_result: bool = True) -> asyncio.Future[T] | None:
        """Queue ``job``. Raises StoreFailure once the store has failed.

        A job nobody waits for (``want_result=False``) does not start a batch
        by itself; it joins the next one, at most LAZY_DELAY later.
        """
        if self.failure is not None:
            raise StoreFailure(self.failure)
        self._queue.append(job)
        if want_result:
            job.future = asyncio.get_running_loop().create_future()
            self._waited += 1
            self._wake.set()
        elif self._lazy_timer is None:
            # Armed by the oldest queued job nobody waits for: it goes out by then.
            self._lazy_timer = asyncio.get_running_loop().call_later(LAZY_DELAY, self._lazy_due)
        return job.future

    def _lazy_due(self) -> None:
        self._lazy_timer = None
        self._lazy_overdue = True
        self._wake.set()

    def _take_batch(self) -> list[Job[Any]]:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        self._waited -= sum(1 for job in batch if job.future is not None)
        if not self._queue:  # nothing is left to wait for a timer or to be overdue
            self._lazy_overdue = False
            if self._lazy_timer is not None:
                self._lazy_timer.cancel()
                self._lazy_timer = None
        return batch

    async def read(self, op: StoreOp[T]) -> T:
        """Run the read ``op`` in order with queued writes (so it sees them); its
        result. Raises StoreFailure."""
        return await self.perform(op)

    async def perform(self, op: StoreOp[T]) -> T:
        """Run ``op``, a write someone waits for; its result once its batch
        committed. Raises StoreFailure."""
        future = self.submit(Job(op=op))
        assert future is not None
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self.failure is not None:
                    await self._recover(loop)
                    continue
                await self._wake.wait()
                self._wake.clear()
                # Commit while someone waits, or once a job nobody waits for
                # has waited long enough. Such jobs (a delivery's audit line,
                # say) otherwise ride with the next waited-for one instead of
                # costing a commit of their own. A wake whose job has already
                # gone out in an earlier batch commits nothing.
                while self._queue and (self._waited or self._lazy_overdue):
                    await self._commit(loop, self._take_batch())
        finally:
            await self._drain(loop)

    async def _recover(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait, then try the store again: one audit line and one transaction, the
        way every batch writes. Acceptance resumes when both are durable (a full
        disk that was cleared, say); until then everything is refused."""
        await asyncio.sleep(self._retry_in)
        failure = self.failure
        assert failure is not None
        try:
            await loop.run_in_executor(self._executor, self._probe, failure)
        except (OSError, sqlite3.Error) as exc:
            self._retry_in = min(self._retry_in * 2, RECOVERY_RETRY_MAX)
            log.error("the store still fails (%s); next try in %gs", exc, self._retry_in)
            return
        log.warning("the store works again after: %s; the relay accepts messages", failure)
        self.failure = None
        self._retry_in = RECOVERY_RETRY_MIN
        self._wake.set()  # what was queued meanwhile (nothing is: it was refused)
        if self.on_recovery is not None:
            self.on_recovery()

    def _probe(self, failure: str) -> None:
        """Runs on the committer thread. Raises what the store raises."""
        mark = self._audit.mark()
        store = self._store
        try:
            self._audit.append([AuditRecord(time.time(), "store_recovered", {"after": failure})])
            store.begin()
            try:
                store.set_meta("audit_head", f"{self._audit.seq} {self._audit.head}")
                store.commit()
            except BaseException:
                store.rollback()
                raise
        except BaseException:
            self._rewind(mark)
            raise
        self._synced = self._audit.seq  # append() fsynced every line so far

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On shutdown, write what is queued before the store closes (after what
        the committer thread is still writing: one writer at a time)."""
        if self._working is not None:
            batch, working = self._working
            self._working = None
            try:
                results = await asyncio.shield(working)
            except Exception as exc:  # every kind is told to the batch's waiters
                self._failed(batch, exc)
            else:
                self._settle(batch, results)
        while self._queue and self.failure is None:
            await asyncio.shield(self._commit(loop, self._take_batch()))

    async def _commit(self, loop: asyncio.AbstractEventLoop, batch: list[Job[Any]]) -> None:
        if self.failure is not None:
            self._fail(batch, self.failure)
            return
        small = len(batch) + sum(len(job.messages) for job in batch) <= INLINE_BATCH
        try:
            if small:
                results = self._apply(batch, small)
            else:
                working = loop.run_in_executor(self._executor, self._apply, batch, small)
                self._working = (batch, working)
                # Shielded: when the daemon stops meanwhile, _drain answers the batch.
                results = await asyncio.shield(working)
                self._working = None
        except Exception as exc:  # every kind is told to the batch's waiters
            self._working = None
            self._failed(batch, exc)
            return
        self._settle(batch, results)
        if small:
            # The loop never waited for this commit. Give it two turns -- one
            # for the futures' callbacks (answers, pushes), one for the socket
            # writes they schedule -- before the next commit holds it again.
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    def _failed(self, batch: list[Job[Any]], exc: BaseException) -> None:
        """``batch`` was rolled back. A failing store stops acceptance
        (this batch and everything queued are refused); any other exception is a
        defect in one operation, told to the batch's waiters, and the store goes on."""
        if not isinstance(exc, OSError | sqlite3.Error):
            log.error("a commit failed; its %d job(s) were rolled back", len(batch), exc_info=exc)
            for job in batch:
                if job.future is not None and not job.future.done():
                    job.future.set_exception(exc)
            return
        self.failure = f"durable store failed: {exc}"
        log.critical("%s; the relay stops accepting messages", self.failure)
        self._fail(batch, self.failure)
        self._fail(self._queue, self.failure)
        self._queue, self._waited = [], 0
        if self.on_failure is not None:
            self.on_failure(self.failure)

    def _settle(self, batch: list[Job[Any]], results: list[Any]) -> None:
        """``batch`` committed; answer whoever waits for its jobs."""
        self.batches += 1
        self.jobs += len(batch)
        for job, result in zip(batch, results, strict=True):
            future = job.future
            if future is None or future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    @staticmethod
    def _fail(jobs: list[Job[Any]], reason: str) -> None:
        for job in jobs:
            if job.future is not None and not job.future.done():
                job.future.set_exception(StoreFailure(reason))

    def _apply(self, batch: list[Job[Any]], small: bool) -> list[Any]:
        """Runs on the committer thread (or the loop's, for a ``small`` batch)."""
        records = [record for job in batch for record in job.audit]
        # A big batch fsyncs its audit lines beside the commit: one flush
        # amortised over the batch costs less CPU than copying every line into
        # relay.db. A small one lets them ride the commit's own fsync instead.
        mark = self._audit.mark()
        try:
            staged = self._audit.append_unsynced(records, stage=small)
        except BaseException:
            self._rewind(mark)
            raise
        self._collect_audit_sync()
        direct = self._syncer.submit(self._audit.sync_owed()) if records and not small else None
        outbox_synced = self._synced > self._trimmed and self._outboxed > self._trimmed
        trim = self._synced if outbox_synced else 0
        store = self._store
        results: list[Any] = [None] * len(batch)
        store.begin()
        try:
            if staged and direct is None:
                store.stage_audit(staged)
            if trim:
                store.trim_audit_outbox(trim)
            messages: list[StoredMessage] = []
            seqs: dict[str, int] = {}
            for index, job in enumerate(batch):
                if job.messages:
                    messages.extend(job.messages)
                for sid, seq in job.seqs.items():
                    seqs[sid] = max(seq, seqs.get(sid, 0))
                if type(job.op) is Nothing:
                    continue
                if messages:  # keep order: earlier inserts are visible to this job
                    store.insert_messages(messages)
                    messages = []
                results[index] = self._run_one(store, job.op)
            if messages:
                store.insert_messages(messages)
            if seqs:
                store.update_session_seqs(seqs.items())
            store.set_meta("audit_head", f"{self._audit.seq} {self._audit.head}")
            if direct is not None:
                # Before COMMIT, so relay.db never holds a decision whose audit
                # line a power cut could still take. Raises the fsync's OSError.
                self._synced = max(self._synced, direct.result())
            started = time.perf_counter()
            store.commit()
            took = time.perf_counter() - started
        except BaseException:
            store.rollback()
            self._rewind(mark)  # the log must not record what did not happen
            raise
        self.longest_commit = max(self.longest_commit, took)
        self.slow_commits += took >= SLOW_COMMIT
        if trim:
            self._trimmed = trim
        if staged and direct is None:
            self._outboxed = staged[-1].seq
        self._start_audit_sync()
        return results

    def _rewind(self, mark: AuditMark) -> None:
        try:
            self._audit.rewind(mark)
            # Seqs past the mark will be written again: nothing past it is synced
            # or in the outbox any more.
            self._synced = min(self._synced, self._audit.seq)
            self._outboxed = min(self._outboxed, self._audit.seq)
        except OSError as exc:
            log.critical(
                "audit: the lines of a rolled-back batch (after seq %d) could not be taken "
                "back: %s",
                mark.seq,
                exc,
            )

    def _collect_audit_sync(self) -> None:
        """Note how far a finished background fsync got; raise what it raised."""
        running = self._audit_sync
        if running is not None and running.done():
            self._audit_sync = None
            self._synced = max(self._synced, running.result())

    def _start_audit_sync(self) -> None:
        """Fsync the audit file in the background when the outbox holds lines it lacks."""
        if self._audit_sync is not None or self._outboxed <= self._synced:
            return
        now = time.monotonic()
        if now - self._audit_synced_at < AUDIT_SYNC_EVERY:
            return
        self._audit_synced_at = now
        self._audit_sync = self._syncer.submit(self._audit.sync_owed())

    @staticmethod
    def _run_one(store: Store, op: StoreOp[Any]) -> Any:
        if not op.may_fail:
            return op.apply(store)
        store.savepoint()
        try:
            result = op.apply(store)
        except (sqlite3.IntegrityError, LookupError, ValueError) as exc:
            store.rollback_savepoint()
            return exc
        store.release()
        return result

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._syncer.shutdown(wait=True)
