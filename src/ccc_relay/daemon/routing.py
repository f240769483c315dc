"""Routing: where a committed message goes, and what is in flight where.

A committed message is pushed to a subscribed session of its recipient that
has window room and no backlog; otherwise it waits, in delivery order, in a
bounded per-agent overflow deque that a store read vouches complete (using
delivery-number watermarks), so top-ups need no store read while it is. A
session that closes gives its unacknowledged messages back to the agent's
other sessions. Scheduled messages (``deliver_at``) are woken here too.

A mixin of ``Relay``: it uses the relay's clock, committer, counters and audit.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ccc_relay.daemon.committer import Committer
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.store import StoredMessage

if TYPE_CHECKING:
    from ccc_relay.daemon.connection import AgentConnection

# Committed messages waiting for window room are kept in memory up to this many
# bytes per agent (beyond it the store is the queue again; see ``route``).
OVERFLOW_MAX_BYTES = 8 * 1024 * 1024


class Routing:
    # Provided by Relay.
    clock: Callable[[], float]
    committer: Committer
    counters: Any
    activity: defaultdict[str, Counter[str]]
    _last_delivery: int
    audit: Callable[..., None]

    def _init_routing(self) -> None:
        self.online: dict[str, list[AgentConnection]] = {}
        # message id -> the connection it is in flight on, per recipient
        self.inflight: dict[str, dict[str, AgentConnection]] = {}
        # Per agent: committed, due messages that found no window room, in
        # delivery order. For agents in ``authoritative`` the deque holds every
        # due, undelivered message, so a top-up needs no store read.
        self.overflow: dict[str, deque[StoredMessage]] = {}
        self._overflow_bytes: dict[str, int] = {}
        self.authoritative: set[str] = set()
        self._delivered: dict[AgentConnection, list[str]] = {}  # audited at the end of a turn
        self._schedule_wake = asyncio.Event()

    def route(self, agent: str, message: StoredMessage | None = None) -> None:
        """Push ``message`` to a subscribed session of ``agent`` or mark a backlog.

        With ``message`` None, every subscribed session of ``agent`` is told
        to look in the store (a session closed, a schedule fell due).
        """
        conns = [c for c in self.online.get(agent, ()) if c.subscribed]
        if message is not None:
            for conn in conns:
                if not conn.backlog and not conn.topping_up and conn.room > 0:
                    self.push(conn, message)
                    return
            if conns:
                self._keep(agent, message)
            else:
                self.forget_overflow(agent)
        else:
            # Something became due that the overflow does not hold.
            self.forget_overflow(agent)
        for conn in conns:
            conn.backlog = True
            conn.top_up()

    def _keep(self, agent: str, message: StoredMessage) -> None:
        size = self._overflow_bytes.get(agent, 0) + len(message.body)
        if size > OVERFLOW_MAX_BYTES:
            # Too much to hold: the store stays the queue (nothing is lost), and
            # the overflow starts again empty, unsure, on the next store drain.
            self.authoritative.discard(agent)
            self.overflow[agent] = deque()
            self._overflow_bytes[agent] = 0
            return
        self.overflow.setdefault(agent, deque()).append(message)
        self._overflow_bytes[agent] = size

    def forget_overflow(self, agent: str) -> None:
        self.authoritative.discard(agent)
        self.overflow.pop(agent, None)
        self._overflow_bytes.pop(agent, None)

    @property
    def last_delivery(self) -> int:
        return self._last_delivery

    def vouch(self, agent: str, watermark: int) -> None:
        """A store read submitted when ``watermark`` was the last delivery number
        found every due message of ``agent``. Messages up to the watermark were
        in that read; the overflow keeps only later ones, and from now on it is
        the whole queue (until something makes it unsure)."""
        queue = self.overflow.setdefault(agent, deque())
        self._overflow_bytes.setdefault(agent, 0)
        while queue and queue[0].delivery <= watermark:
            self._overflow_bytes[agent] -= len(queue.popleft().body)
        self.authoritative.add(agent)

    def take_overflow(self, agent: str, limit: int) -> list[StoredMessage]:
        queue = self.overflow.get(agent)
        taken: list[StoredMessage] = []
        inflight = self.inflight.get(agent, {})
        while queue and len(taken) < limit:
            message = queue.popleft()
            self._overflow_bytes[agent] -= len(message.body)
            if message.id not in inflight:  # a fetch elsewhere may have taken it
                taken.append(message)
        return taken

    def push(self, conn: AgentConnection, message: StoredMessage) -> None:
        assert conn.agent is not None
        self.inflight.setdefault(conn.agent, {})[message.id] = conn
        conn.deliver(message)
        self.counters.delivered += 1
        self.activity[conn.agent]["delivered"] += 1
        # One "delivered" line per session per loop turn, naming every id.
        pending = self._delivered.get(conn)
        if pending is None:
            self._delivered[conn] = [message.id]
            if len(self._delivered) == 1:
                asyncio.get_running_loop().call_soon(self._audit_deliveries)
        else:
            pending.append(message.id)

    def _audit_deliveries(self) -> None:
        batches, self._delivered = self._delivered, {}
        for conn, ids in batches.items():
            self.audit("delivered", to=conn.agent, ids=ids, session=conn.session_id)

    def delivery_of(self, agent: str, message_id: str) -> int | None:
        """The delivery number of a message in flight to ``agent``, if it is."""
        conn = self.inflight.get(agent, {}).get(message_id)
        return None if conn is None else conn.inflight.get(message_id)

    def inflight_ids(self, agent: str) -> set[str]:
        return set(self.inflight.get(agent, ()))

    def settle(self, agent: str, ids: Iterable[str]) -> None:
        """Acked messages leave the in-flight table."""
        table = self.inflight.get(agent)
        if table is None:
            return
        for mid in ids:
            conn = table.pop(mid, None)
            if conn is not None:
                conn.inflight.pop(mid, None)

    # --- connections ----------------------------------------------------------

    def attach(self, conn: AgentConnection) -> None:
        assert conn.agent is not None
        self.online.setdefault(conn.agent, []).append(conn)

    def detach(self, conn: AgentConnection) -> None:
        agent = conn.agent
        if agent is None:
            return
        conns = self.online.get(agent, [])
        if conn in conns:
            conns.remove(conn)
        if not conns:
            self.online.pop(agent, None)
        if not any(c.subscribed for c in conns):
            self.forget_overflow(agent)
        if conn.inflight:
            table = self.inflight.get(agent, {})
            for mid in conn.inflight:
                table.pop(mid, None)
            conn.inflight.clear()
            self.route(agent)  # unacked messages go back to the agent's other sessions

    def close_agent(self, agent: str, reason: ErrorCode, message: str) -> None:
        for conn in list(self.online.get(agent, ())):
            conn.fail(ProtocolError(reason, message, fatal=True))

    # --- scheduled delivery -------------------------------------------------

    async def run_scheduler(self) -> None:
        """Wake sessions when a ``deliver_at`` falls due."""
        last = self.clock()
        while True:
            now = self.clock()
            # Awaited at once, so the loop variables cannot change under the lambda.
            due = await self.committer.read(lambda s: s.recipients_due(now, last))  # noqa: B023
            last = now
            for agent in due:
                self.route(agent)
            upcoming = await self.committer.read(lambda s: s.next_scheduled(now))  # noqa: B023
            self._schedule_wake.clear()
            timeout = 60.0 if upcoming is None else max(0.0, upcoming - self.clock())
            try:
                await asyncio.wait_for(self._schedule_wake.wait(), timeout=min(timeout, 60.0))
            except TimeoutError:
                pass
