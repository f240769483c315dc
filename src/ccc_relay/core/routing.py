"""Routing: where a committed message goes, and what is in flight where.

Connections are known here by their link id, never as objects that do I/O.
A committed message is pushed to a subscribed link of its recipient that has
window room and no backlog; otherwise it waits, in delivery order, in a
bounded per-agent overflow deque that a store read vouches complete (using
delivery-number watermarks), so top-ups need no store read while it is. A
link that closes gives its unacknowledged messages back to the agent's other
links. Pushing a message produces a ``Reply`` effect and one ``delivered``
audit line per link per call into the core.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ccc_relay.core.effects import Effect, Reply
from ccc_relay.protocol.codec import body_size
from ccc_relay.protocol.errors import Refusal
from ccc_relay.protocol.frames import ClientFrame, Message, Send
from ccc_relay.protocol.session import AgentSession, Rejected
from ccc_relay.store.records import StoredMessage

# Committed messages waiting for window room are kept in memory up to this many
# bytes per agent (beyond it the store is the queue again; see ``route``).
OVERFLOW_MAX_BYTES = 8 * 1024 * 1024


@dataclass(slots=True, eq=False)
class Link:
    """One agent connection as the core sees it: its protocol session and the
    core's own bookkeeping about it."""

    id: int
    session: AgentSession
    peer: tuple[int, int, int]  # pid, uid, gid from SO_PEERCRED
    connected_at: float
    bound_agent: str | None = None  # a per-agent socket's agent
    claimed: str | None = None  # the name a hello claimed, before it is proven
    backlog: bool = False  # the store may hold messages for it beyond what it has
    topping_up: bool = False  # a store read for it is under way
    held: bool = False  # a big body is being sanitised: later frames wait
    shows_delivered: bool = False  # hello.show_delivered: answers carry a changed body
    closed: bool = False
    strikes: int = 0  # refusals since strikes_since (see RelayCore._refuse)
    strikes_since: float = 0.0
    # While ``held``: frames read but not yet decided, and sends decided but not
    # yet batched (an admitted action, or a refusal that keeps its place).
    waiting: list[ClientFrame | Rejected] = field(default_factory=list)
    admitted: list[tuple[Send, str | Refusal]] = field(default_factory=list)

    @property
    def agent(self) -> str | None:
        return self.session.agent


# A message in flight: the link it went to, its sender, its body's bytes as stored.
Flight = tuple[Link, str, int]


@dataclass(slots=True)
class Counters:
    accepted: int = 0
    delivered: int = 0
    acked: int = 0
    held: int = 0
    anomalies: int = 0
    refused: Counter[str] = field(default_factory=Counter)


