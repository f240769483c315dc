"""The daemon's side of federation: the outbox to the stream, the stream to the store.

Loaded only when the config has a ``federation:`` section (``daemon/server.py``
imports it then, and this module imports the NATS link then).

* **Out**: every envelope the core committed to the outbox (``Forward``) is
  published in commit order -- at most ``WINDOW`` at a time -- and, once the
  stream acked it, deleted from the outbox with a ``forwarded`` audit line. A
  send waiting for it is answered ``forwarded: true``; if the link is down, or
  no ack came within ``publish_timeout``, it is answered ``forwarded: false``
  at once and the envelope stays queued, published when the link is back. At
  start everything the outbox holds is queued first, in order.
* **In**: each batch the link fetches is opened and judged by the core, stored
  in one transaction (``StoreArrivals``: messages, ids seen, refusals to send
  back, their audit lines), routed, and only then acked to the stream; what is
  not believed is audited and terminated. A batch that cannot be stored is not
  acked: the stream delivers it again after its ack wait.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ccc_relay.audit.records import AuditRecord
from ccc_relay.core.effects import Forward, SendOutcome
from ccc_relay.core.federation import RELAY, SEEN_KEPT, Cleaned, Federation, Opened
from ccc_relay.core.relay import SANITIZE_INLINE_LIMIT
from ccc_relay.daemon.committer import Committer, Job
from ccc_relay.daemon.shell import RelayShell
from ccc_relay.policy.config_types import FederationConfig
from ccc_relay.protocol.errors import ErrorCode
from ccc_relay.protocol.federation import Envelope
from ccc_relay.store import StoreFailure
from ccc_relay.store.ops import (
    DeleteForwarded,
    ForgetSeen,
    ReadArrivalState,
    ReadOutbox,
    StoreArrivals,
)
from ccc_relay.store.records import OutboxEntry

log = logging.getLogger("ccc_relay.federation")

WINDOW = 64  # publishes in flight at once, in order: acks are pipelined, order kept
OUTBOX_PAGE = 1000  # outbox rows read at a time at start
RETRY_MIN = 0.5  # after a failed publish, wait this long, doubling, before trying again
RETRY_MAX = 30.0
# SEEN_KEPT (core/federation.py): keys of stored envelopes and ids sent are kept
# 30 days, longer than any envelope is believed fresh; the stream's window is 10 min.
SEEN_SWEEP = 3600.0


class Inbound(Protocol):
    data: bytes

    async def ack(self) -> None: ...
    async def term(self) -> None: ...


class Link(Protocol):
    """What this module needs of ``ccc_relay.federation.FederationLink``."""

    @property
    def connected(self) -> bool: ...

    async def publish(
        self,
        to_host: str,
        msg_id: str,
        payload: bytes,
        *,
        timeout: float,  # noqa: ASYNC109 -- the link's publish-ack wait
    ) -> None: ...

    async def run(self, deliver: Callable[[list[Any]], Awaitable[None]]) -> None: ...

    def status(self) -> dict[str, object]: ...


# Builds the link: (config, on_change) -> Link; on_change is called when it
# connects or loses its connection.
LinkFactory = Callable[[FederationConfig, Callable[[], None]], Link]


def nats_link(config: FederationConfig, on_change: Callable[[], None]) -> Link:
    from ccc_relay.federation import FederationLink  # NATS is imported only here

    return FederationLink(config, on_change=on_change)


@dataclass(slots=True)
class _Pending:
    entry: OutboxEntry
    conn: int | None = None
    outcome: SendOutcome | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> bool:
        return self.outcome is not None


class FederationRunner:
    def __init__(
        self,
        shell: RelayShell,
        committer: Committer,
        federation: Federation,
        make_link: LinkFactory = nats_link,
    ) -> None:
        self.shell = shell
        self.committer = committer
        self.federation = federation
        self.config = federation.config
        self.link = make_link(self.config, self._link_changed)
        self._queue: deque[_Pending] = deque()
        self._queued: set[str] = set()  # stream ids in _queue
        self._wake = asyncio.Event()
        self._loaded = False

    # --- out -----------------------------------------------------------------------------

    def forward(self, effect: Forward) -> None:
        """An envelope is in the outbox: queue it; answer its send now if the link is down."""
        pending = _Pending(effect.entry, effect.conn, effect.outcome)
        if pending.entry.stream_id in self._queued:
            return
        self._queue.append(pending)
        self._queued.add(pending.entry.stream_id)
        if pending.waiting:
            if not self.link.connected:
                self._answer(pending, False)
            else:
                loop = asyncio.get_running_loop()
                pending.timer = loop.call_later(
                    self.config.publish_timeout, self._answer, pending, False
                )
        self._wake.set()

    def _answer(self, pending: _Pending, forwarded: bool) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        outcome, conn = pending.outcome, pending.conn
        if outcome is None:
            return
        pending.outcome = None  # answered once
        if conn is not None:
            shell = self.shell
            shell.guarded(
                conn, lambda: shell.core.forward_answered(conn, outcome, forwarded, shell.clock())
            )

    def _link_changed(self) -> None:
        if not self.link.connected:
            for pending in self._queue:  # nobody waits out the timeout for a link that is down
                if pending.waiting:
                    self._answer(pending, False)
        self._wake.set()

    async def _load_outbox(self) -> None:
        """Queue what the outbox held at start, oldest first, before anything newer."""
        rows: list[OutboxEntry] = []
        after = 0
        while True:
            page = await self.committer.read(ReadOutbox(OUTBOX_PAGE, after))
            rows += page
            if len(page) < OUTBOX_PAGE:
                break
            after = page[-1].seq
        # Queued since start (a send waiting for its answer keeps its _Pending):
        # the outbox's rows go first, in order, then what it did not hold yet.
        kept = {p.entry.stream_id: p for p in self._queue}
        stored = {r.stream_id for r in rows}
        newer = [p for p in self._queue if p.entry.stream_id not in stored]
        self._queue = deque([kept.get(r.stream_id) or _Pending(r) for r in rows] + newer)
        self._queued = {p.entry.stream_id for p in self._queue}
        self._loaded = True
        if rows:
            log.info("federation: %d envelope(s) from the outbox to publish", len(rows))

    async def publish_forever(self) -> None:
        await self._load_outbox()
        delay = RETRY_MIN
        while True:
            while not (self._queue and self.link.connected):
                self._wake.clear()
                await self._wake.wait()
            if self._too_large(self._queue[0]):
                continue
            chunk = self._chunk()
            results = await asyncio.gather(
                *(self._publish(p.entry) for p in chunk), return_exceptions=True
            )
            done: list[_Pending] = []
            failure: BaseException | None = None
            for pending, result in zip(chunk, results, strict=True):
                if result is None:
                    done.append(pending)
                    self._answer(pending, True)
                elif failure is None:
                    failure = result
            for pending in done:
                self._queue.remove(pending)
                self._queued.discard(pending.entry.stream_id)
            if done:
                self._forwarded([p.entry for p in done])
                delay = RETRY_MIN
            if failure is not None:
                if not isinstance(failure, Exception):
                    raise failure  # cancellation
                log.warning("federation: a publish failed, retrying in %gs: %s", delay, failure)
                for pending in self._queue:
                    if pending.waiting and not self.link.connected:
                        self._answer(pending, False)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, RETRY_MAX)

    def _chunk(self) -> list[_Pending]:
        """The next envelopes to publish together, in order; one too large for the
        server ends the chunk (it is dropped when it comes first)."""
        limit = self._max_payload()
        chunk: list[_Pending] = []
        for pending in itertools.islice(self._queue, WINDOW):
            if len(pending.entry.payload) > limit:
                break
            chunk.append(pending)
        return chunk

    def _max_payload(self) -> int:
        value = getattr(self.link, "max_payload", None)
        return value if isinstance(value, int) and value > 0 else 2**62

    def _too_large(self, pending: _Pending) -> bool:
        """An envelope over the server's max_payload can never be published: it leaves
        the queue (so it holds up nothing behind it) and the outbox, audited, and its
        sender is told by a message from ``relay``."""
        entry = pending.entry
        limit = self._max_payload()
        if len(entry.payload) <= limit:
            return False
        self._queue.popleft()
        self._queued.discard(entry.stream_id)
        self._answer(pending, False)
        shell = self.shell
        core = shell.core
        now = shell.clock()
        reason = (
            f"the envelope is {len(entry.payload)} bytes and the NATS server takes at most "
            f"{limit} (its max_payload)"
        )
        log.error(
            "federation: %s to %s cannot be forwarded: %s", entry.stream_id, entry.recipient, reason
        )
        line = AuditRecord(
            now,
            "forward_failed",
            {
                "id": entry.stream_id,
                "from": entry.sender,
                "to": entry.recipient,
                "code": ErrorCode.TOO_LARGE.value,
                "reason": reason,
            },
        )
        notices = []
        if entry.sender in core.agents:
            body = (
                f"your message {entry.stream_id} to {entry.recipient} cannot be forwarded: {reason}"
            )
            notices.append(
                core.new_message(RELAY, entry.sender, body, now, reply_to=entry.stream_id)
            )
        job: Job[list[tuple[str, str, int]]] = Job(
            op=DeleteForwarded((entry.stream_id,), unsent_to=entry.to_host),
            messages=notices,
            audit=[line],
        )
        try:
            future = self.committer.submit(job)
        except StoreFailure:
            return True
        assert future is not None

        def done(result: asyncio.Future[list[tuple[str, str, int]]]) -> None:
            self._deleted(result)
            if not result.cancelled() and result.exception() is None:
                for notice in notices:
                    shell.run(core.message_committed(notice, shell.clock()))

        future.add_done_callback(done)
        return True

    async def _publish(self, entry: OutboxEntry) -> None:
        await self.link.publish(
            entry.to_host, entry.stream_id, entry.payload, timeout=self.config.publish_timeout
        )

    def _forwarded(self, entries: list[OutboxEntry]) -> None:
        """The stream holds these: out of the outbox, audited, their queue places freed."""
        shell = self.shell
        line = AuditRecord(
            shell.clock(),
            "forwarded",
            {
                "ids": [e.stream_id for e in entries],
                "to_hosts": sorted({e.to_host for e in entries}),
            },
        )
        job: Job[list[tuple[str, str, int]]] = Job(
            op=DeleteForwarded(tuple(e.stream_id for e in entries)), audit=[line]
        )
        try:
            future = self.committer.submit(job)
        except StoreFailure:
            return  # published twice after a restart at worst: the stream drops the repeat
        assert future is not None
        future.add_done_callback(self._deleted)

    def _deleted(self, done: asyncio.Future[list[tuple[str, str, int]]]) -> None:
        if not done.cancelled() and done.exception() is None:
            self.shell.core.forwarded(done.result())

    # --- in ------------------------------------------------------------------------------

    async def deliver(self, batch: list[Inbound]) -> None:
        """The link's callback: never raises (an exception would end the link)."""
        try:
            await self._deliver(batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("federation: a batch of %d could not be taken in", len(batch))

    async def _deliver(self, batch: list[Inbound]) -> None:
        shell = self.shell
        cleaned: Cleaned | None = None
        if sum(len(m.data) for m in batch) > SANITIZE_INLINE_LIMIT:
            # Verifying and sanitising big bodies would hold every agent's
            # connection for that long: a worker thread does both, as for a
            # big local send (both are pure functions of the bytes).
            opened, cleaned = await asyncio.get_running_loop().run_in_executor(
                None, self.federation.open_and_clean, [m.data for m in batch], shell.core.limits
            )
        else:
            opened = [self.federation.open(m.data) for m in batch]
        now = shell.clock()
        audit = [_unbelieved(o, now) for o in opened if o.envelope is None]
        envelopes: list[Envelope] = [o.envelope for o in opened if o.envelope is not None]
        seen: set[str] = set()
        in_use: set[str] = set()
        sent: dict[str, str] = {}
        if envelopes:
            keys = tuple(f"{e.from_host}/{e.stream_id}" for e in envelopes)
            ids = tuple(e.id for e in envelopes if e.kind == "message")
            refused = tuple((e.id, e.from_host) for e in envelopes if e.kind == "refused")
            seen, in_use, sent = await self.committer.read(ReadArrivalState(keys, ids, refused))
        now = shell.clock()
        arrivals = shell.core.arrivals(envelopes, seen, in_use, sent, now, cleaned)
        op = StoreArrivals(
            arrivals.messages,
            arrivals.held,
            tuple(arrivals.seen),
            arrivals.outbox,
            now,
            tuple(arrivals.bounced),
        )
        lines = [*audit, *arrivals.audit]
        if lines or arrivals.seen:
            try:
                await self._store(op, lines)
            except Exception:
                shell.core.arrivals_failed(arrivals)
                raise
        shell.guarded(None, lambda: shell.core.arrived(arrivals, shell.clock()))
        for message, verdict in zip(batch, opened, strict=True):
            envelope = verdict.envelope
            if envelope is None or f"{envelope.from_host}/{envelope.stream_id}" in arrivals.dropped:
                await message.term()
            else:
                await message.ack()

    async def _store(self, op: StoreArrivals, audit: list[AuditRecord]) -> None:
        future = self.committer.submit(Job(op=op, audit=audit))
        assert future is not None
        await future

    # --- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        """The link, the publisher and the sweep of old ids, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.publish_forever(), name="federation publisher")
            tasks.create_task(self.link.run(self.deliver), name="federation link")
            tasks.create_task(self._sweep_seen(), name="federation sweep")

    async def _sweep_seen(self) -> None:
        while True:
            try:
                await self.committer.perform(ForgetSeen(self.shell.clock() - SEEN_KEPT))
            except StoreFailure:
                pass  # the committer logged it; the next sweep tries again
            await asyncio.sleep(SEEN_SWEEP)

    def queues(self, now: float) -> dict[str, tuple[int, float]]:
        """Per destination host: envelopes the stream has not acked yet, and the oldest's
        age in seconds (``ccc federation status``). Before the outbox is loaded at start,
        only what was sent since."""
        hosts: dict[str, tuple[int, float]] = {}
        for pending in self._queue:
            entry = pending.entry
            count, oldest = hosts.get(entry.to_host, (0, 0.0))
            hosts[entry.to_host] = (count + 1, max(oldest, now - entry.created))
        return hosts

    def status(self) -> dict[str, object]:
        return {
            **self.link.status(),
            "outbox_queued": len(self._queue),
            "outbox_loaded": self._loaded,
        }


def _unbelieved(opened: Opened, now: float) -> AuditRecord:
    return AuditRecord(
        now,
        "federation_refused",
        {
            "claimed_host": opened.claimed,
            "code": opened.code,
            "reason": opened.problem,
            "verified": opened.verified,
        },
    )