class Routing:
    def __init__(self, sign: Callable[[Message], str], counters: Counters) -> None:
        self._sign = sign
        self.counters = counters
        self.links: dict[int, Link] = {}
        self.online: dict[str, list[Link]] = {}
        # Per recipient: message id -> the link it is in flight on, and what an
        # ack of it removes from the queue (sender, body bytes as stored).
        self.inflight: dict[str, dict[str, Flight]] = {}
        # Per agent: committed, due messages that found no window room, in
        # delivery order. For agents in ``authoritative`` the deque holds every
        # due, undelivered message, so a top-up needs no store read.
        self.overflow: dict[str, deque[StoredMessage]] = {}
        self._overflow_bytes: dict[str, int] = {}
        self.authoritative: set[str] = set()
        # Per agent: sent (committed), delivered (pushed to it), refused.
        self.activity: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.delivered: dict[Link, list[str]] = {}  # audited at the end of each call

    # --- pushing ------------------------------------------------------------------

    def route(self, agent: str, message: StoredMessage | None, out: list[Effect]) -> list[Link]:
        """Push ``message`` to a subscribed link of ``agent`` or keep it; the
        links that must top up from the store (the caller runs their top-ups).

        With ``message`` None, every subscribed link of ``agent`` is told to look
        in the store (a link closed, a schedule fell due).
        """
        links = [link for link in self.online.get(agent, ()) if link.session.subscribed]
        if message is not None:
            for link in links:
                if not link.backlog and not link.topping_up and link.session.room > 0:
                    self.push(link, message, out)
                    return []
            if links:
                self._keep(agent, message)
            else:
                self.forget_overflow(agent)
        else:
            # Something became due that the overflow does not hold.
            self.forget_overflow(agent)
        for link in links:
            link.backlog = True
        return links

    def push(self, link: Link, message: StoredMessage, out: list[Effect]) -> None:
        session = link.session
        agent = session.agent
        assert agent is not None
        flight = (link, message.sender, body_size(message.body))
        self.inflight.setdefault(agent, {})[message.id] = flight
        frame = session.deliver(
            Message(
                id=message.id,
                sender=message.sender,
                to=message.recipient,
                sent_at=message.sent_at,
                body=message.body,
                delivery=message.delivery,
                thread=message.thread,
                reply_to=message.reply_to,
            )
        )
        if session.wants_signatures:
            frame.signature = self._sign(frame)
        out.append(Reply(link.id, frame))
        self.counters.delivered += 1
        self.activity[agent]["delivered"] += 1
        ids = self.delivered.get(link)
        if ids is None:
            self.delivered[link] = [message.id]
        else:
            ids.append(message.id)

    def _keep(self, agent: str, message: StoredMessage) -> None:
        size = self._overflow_bytes.get(agent, 0) + body_size(message.body)
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

    def vouch(self, agent: str, watermark: int) -> None:
        """A store read made when ``watermark`` was the last delivery number
        found every due message of ``agent``. Messages up to the watermark were
        in that read; the overflow keeps only later ones, and from now on it is
        the whole queue (until something makes it unsure)."""
        queue = self.overflow.setdefault(agent, deque())
        self._overflow_bytes.setdefault(agent, 0)
        while queue and queue[0].delivery <= watermark:
            self._overflow_bytes[agent] -= body_size(queue.popleft().body)
        self.authoritative.add(agent)

    def take_overflow(self, agent: str, limit: int) -> list[StoredMessage]:
        queue = self.overflow.get(agent)
        taken: list[StoredMessage] = []
        inflight = self.inflight.get(agent, {})
        while queue and len(taken) < limit:
            message = queue.popleft()
            self._overflow_bytes[agent] -= body_size(message.body)
            if message.id not in inflight:  # a fetch elsewhere may have taken it
                taken.append(message)
        return taken

    # --- in flight ------------------------------------------------------------------

    def acked(self, agent: str, ids: Iterable[str]) -> tuple[list[tuple[int, str, int]], list[str]]:
        """What acking ``ids`` removes: (delivery number, sender, body bytes) of
        each one in flight to ``agent``, and the ids of the others."""
        table = self.inflight.get(agent, {})
        known: list[tuple[int, str, int]] = []
        unknown: list[str] = []
        for mid in ids:
            flight = table.get(mid)
            delivery = None if flight is None else flight[0].session.inflight.get(mid)
            if flight is None or delivery is None:
                unknown.append(mid)
            else:
                known.append((delivery, flight[1], flight[2]))
        return known, unknown

    def inflight_ids(self, agent: str) -> frozenset[str]:
        return frozenset(self.inflight.get(agent, ()))

    def is_inflight(self, agent: str, message_id: str) -> bool:
        return message_id in self.inflight.get(agent, ())

    def settle(self, agent: str, ids: Iterable[str]) -> None:
        """Acked messages leave the in-flight table and their link's window."""
        table = self.inflight.get(agent)
        if table is None:
            return
        for mid in ids:
            flight = table.pop(mid, None)
            if flight is not None:
                flight[0].session.inflight.pop(mid, None)

    # --- links ----------------------------------------------------------------------

    def attach(self, link: Link) -> None:
        assert link.agent is not None
        self.online.setdefault(link.agent, []).append(link)

    def detach(self, link: Link, returned: dict[str, int]) -> list[Link]:
        """``link`` is gone; ``returned`` was in flight on it. The agent's links
        that must now top up from the store."""
        agent = link.agent
        if agent is None:
            return []
        links = self.online.get(agent, [])
        if link in links:
            links.remove(link)
        if not links:
            self.online.pop(agent, None)
        if not any(other.session.subscribed for other in links):
            self.forget_overflow(agent)
        if not returned:
            return []
        table = self.inflight.get(agent, {})
        for mid in returned:
            table.pop(mid, None)
        return self.route(agent, None, [])  # unacked messages go back to the other links
