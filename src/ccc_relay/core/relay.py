"""The relay core: every decision on the message path, without I/O.

Events come in as method calls -- a connection opened, bytes arrived, the store
answered, time passed -- each with the current time; each call returns the
effects to carry out (``core/effects.py``). The core holds plain data: the
agents, the policy, the sessions (``admission.py``), the links and what is in
flight on them (``routing.py``), the anomaly counters. It never awaits, reads a
clock, touches a socket or SQLite; the asyncio shell (``daemon/shell.py``) does.

One read's frames are decided together: consecutive sends become one
``Persist`` (one group-commit job), answered together once it is durable.
A refusal is a value (``Refusal``) answered on the spot, audited, and counted
by the anomaly rules; a fatal one closes the link.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, cast

import msgspec

from ccc_relay.audit.body import body_fields
from ccc_relay.audit.records import AuditRecord
from ccc_relay.core.admission import AUTH_FAILED, Admission, Session
from ccc_relay.core.checks import clean_thread, findings, size_refusal
from ccc_relay.core.effects import (
    AckDurable,
    Close,
    Effect,
    FetchRead,
    Forward,
    GroupDurable,
    Log,
    Persist,
    Reply,
    Sanitize,
    ScheduleChanged,
    SendOutcome,
    SendsDurable,
    Then,
    TopUpRead,
)
from ccc_relay.core.federation import Arrivals, Cleaned, Federation, decide_arrivals
from ccc_relay.core.routing import Counters, Link, Routing
from ccc_relay.core.shares import ACK_IDS_PER_FRAME, SUMMARY_INTERVAL, Shares
from ccc_relay.policy.acl import HOLD, Policy
from ccc_relay.policy.anomaly import Alert, AnomalyDetector
from ccc_relay.policy.config_types import Config, Rule
from ccc_relay.policy.groups import GroupTable
from ccc_relay.policy.sanitize import Sanitized, SanitizeOptions, sanitize
from ccc_relay.protocol.codec import body_size, line_cap_for
from ccc_relay.protocol.errors import ErrorCode, Refusal
from ccc_relay.protocol.federation import Envelope
from ccc_relay.protocol.frames import (
    PROTOCOL_VERSION,
    Accepted,
    Ack,
    Acked,
    AgentInfo,
    AgentList,
    Bye,
    ClientFrame,
    Copy,
    Error,
    Fetch,
    Fetched,
    Goodbye,
    GroupAccepted,
    Held,
    Hello,
    ListAgents,
    Message,
    Ping,
    Pong,
    Send,
    Skipped,
    Subscribe,
    Welcome,
)
from ccc_relay.protocol.session import AgentSession, Rejected, seq_refusal
from ccc_relay.store.ops import (
    AckMessages,
    CreateSession,
    DeleteSessionsOf,
    HoldAndForward,
    HoldMessages,
    Nothing,
    ReadDue,
    ReadDueAndPending,
    SetQuarantine,
    StoreOp,
)
from ccc_relay.store.records import AgentRecord, OutboxEntry, StoredMessage

OPERATOR = "operator"  # the sender name of messages the operator writes
RELAY = "relay"  # the sender name of the relay's own notices (e.g. a rejected message)
RECENT_ALERTS = 100  # anomaly alerts kept for status and top
# Bodies longer than this are sanitised off the event loop (their frames still
# in order), so one hostile megabyte cannot stall every other agent's frames.
SANITIZE_INLINE_LIMIT = 64 * 1024


# Refusals one connection may earn per SUMMARY_INTERVAL before it is closed; a
# connection that has not said hello gets only a few lines wrong.
STRIKES_PER_INTERVAL = 200
STRIKES_BEFORE_HELLO = 3
WAITED_LONGEST = Refusal(
    ErrorCode.BUSY,
    "too many connections are waiting to authenticate and this one waited longest; "
    "say hello right after connecting",
    fatal=True,
    retry_after=1.0,
)


def message_id(prefix: str, delivery: int) -> str:
    """``m_`` + the run's 8-character prefix + the delivery number in hex."""
    return f"{message_id_prefix(prefix)}{delivery:x}"


def message_id_prefix(prefix: str) -> str:
    """What every id minted with the run's ``prefix`` starts with."""
    return f"m_{prefix}"


@dataclass(slots=True)
class _Batch:
    """Consecutive sends of one read, made durable by one ``Persist``."""

    messages: list[StoredMessage] = field(default_factory=list)
    held: list[StoredMessage] = field(default_factory=list)
    remote: list[OutboxEntry] = field(default_factory=list)  # for other relays
    audit: list[AuditRecord] = field(default_factory=list)
    seqs: dict[str, int] = field(default_factory=dict)
    outcomes: list[SendOutcome] = field(default_factory=list)
    recipients: dict[str, int] = field(default_factory=dict)  # accepted, not yet counted


class RelayCore:
    def __init__(
        self,
        config: Config,
        *,
        agents: Iterable[AgentRecord],
        db_rules: Iterable[tuple[str, str, str]],
        last_delivery: int,
        sign: Callable[[Message], str],
        now: float,
        queued: Iterable[tuple[str, str, int, int]] = (),
        id_prefix: str | None = None,
        db_groups: Iterable[tuple[str, str]] = (),
        federation: Federation | None = None,
    ) -> None:
        self.config = config
        self.federation = federation  # None: this relay talks to no other
        self.limits = config.limits
        self.started_at = now
        self.agents: dict[str, AgentRecord] = {a.name: a for a in agents}
        self._db_rules = [Rule(s, r, a) for s, r, a in db_rules]
        self._db_groups = list(db_groups)
        self.groups = GroupTable(config.groups, self._db_groups)
        # Sends to a group whose body is being sanitised off the loop: (copies, skipped).
        self._fanouts: dict[int, tuple[list[tuple[str, str]], list[str]]] = {}
        self.counters = Counters()
        self.alerts: deque[dict[str, Any]] = deque(maxlen=RECENT_ALERTS)
        self.admission = Admission(self.limits, self.agents, self._policy())
        self.routing = Routing(sign, self.counters)
        self.anomaly = AnomalyDetector(config.anomaly)
        self.shares = Shares(self.limits, queued)
        self.connections = 0
        self._waiting: dict[int, Link] = {}  # connections yet to say hello, oldest first
        self._waiting_by_uid: Counter[int] = Counter()
        self._last_delivery = last_delivery
        # Ids are this run's random prefix plus the delivery number: unique
        # across restarts, and minted without a syscall per message.
        self._id_prefix = id_prefix or secrets.token_urlsafe(6)  # 8 characters
        self._line_cap = line_cap_for(self.limits.max_message_size)
        self.store_failure: str | None = None

    # --- views the shell and the admin plane read ----------------------------------------------

    @property
    def policy(self) -> Policy:
        return self.admission.policy

    @property
    def sessions(self) -> dict[str, Session]:
        return self.admission.sessions

    @property
    def links(self) -> dict[int, Link]:
        return self.routing.links

    @property
    def online(self) -> dict[str, list[Link]]:
        return self.routing.online

    def record(self, now: float, event: str, **fields: Any) -> AuditRecord:
        return AuditRecord(now, event, fields)

    # --- connections ---------------------------------------------------------------------------

    def connect(
        self, conn: int, peer: tuple[int, int, int], now: float, *, bound_agent: str | None = None
    ) -> list[Effect]:
        """A connection opened (on a per-agent socket: ``bound_agent``).

        Connections waiting to say hello are capped per peer uid and in total; at
        the total cap the one that has waited longest makes room, so holding every
        place takes opening connections faster than others say hello.
        """
        link = Link(conn, AgentSession(self._line_cap), peer, now, bound_agent=bound_agent)
        self.routing.links[conn] = link
        self.connections += 1
        out: list[Effect] = []
        uid = peer[1]
        limits = self.limits
        if self.connections > limits.max_connections:
            busy = "too many connections to the relay; try again later"
        elif self._waiting_by_uid[uid] >= limits.max_unauthenticated_per_uid:
            busy = "too many connections of this user are waiting to authenticate; try again later"
        else:
            if len(self._waiting) >= limits.max_unauthenticated:
                oldest = next(iter(self._waiting.values()))
                self._refuse(oldest, WAITED_LONGEST, now, out)
            self._waiting[conn] = link
            self._waiting_by_uid[uid] += 1
            return self._finish(out, now)
        self._refuse(link, Refusal(ErrorCode.BUSY, busy, fatal=True, retry_after=1.0), now, out)
        return self._finish(out, now)

    @property
    def unauthenticated(self) -> int:
        return len(self._waiting)

    def _stop_waiting(self, link: Link) -> None:
        if self._waiting.pop(link.id, None) is not None:
            uid = link.peer[1]
            self._waiting_by_uid[uid] -= 1
            if not self._waiting_by_uid[uid]:
                del self._waiting_by_uid[uid]

    def receive(self, conn: int, data: bytes, now: float) -> list[Effect]:
        """Bytes arrived on a connection."""
        link = self.routing.links.get(conn)
        out: list[Effect] = []
        if link is None or link.closed:
            return out
        refusal = link.session.receive_data(data, now)
        if refusal is not None:
            self._refuse(link, refusal, now, out)
        else:
            self._drain(link, now, out)
        return self._finish(out, now)

    def hello_timed_out(self, conn: int, now: float) -> list[Effect]:
        link = self.routing.links.get(conn)
        out: list[Effect] = []
        if link is not None and not link.closed and link.agent is None:
            refusal = Refusal(
                ErrorCode.HELLO_TIMEOUT, "no hello in time; the connection is closed", fatal=True
            )
            self._refuse(link, refusal, now, out)
        return self._finish(out, now)

    def disconnected(self, conn: int, now: float) -> list[Effect]:
        """The connection is gone (the peer left, or the shell closed it)."""
        link = self.routing.links.pop(conn, None)
        out: list[Effect] = []
        if link is not None and not link.closed:
            self._close(link, now, out, notify=False)
        return self._finish(out, now)

    def is_ready(self, conn: int) -> bool:
        link = self.routing.links.get(conn)
        return link is not None and not link.closed and link.session.ready

    # --- frames --------------------------------------------------------------------------------

    def _drain(self, link: Link, now: float, out: list[Effect]) -> None:
        """Decide every complete frame the link holds, until it is held or closed.

        Consecutive sends are decided together (``_on_sends``) and made durable
        by one ``Persist``; any other frame first sends the batch so far on its
        way, so the store sees the frames' order.
        """
        session = link.session
        batch = _Batch()
        if link.admitted:  # sends already decided, behind a big body that was sanitised
            admitted, link.admitted = link.admitted, []
            self._admit_all(link, admitted, now, out, batch)
        while not link.held and not link.closed:
            events = link.waiting or session.next_events()
            link.waiting = []
            if not events:
                break
            over: list[ClientFrame | Rejected] = []
            if session.ready:
                if self._expired(link, now, out):
                    break
                allowed = self._frames_allowed(link, events, now)
                events, over = events[:allowed], events[allowed:]
            i = 0
            while i < len(events) and not link.held and not link.closed:
                event = events[i]
                if isinstance(event, Send):
                    if event.to[0] == "@":  # a group: decided on its own, off the direct path
                        i += 1
                        self._on_group_send(link, event, now, out, batch)
                        continue
                    j = i + 1
                    while (
                        j < len(events) and isinstance(nxt := events[j], Send) and nxt.to[0] != "@"
                    ):
                        j += 1
                    self._on_sends(link, cast(list[Send], events[i:j]), now, out, batch)
                    i = j
                    continue
                i += 1
                if isinstance(event, Rejected):
                    self._refuse(link, event.refusal, now, out, seq=event.seq)
                    continue
                self._flush(link, batch, now, out)  # the store sees the frames' order
                self._on_frame(link, event, now, out)
            if link.held:
                link.waiting = events[i:] + over  # over budget: judged again afterwards
            elif over:
                self._flush(link, batch, now, out)
                self._refuse_over_budget(link, over, now, out)
        self._flush(link, batch, now, out)

    def _frames_allowed(self, link: Link, events: list[ClientFrame | Rejected], now: float) -> int:
        """How many of ``events`` the agent's frame budget allows (those are counted)."""
        agent = link.agent
        assert agent is not None
        costs = [1 + len(e.ids) // ACK_IDS_PER_FRAME if isinstance(e, Ack) else 1 for e in events]
        return self.shares.frames_allowed(agent, costs, now)

    def _refuse_over_budget(
        self, link: Link, events: list[ClientFrame | Rejected], now: float, out: list[Effect]
    ) -> None:
        refusal = Refusal(
            ErrorCode.RATE_LIMITED,
            f"too many frames ({self.limits.frame_rate:g} per minute per agent, of any kind); "
            "slow down",
            retry_after=1.0,
        )
        for event in events:
            if link.closed:
                break
            seq = event.seq if isinstance(event, Send | Rejected) else None
            self._refuse(link, refusal, now, out, seq=seq)

    def _on_frame(self, link: Link, frame: ClientFrame, now: float, out: list[Effect]) -> None:
        if isinstance(frame, Ack):
            self._on_ack(link, frame, now, out)
        elif isinstance(frame, Fetch):
            self._on_fetch(link, frame, now, out)
        elif isinstance(frame, Subscribe):
            link.session.subscribe(frame.window)
            link.backlog = True
            self._top_up(link, now, out)
        elif isinstance(frame, ListAgents):
            self._on_agents(link, out)
        elif isinstance(frame, Ping):
            out.append(Reply(link.id, Pong(data=frame.data)))
        elif isinstance(frame, Hello):
            self._on_hello(link, frame, now, out)
        elif isinstance(frame, Bye):
            out.append(Reply(link.id, Goodbye()))
            self._close(link, now, out)

    def _expired(self, link: Link, now: float, out: list[Effect]) -> bool:
        session = self.admission.sessions.get(link.session.session_id or "")
        if session is not None and session.expires > now:
            return False
        refusal = Refusal(
            ErrorCode.SESSION_EXPIRED,
            "the session expired (session_timeout); authenticate again",
            fatal=True,
        )
        self._refuse(link, refusal, now, out)
        return True

    # --- hello ---------------------------------------------------------------------------------

    def _on_hello(self, link: Link, hello: Hello, now: float, out: list[Effect]) -> None:
        if hello.version != PROTOCOL_VERSION:
            refusal = Refusal(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {hello.version} is not supported; this relay speaks "
                f"{PROTOCOL_VERSION}",
                fatal=True,
            )
            self._refuse(link, refusal, now, out)
            return
        link.claimed = hello.agent
        if self.store_failure is not None:
            refusal = Refusal(
                ErrorCode.UNAVAILABLE,
                f"the relay cannot store anything right now: {self.store_failure}",
                fatal=True,
            )
            self._refuse(link, refusal, now, out)
            return
        pid, uid, gid = link.peer
        if link.bound_agent is not None and hello.agent != link.bound_agent:
            # Same answer as a wrong credential; the audit line says which.
            self._audit(
                out,
                now,
                "auth_refused",
                agent=hello.agent,
                socket_agent=link.bound_agent,
                reason="agent does not match this per-agent socket",
                peer_pid=pid,
                peer_uid=uid,
                peer_gid=gid,
            )
            self._refuse(link, AUTH_FAILED, now, out)
            return
        result = self.admission.authenticate(
            hello.agent, hello.credential, link.peer, hello.resume, now
        )
        if isinstance(result, Refusal):
            self._refuse(link, result, now, out)
            return
        session, new_record = result
        agent = hello.agent
        links = self.routing.online.get(agent, ())
        if len(links) >= self.limits.max_connections_per_agent:
            if new_record is not None:
                self.admission.forget(session.id)
            refusal = Refusal(
                ErrorCode.BUSY,
                f"agent {agent!r} has {len(links)} connections already, the most allowed; "
                "close one first",
                fatal=True,
                retry_after=1.0,
            )
            self._refuse(link, refusal, now, out)
            return
        op: StoreOp[None] = Nothing()
        if new_record is not None:
            in_use = {other.session.session_id for other in links} | {session.id}
            forgotten = self.admission.make_room(agent, in_use.__contains__)
            op = CreateSession(new_record, tuple(forgotten))
        link.session.authenticated(agent, session.id, wants_signatures=hello.signatures)
        link.shows_delivered = hello.show_delivered
        self._stop_waiting(link)
        self.routing.attach(link)
        out.append(
            Persist(
                op=op,
                audit=[
                    self.record(
                        now,
                        "authenticated",
                        agent=hello.agent,
                        session=session.id,
                        resumed=hello.resume is not None,
                        peer_pid=pid,
                        peer_uid=uid,
                        peer_gid=gid,
                    )
                ],
            )
        )
        out.append(
            Reply(
                link.id,
                Welcome(
                    session=session.id,
                    agent=hello.agent,
                    expires_at=session.expires,
                    last_seq=session.last_seq,
                    max_message_size=self.limits.max_message_size,
                    rate_limit_per_minute=self.limits.rate_per_minute,
                ),
            )
        )

    # --- send ----------------------------------------------------------------------------------

    def _on_sends(
        self, link: Link, sends: list[Send], now: float, out: list[Effect], batch: _Batch
    ) -> None:
        """Decide consecutive sends together: the seq rule and the size limit for
        each, then policy and every rate limiter once for all of them
        (``Admission.check_sends``), then sanitising and the batch, in order."""
        agent = link.agent
        sid = link.session.session_id
        assert agent is not None
        assert sid is not None
        session = self.admission.sessions[sid]
        limit = self.limits.max_message_size
        if self.federation is not None:
            for frame in sends:
                if "@" in frame.to:  # name@<this host> is a local agent
                    frame.to = self.federation.local(frame.to)
        # Per send, in order: a refusal, or None while it waits for admission.
        verdicts: list[Refusal | None] = []
        for frame in sends:
            refusal = seq_refusal(session.last_seq, frame.seq)
            if refusal is None:
                # The seq is consumed whatever happens next, so the client's next
                # frame is always last+1; the high-water mark rides with the batch.
                session.last_seq = frame.seq
                batch.seqs[sid] = frame.seq
                refusal = size_refusal(frame.body, limit)
            verdicts.append(refusal)
            if refusal is not None and refusal.fatal:
                break  # the link closes here: what follows is never read
        candidates = [f for f, v in zip(sends, verdicts, strict=False) if v is None]
        actions = iter(
            self.admission.check_sends(
                agent, session, [(f.to, f.deliver_at) for f in candidates], now
            )
        )
        decided: list[tuple[Send, str | Refusal]] = []
        for frame, verdict in zip(sends, verdicts, strict=False):
            outcome = next(actions) if verdict is None else verdict
            if isinstance(outcome, Refusal):
                self._admit_all(link, decided, now, out, batch)
                decided = []
                if link.held:  # behind a big body: refusals keep their place
                    link.admitted.append((frame, outcome))
                else:
                    self._refuse(link, outcome, now, out, seq=frame.seq, audit=batch.audit)
                continue
            decided.append((frame, outcome))
        self._admit_all(link, decided, now, out, batch)

    def _admit_all(
        self,
        link: Link,
        decided: list[tuple[Send, str | Refusal]],
        now: float,
        out: list[Effect],
        batch: _Batch,
    ) -> None:
        """Sanitise and batch admitted sends in order; a body too big to clean on
        the loop goes to the shell, and what follows it waits on the link."""
        options = self.limits.sanitize
        for index, (frame, action) in enumerate(decided):
            if link.held:
                link.admitted.extend(decided[index:])
                break
            if isinstance(action, Refusal):
                self._refuse(link, action, now, out, seq=frame.seq, audit=batch.audit)
                continue
            if options.enabled and len(frame.body) > SANITIZE_INLINE_LIMIT:
                self._flush(link, batch, now, out)
                link.held = True
                out.append(Sanitize(link.id, frame, action))
                continue
            cleaned = sanitize(frame.body, options) if options.enabled else None
            self._admit(link, frame, action, cleaned, now, out, batch)
        self._alert_accepted(link, batch, now, out)

    def sanitized(
        self,
        conn: int,
        frame: Send,
        action: str,
        cleaned: Sanitized,
        now: float,
        *,
        options: SanitizeOptions,
    ) -> list[Effect]:
        """A big body came back clean from the shell's worker, sanitised with
        ``options``; go on with the link."""
        link = self.routing.links.get(conn)
        out: list[Effect] = []
        if link is None or link.closed:
            return out
        link.held = False
        current = self.limits.sanitize
        kept: Sanitized | None = cleaned
        if options != current:  # a reload changed the rules while the worker ran
            kept = sanitize(frame.body, current) if current.enabled else None
        if frame.to[0] == "@":
            copies, skipped = self._fanouts.pop(conn)
            self._admit_fanout(link, frame, copies, skipped, kept, now, out)
            self._drain(link, now, out)
            return self._finish(out, now)
        batch = _Batch()
        self._admit(link, frame, action, kept, now, out, batch)
        self._alert_accepted(link, batch, now, out)
        self._flush(link, batch, now, out)
        self._drain(link, now, out)
        return self._finish(out, now)

    def _admit(
        self,
        link: Link,
        frame: Send,
        action: str,
        cleaned: Sanitized | None,
        now: float,
        out: list[Effect],
        batch: _Batch,
    ) -> None:
        agent = link.agent
        assert agent is not None
        body = frame.body if cleaned is None else cleaned.text
        hold = action == HOLD
        size = len(body.encode())  # as stored: what the queue caps and its accounting count
        if not hold:
            full = self.shares.queue_refusal(agent, frame.to, size)
            if full is not None:
                self._refuse(link, full, now, out, seq=frame.seq, audit=batch.audit)
                return
        extra: dict[str, Any] = {}
        changes, thread = self._cleaning(agent, cleaned, frame, extra, now, out)
        message = self.new_message(
            agent,
            frame.to,
            body,
            now,
            thread=thread,
            reply_to=frame.reply_to,
            deliver_at=frame.deliver_at,
        )
        if not hold:
            self.shares.queued(agent, frame.to, size)
        batch.audit.append(
            self.message_record(
                message,
                now,
                "held" if hold else "accepted",
                send_seq=frame.seq,
                session=link.session.session_id,
                **extra,
            )
        )
        forward = None
        if self.federation is not None and "@" in frame.to:  # for another relay: the outbox
            forward = self.federation.outbound(message, now)
            batch.remote.append(forward)
        else:
            (batch.held if hold else batch.messages).append(message)
        changed = bool(cleaned and cleaned.changes)
        batch.outcomes.append(
            SendOutcome(frame.seq, message, hold, changes, size, changed, forward)
        )
        batch.recipients[frame.to] = batch.recipients.get(frame.to, 0) + 1

    # --- send to a group -----------------------------------------------------------------------

    def _on_group_send(
        self, link: Link, frame: Send, now: float, out: list[Effect], batch: _Batch
    ) -> None:
        """One send to ``@group``: the seq rule and the size limit as for any send,
        then the members the sender may write to (``Admission.check_fanout``),
        sanitising once, and one ``Persist`` for every copy: all durable or none.
        The sends before it in ``batch`` go to the store first."""
        agent = link.agent
        sid = link.session.session_id
        assert agent is not None
        assert sid is not None
        session = self.admission.sessions[sid]
        refusal = seq_refusal(session.last_seq, frame.seq)
        if refusal is None:
            session.last_seq = frame.seq  # consumed whatever happens next, as for any send
            batch.seqs[sid] = frame.seq
            refusal = size_refusal(frame.body, self.limits.max_message_size)
        members = self.groups.members(frame.to[1:])
        plan = (
            refusal
            if refusal is not None
            else self.admission.check_fanout(
                agent, session, frame.to, members, frame.deliver_at, now
            )
        )
        if isinstance(plan, Refusal):
            self._refuse(link, plan, now, out, seq=frame.seq, audit=batch.audit)
            return
        self._flush(link, batch, now, out)  # the store sees the frames' order
        copies, skipped = plan
        options = self.limits.sanitize
        if options.enabled and len(frame.body) > SANITIZE_INLINE_LIMIT:
            link.held = True
            self._fanouts[link.id] = plan
            out.append(Sanitize(link.id, frame, "group"))
            return
        cleaned = sanitize(frame.body, options) if options.enabled else None
        self._admit_fanout(link, frame, copies, skipped, cleaned, now, out)

    def _admit_fanout(
        self,
        link: Link,
        frame: Send,
        copies: list[tuple[str, str]],
        skipped: list[str],
        cleaned: Sanitized | None,
        now: float,
        out: list[Effect],
    ) -> None:
        """Queue shares for every copy (all fit or the send is refused), then one
        message and one audit line per copy, in one ``Persist``."""
        agent = link.agent
        sid = link.session.session_id
        assert agent is not None
        assert sid is not None
        body = frame.body if cleaned is None else cleaned.text
        size = len(body.encode())
        queued: list[str] = []
        for member, action in copies:
            if action == HOLD:
                continue
            full = self.shares.queue_refusal(agent, member, size)
            if full is not None:
                self.shares.unqueued((agent, m, size) for m in queued)
                refusal = Refusal(
                    full.code,
                    f"{full.message}; a send to {frame.to} stores every copy or none",
                    retry_after=full.retry_after,
                )
                self._refuse(link, refusal, now, out, seq=frame.seq)
                return
            self.shares.queued(agent, member, size)
            queued.append(member)
        extra: dict[str, Any] = {"group": frame.to}
        changes, thread = self._cleaning(agent, cleaned, frame, extra, now, out)
        batch = _Batch()
        outcomes: list[SendOutcome] = []
        for member, action in copies:
            hold = action == HOLD
            message = self.new_message(
                agent,
                member,
                body,
                now,
                thread=thread,
                reply_to=frame.reply_to,
                deliver_at=frame.deliver_at,
            )
            event = "held" if hold else "accepted"
            batch.audit.append(
                self.message_record(message, now, event, send_seq=frame.seq, session=sid, **extra)
            )
            (batch.held if hold else batch.messages).append(message)
            changed = bool(cleaned and cleaned.changes)
            outcomes.append(SendOutcome(frame.seq, message, hold, changes, size, changed))
            batch.recipients[member] = 1
        if skipped:
            batch.audit.append(
                self.record(
                    now,
                    "group_skipped",
                    agent=agent,
                    group=frame.to,
                    skipped=skipped,
                    send_seq=frame.seq,
                    session=sid,
                )
            )
        self._alert_accepted(link, batch, now, out)
        out.append(
            Persist(
                op=HoldMessages(batch.held) if batch.held else Nothing(),
                messages=batch.messages,
                audit=batch.audit,
                seqs={sid: frame.seq},
                then=GroupDurable(link.id, frame.seq, frame.to, outcomes, skipped, changes),
            )
        )

    def _group_durable(
        self, then: GroupDurable, link: Link | None, now: float, out: list[Effect]
    ) -> None:
        if link is not None:
            sent = [Copy(to=o.message.recipient, id=o.message.id, held=o.held) for o in then.copies]
            forbidden = ErrorCode.FORBIDDEN.value
            first = then.copies[0] if then.copies else None
            shown = first is not None and first.body_changed and link.shows_delivered
            answer = GroupAccepted(
                seq=then.seq,
                group=then.group,
                sent=sent,
                skipped=[Skipped(to=member, code=forbidden) for member in then.skipped],
                changes=then.changes,
                delivered=first.message.body if first is not None and shown else None,
            )
            out.append(Reply(link.id, answer))
        for outcome in then.copies:
            if outcome.held:
                self.counters.held += 1
            else:
                self._committed(outcome.message, now, out)

    def _alert_accepted(self, link: Link, batch: _Batch, now: float, out: list[Effect]) -> None:
        """The anomaly rules see what was accepted, once per recipient per batch."""
        agent = link.agent
        assert agent is not None
        for recipient, count in batch.recipients.items():
            self._alert(self.anomaly.accepted(agent, recipient, now, count), now, out)
        batch.recipients.clear()

    def _flush(self, link: Link, batch: _Batch, now: float, out: list[Effect]) -> None:
        """One ``Persist`` for the batch's sends (nobody waits when all were refused);
        the batch is empty afterwards."""
        if batch.outcomes:
            op: StoreOp[None] = HoldMessages(batch.held) if batch.held else Nothing()
            if batch.remote:
                op = HoldAndForward(batch.held, batch.remote)
            out.append(
                Persist(
                    op=op,
                    messages=batch.messages,
                    audit=batch.audit,
                    seqs=batch.seqs,
                    then=SendsDurable(link.id, batch.outcomes),
                )
            )
        elif batch.seqs or batch.audit:
            out.append(Persist(audit=batch.audit, seqs=batch.seqs))
        batch.messages, batch.held, batch.audit, batch.seqs, batch.outcomes = [], [], [], {}, []
        batch.remote = []

    # --- receiving -----------------------------------------------------------------------------

    def _on_fetch(self, link: Link, frame: Fetch, now: float, out: list[Effect]) -> None:
        agent = link.agent
        assert agent is not None
        exclude = self.routing.inflight_ids(agent)
        out.append(
            Persist(op=ReadDueAndPending(agent, now, frame.limit, exclude), then=FetchRead(link.id))
        )

    def _on_ack(self, link: Link, frame: Ack, now: float, out: list[Effect]) -> None:
        agent = link.agent
        assert agent is not None
        ids = list(dict.fromkeys(frame.ids))
        known, unknown = self.routing.acked(agent, ids)
        out.append(
            Persist(
                op=AckMessages(agent, known, unknown),
                audit=[
                    self.record(now, "acked", agent=agent, ids=ids, session=link.session.session_id)
                ],
                then=AckDurable(link.id, agent, ids),
            )
        )

    def _on_agents(self, link: Link, out: list[Effect]) -> None:
        agent = link.agent
        assert agent is not None
        online = self.routing.online
        peers = self.policy.peers_of(agent, self.agents.keys())
        agents = [
            AgentInfo(name=name, online=name in online, may_send=send, may_receive=recv)
            for name, send, recv in peers
        ]
        out.append(Reply(link.id, AgentList(agents=agents)))

    def _top_up(self, link: Link, now: float, out: list[Effect]) -> None:
        """Fill the link's window: from the overflow while it is vouched
        complete, else with one store read (answered in ``persisted``)."""
        session = link.session
        if not (session.subscribed and link.backlog and not link.topping_up and session.ready):
            return
        agent = session.agent
        assert agent is not None
        routing = self.routing
        while link.backlog and session.room > 0:
            link.backlog = False
            room = session.room
            if agent in routing.authoritative:
                for message in routing.take_overflow(agent, room):
                    routing.push(link, message, out)
                if routing.overflow.get(agent):
                    link.backlog = True
                continue
            link.topping_up = True
            out.append(
                Persist(
                    op=ReadDue(agent, now, room, routing.inflight_ids(agent)),
                    then=TopUpRead(link.id, room, self._last_delivery),
                )
            )
            return

    # --- the store answered --------------------------------------------------------------------

    def persisted(self, then: Then, result: object, now: float) -> list[Effect]:
        """The store did what a ``Persist`` with ``then`` asked; ``result`` is its answer."""
        out: list[Effect] = []
        link = self.routing.links.get(then.conn)
        live = link is not None and not link.closed
        if isinstance(then, SendsDurable):
            self._sends_durable(then, link if live else None, now, out)
        elif isinstance(then, GroupDurable):
            self._group_durable(then, link if live else None, now, out)
        elif isinstance(then, AckDurable):
            rows = cast(list[tuple[str, int]], result)
            self.counters.acked += len(rows)
            self.shares.unqueued((sender, then.agent, size) for sender, size in rows)
            self.routing.settle(then.agent, then.ids)
            if link is not None and live:
                out.append(Reply(link.id, Acked(count=len(rows))))
                self._top_up(link, now, out)
        elif isinstance(then, FetchRead):
            if link is not None and live:
                due, total = cast(tuple[list[StoredMessage], int], result)
                self._fetched(link, due, total, out)
        elif isinstance(then, TopUpRead):
            if link is not None:
                link.topping_up = False
                if live and link.session.ready:
                    self._topped_up(link, then, cast(list[StoredMessage], result), now, out)
        return self._finish(out, now)

    def persist_failed(
        self, then: Then | None, reason: str, now: float, *, defect: bool = False
    ) -> list[Effect]:
        """The store failed the work of a ``Persist``: whoever waits is told
        ``unavailable`` (``internal`` for a ``defect`` in the work rather than a
        failing store), and an audit line says so, if the audit can still take it."""
        out: list[Effect] = []
        if then is None:
            return out
        if isinstance(then, SendsDurable | GroupDurable):  # never stored: they do not wait
            outcomes = then.outcomes if isinstance(then, SendsDurable) else then.copies
            self.shares.unqueued(
                (o.message.sender, o.message.recipient, o.size) for o in outcomes if not o.held
            )
        link = self.routing.links.get(then.conn)
        if link is not None:
            link.topping_up = False
        if link is None or link.closed:
            return out
        code = ErrorCode.INTERNAL if defect else ErrorCode.UNAVAILABLE
        what = {
            SendsDurable: "store messages",
            GroupDurable: "store messages",
            AckDurable: "record acks",
        }.get(type(then), "read messages")
        text = f"the relay cannot {what} right now: {reason}"
        if isinstance(then, SendsDurable):
            for outcome in then.outcomes:
                out.append(Reply(link.id, Error(code=code.value, message=text, seq=outcome.seq)))
        elif isinstance(then, GroupDurable):
            out.append(Reply(link.id, Error(code=code.value, message=text, seq=then.seq)))
        else:
            out.append(Reply(link.id, Error(code=code.value, message=text)))
        self.counters.refused[code.value] += 1
        self._audit(
            out,
            now,
            code.value,
            agent=link.agent,
            session=link.session.session_id,
            work=type(then).__name__,
            reason=reason,
        )
        return self._finish(out, now)

    def store_failed(self, reason: str) -> None:
        """The store stopped accepting work: new sessions are refused until it
        recovers (a session the store cannot record could not be resumed)."""
        self.store_failure = reason

    def store_recovered(self) -> None:
        self.store_failure = None

    def _sends_durable(
        self, then: SendsDurable, link: Link | None, now: float, out: list[Effect]
    ) -> None:
        for outcome in then.outcomes:
            message = outcome.message
            # The sender sees what the recipient will read when it is not what was sent.
            shown = link is not None and link.shows_delivered and outcome.body_changed
            delivered = message.body if shown else None
            if outcome.held:
                self.counters.held += 1
                if link is not None:
                    held = Held(outcome.seq, message.id, outcome.changes, delivered)
                    out.append(Reply(link.id, held))
                continue
            if outcome.forward is not None:  # answered once the stream has it
                self.counters.accepted += 1
                self.routing.activity[message.sender]["sent"] += 1
                conn = None if link is None else link.id
                out.append(Forward(outcome.forward, conn, outcome))
                continue
            if link is not None:
                accepted = Accepted(outcome.seq, message.id, outcome.changes, delivered)
                out.append(Reply(link.id, accepted))
            self._committed(message, now, out)

    def message_committed(self, message: StoredMessage, now: float) -> list[Effect]:
        """A message the operator plane made durable: count it and route it."""
        out: list[Effect] = []
        self.shares.queued(message.sender, message.recipient, len(message.body.encode()))
        self._committed(message, now, out)
        return self._finish(out, now)

    def _committed(self, message: StoredMessage, now: float, out: list[Effect]) -> None:
        self.counters.accepted += 1
        self.routing.activity[message.sender]["sent"] += 1
        if message.deliver_at is not None and message.deliver_at > now:
            out.append(ScheduleChanged())
            return
        for link in self.routing.route(message.recipient, message, out):
            self._top_up(link, now, out)

    def _fetched(self, link: Link, due: list[StoredMessage], total: int, out: list[Effect]) -> None:
        agent = link.agent
        assert agent is not None
        routing = self.routing
        count = 0
        for message in due:
            if not routing.is_inflight(agent, message.id):
                routing.push(link, message, out)
                count += 1
        pending = max(0, total - len(routing.inflight.get(agent, {})))
        out.append(Reply(link.id, Fetched(count=count, pending=pending)))

    def _topped_up(
        self, link: Link, then: TopUpRead, due: list[StoredMessage], now: float, out: list[Effect]
    ) -> None:
        agent = link.agent
        assert agent is not None
        routing = self.routing
        for message in due:
            if not routing.is_inflight(agent, message.id):
                routing.push(link, message, out)
        if len(due) >= then.room:
            link.backlog = True
        else:
            routing.vouch(agent, then.watermark)  # the store held nothing more that is due
        self._top_up(link, now, out)

    # --- federation ----------------------------------------------------------------------------

    def forward_answered(
        self, conn: int, outcome: SendOutcome, forwarded: bool, now: float
    ) -> list[Effect]:
        """A remote send is in the stream (``forwarded``) or waits in the outbox."""
        link = self.routing.links.get(conn)
        out: list[Effect] = []
        if link is not None and not link.closed:
            shown = link.shows_delivered and outcome.body_changed
            body = outcome.message.body if shown else None
            answer = Accepted(outcome.seq, outcome.message.id, outcome.changes, body, forwarded)
            out.append(Reply(link.id, answer))
        return out

    def forwarded(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """These (sender, recipient, size) left the outbox: the stream holds them."""
        self.shares.unqueued(rows)

    def arrivals(
        self,
        envelopes: list[Envelope],
        seen: set[str],
        in_use: set[str],
        sent: dict[str, str],
        now: float,
        cleaned: Cleaned | None = None,
    ) -> Arrivals:
        """What to store of authenticated envelopes from other relays
        (``core/federation.py``); ``cleaned``: bodies sanitised beforehand."""
        assert self.federation is not None
        return decide_arrivals(self, self.federation, envelopes, seen, in_use, sent, now, cleaned)

    def arrived(self, arrivals: Arrivals, now: float) -> list[Effect]:
        """Arrivals are durable: route their messages, send their refusals back."""
        out: list[Effect] = []
        self.counters.held += len(arrivals.held)
        for observation in arrivals.observed:
            self._alert(observation.shown_to(self.anomaly, now), now, out)
        for message in arrivals.messages:
            self._committed(message, now, out)
        out.extend(Forward(entry) for entry in arrivals.outbox)
        return self._finish(out, now)

    def arrivals_failed(self, arrivals: Arrivals) -> None:
        """Arrivals were never stored: their queue places are free again."""
        self.shares.unqueued(
            (m.sender, m.recipient, len(m.body.encode())) for m in arrivals.messages
        )

    # --- time passes ---------------------------------------------------------------------------

    def expire_sessions(self, now: float) -> list[Effect]:
        """Forget expired sessions and close the links still on them."""
        out: list[Effect] = []
        for session in self.admission.expire(now):
            self._audit(out, now, "session_expired", agent=session.agent, session=session.id)
        for links in list(self.routing.online.values()):
            for link in list(links):
                self._expired(link, now, out)
        return self._finish(out, now)

    def tick(self, now: float) -> list[Effect]:
        """Time passed (the shell calls this about once a second): long lines that
        stopped arriving are refused, and refusal summaries whose interval ended
        are audited."""
        out: list[Effect] = []
        for link in list(self.routing.links.values()):
            if link.closed or not link.session.buffered:
                continue
            refusal = link.session.check_partial(now)
            if refusal is not None:
                self._refuse(link, refusal, now, out)
        summaries = self.shares.refusals_due(now)
        if summaries:
            out.append(Persist(audit=summaries))
        return self._finish(out, now)

    def stopping(self, now: float) -> list[Effect]:
        """The relay stops: every pending refusal summary is audited."""
        summaries = self.shares.refusals_due(now, everything=True)
        return [Persist(audit=summaries)] if summaries else []

    def stalled(self, conn: int, now: float) -> list[Effect]:
        """A connection has not read what it was sent for too long: it is closed
        (an error frame would only queue behind what it does not read)."""
        link = self.routing.links.get(conn)
        out: list[Effect] = []
        if link is None or link.closed:
            return out
        pid, uid, _gid = link.peer
        who = link.agent or f"uid {uid}"
        self._audit(
            out,
            now,
            "cut_off",
            agent=link.agent,
            session=link.session.session_id,
            reason="it stopped reading what the relay sends",
            peer_pid=pid,
            peer_uid=uid,
        )
        out.append(Log(logging.WARNING, f"closed a connection of {who}: it stopped reading"))
        self._close(link, now, out)
        return self._finish(out, now)

    def schedule_due(self, agents: Iterable[str], now: float) -> list[Effect]:
        """Scheduled messages of these agents fell due."""
        out: list[Effect] = []
        for agent in agents:
            for link in self.routing.route(agent, None, out):
                self._top_up(link, now, out)
        return self._finish(out, now)

    # --- refusals, anomalies, quarantine -------------------------------------------------------

    def _refuse(
        self,
        link: Link,
        refusal: Refusal,
        now: float,
        out: list[Effect],
        *,
        seq: int | None = None,
        audit: list[AuditRecord] | None = None,
    ) -> None:
        """Answer a refusal, count and audit it, feed the anomaly rules, and close
        the link when it is fatal. ``audit``: a batch's lines, where this one
        keeps its place among them."""
        code = refusal.code.value
        self.counters.refused[code] += 1
        who = link.agent
        claimed = link.claimed or link.bound_agent
        name = who or claimed
        known = name is not None and name in self.agents
        if known:
            self.routing.activity[name]["refused"] += 1  # type: ignore[index]
        pid, uid, gid = link.peer
        fields: dict[str, Any] = {}
        if who is None and claimed is not None:
            fields["claimed"] = claimed
        if seq is not None:
            fields["send_seq"] = seq
        line = {
            "agent": who,
            "code": code,
            "reason": refusal.message,
            **fields,
            "session": link.session.session_id,
            "peer_pid": pid,
            "peer_uid": uid,
            "peer_gid": gid,
        }
        # A flood of refusals is one line per kind and a counted summary: keyed by
        # the agent, or by the peer uid while no registered name is proven.
        key: object = name if known else ("uid", uid)
        records = self.shares.refusal_lines(key, code, line, now)
        if records:
            if audit is not None:
                audit += records
            else:
                out.append(Persist(audit=records))
        out.append(
            Reply(
                link.id,
                Error(code=code, message=refusal.message, seq=seq, retry_after=refusal.retry_after),
            )
        )
        if known:
            self._alert(self.anomaly.refused(name, code, now), now, out)  # type: ignore[arg-type]
        if refusal.fatal:
            self._close(link, now, out)
            return
        # Repeat offenders are cut off: a connection refused this often in one
        # interval is spending the relay's time on nothing.
        if now - link.strikes_since >= SUMMARY_INTERVAL:
            link.strikes, link.strikes_since = 0, now
        link.strikes += 1
        limit = STRIKES_BEFORE_HELLO if link.agent is None else STRIKES_PER_INTERVAL
        if link.strikes > limit:
            self._audit(
                out,
                now,
                "cut_off",
                agent=who,
                **({"claimed": claimed} if who is None and claimed else {}),
                session=link.session.session_id,
                refusals=link.strikes,
                peer_pid=pid,
                peer_uid=uid,
            )
            out.append(
                Log(
                    logging.WARNING,
                    f"cut off a connection of {name or f'uid {uid}'}: "
                    f"{link.strikes} refusals in {SUMMARY_INTERVAL:g}s",
                )
            )
            self._close(link, now, out)

    def _alert(self, alerts: list[Alert], now: float, out: list[Effect]) -> None:
        for alert in alerts:
            self.counters.anomalies += 1
            # Only this relay's own agents can be quarantined here; another
            # relay's agent is stopped by its relay, or by withdrawing its pair.
            quarantine = alert.quarantine and "@" not in alert.agent
            fields = {
                "agent": alert.agent,
                "rule": alert.rule,
                "value": alert.value,
                "threshold": alert.threshold,
                "window": alert.window,
                "quarantine": quarantine,
            }
            self.alerts.append({"ts": now, **fields})
            self._audit(out, now, "anomaly", **fields, detail=alert.describe())
            out.append(Log(logging.WARNING, f"anomaly: {alert.describe()}"))
            if quarantine:
                self._quarantine(
                    alert.agent, f"anomaly rule {alert.rule}: {alert.describe()}", now, out
                )

    def quarantine(self, agent: str, reason: str, now: float) -> list[Effect]:
        out: list[Effect] = []
        self._quarantine(agent, reason, now, out)
        return self._finish(out, now)

    def _quarantine(self, agent: str, reason: str, now: float, out: list[Effect]) -> None:
        record = self.agents.get(agent)
        if record is None or record.quarantined:
            return
        self.agents[agent] = msgspec.structs.replace(record, quarantined=reason)
        out.append(
            Persist(
                op=SetQuarantine(agent, reason),
                audit=[self.record(now, "quarantined", agent=agent, reason=reason)],
            )
        )
        self._close_agent(
            agent,
            Refusal(ErrorCode.QUARANTINED, f"agent quarantined: {reason}", fatal=True),
            now,
            out,
        )

    def _close_agent(self, agent: str, refusal: Refusal, now: float, out: list[Effect]) -> None:
        for link in list(self.routing.online.get(agent, ())):
            self._refuse(link, refusal, now, out)

    def _close(self, link: Link, now: float, out: list[Effect], *, notify: bool = True) -> None:
        if link.closed:
            return
        link.closed = True
        self._fanouts.pop(link.id, None)
        returned = link.session.close()
        self.connections -= 1
        self._stop_waiting(link)
        for other in self.routing.detach(link, returned):
            self._top_up(other, now, out)
        if notify:
            out.append(Close(link.id))

    # --- the operator's plane ------------------------------------------------------------------

    def _cleaning(
        self,
        agent: str,
        cleaned: Sanitized | None,
        frame: Send,
        extra: dict[str, Any],
        now: float,
        out: list[Effect],
    ) -> tuple[list[str], str | None]:
        """What sanitising changed in a send: the sentences for its sender, the
        audit fields (into ``extra``), the findings counted against ``agent``'s
        anomaly rules; and the send's thread, cleaned."""
        changes: list[str] = []
        if cleaned is not None and cleaned.changes:
            changes = cleaned.describe()
            extra["sanitized"] = dict(cleaned.changes)
            found = findings(cleaned)
            if found:
                self._alert(self.anomaly.sanitized(agent, found, now), now, out)
        thread = frame.thread
        if thread is not None:
            thread = clean_thread(thread)
            if thread != frame.thread:
                changes.append("thread: control or invisible characters removed")
                extra["thread_cleaned"] = True
        return changes, thread

    def new_message(
        self,
        sender: str,
        recipient: str,
        body: str,
        now: float,
        *,
        thread: str | None = None,
        reply_to: str | None = None,
        deliver_at: float | None = None,
    ) -> StoredMessage:
        """A message with the next delivery number (numbers follow submit order,
        which is commit order) and an id derived from it."""
        self._last_delivery += 1
        delivery = self._last_delivery
        return StoredMessage(
            id=message_id(self._id_prefix, delivery),
            sender=sender,
            recipient=recipient,
            body=body,
            sent_at=now,
            thread=thread,
            reply_to=reply_to,
            deliver_at=deliver_at,
            delivery=delivery,
        )

    def minted_here(self, message_id: str) -> bool:
        """Whether ``message_id`` has the form of this run's ids. Only this run's
        prefix can mint ids again: a new run draws a new random prefix."""
        return message_id.startswith(message_id_prefix(self._id_prefix))

    def next_delivery(self) -> int:
        self._last_delivery += 1
        return self._last_delivery

    def message_record(
        self, message: StoredMessage, now: float, event: str, **extra: Any
    ) -> AuditRecord:
        """The audit line of a message the relay accepts, holds or queues."""
        options = self.limits.sanitize
        sender = message.sender
        agent = sender in self.agents
        scrubbed = options.enabled and options.redact_secrets and agent
        whole = self.config.audit.log_all_messages
        if whole and agent and not self.shares.audit_body(sender, body_size(message.body), now):
            whole = False  # this agent's share of the audit is spent for now
            extra["body_omitted"] = "audit_body_bytes_per_minute"
        fields = {
            "id": message.id,
            "from": sender,
            "to": message.recipient,
            **body_fields(message.body, whole, secrets_removed=scrubbed),
            **extra,
        }
        if message.thread:
            fields["thread"] = message.thread
        if message.deliver_at:
            fields["deliver_at"] = message.deliver_at
        return AuditRecord(now, event, fields)

    def end_sessions(self, agent: str, why: str, now: float) -> list[Effect]:
        """Forget every session of ``agent`` and close its links (a rotated
        credential stops working at once, not at session expiry)."""
        out: list[Effect] = [Persist(op=DeleteSessionsOf(agent))]
        self.admission.end_sessions_of(agent)
        self._close_agent(agent, Refusal(ErrorCode.AUTH_FAILED, why, fatal=True), now, out)
        return self._finish(out, now)

    def set_db_rules(self, db_rules: Iterable[tuple[str, str, str]]) -> None:
        self._db_rules = [Rule(s, r, a) for s, r, a in db_rules]
        self.admission.policy = self._policy()

    def _policy(self) -> Policy:
        return Policy.from_rules([*self.config.rules, *self._db_rules])

    def set_db_groups(self, db_groups: Iterable[tuple[str, str]]) -> None:
        """The groups relay.db holds now, as (group, member) rows."""
        self._db_groups = list(db_groups)
        self.groups = GroupTable(self.config.groups, self._db_groups)

    def rules_with_source(self) -> list[dict[str, str]]:
        rows = [
            {"from": r.sender, "to": r.recipient, "action": r.action, "source": "config"}
            for r in self.config.rules
        ]
        rows += [
            {"from": r.sender, "to": r.recipient, "action": r.action, "source": "admin"}
            for r in self._db_rules
        ]
        return sorted(rows, key=lambda r: (r["from"], r["to"], r["source"]))

    def reload(self, new: Config) -> dict[str, list[str]]:
        """Take what can change while running from ``new``: policy rules, groups,
        anomaly rules, sanitisation, and whether the audit keeps bodies. Everything else
        (paths, sockets, user, limits) is reported as needing a restart."""
        old = self.config
        applied: list[str] = []
        restart: list[str] = []
        if new.rules != old.rules:
            applied.append("policy")
        if new.groups != old.groups:
            applied.append("groups")
        if new.anomaly != old.anomaly:
            applied.append("anomaly")
            self.anomaly = AnomalyDetector(new.anomaly)
        if new.limits.sanitize != old.limits.sanitize:
            applied.append("security.sanitize")
        if new.audit.log_all_messages != old.audit.log_all_messages:
            applied.append("audit.log_all_messages")
        for name in (
            "state_dir",
            "socket_path",
            "admin_socket_path",
            "socket_mode",
            "socket_group",
            "user",
            "per_agent_sockets",
            "agent_socket_dir",
        ):
            if getattr(new, name) != getattr(old, name):
                restart.append(name)
        if new.federation != old.federation:
            restart.append("federation")
        if replace(new.limits, sanitize=old.limits.sanitize) != old.limits:
            restart.append("security limits")
        if replace(new.audit, log_all_messages=old.audit.log_all_messages) != old.audit:
            restart.append("audit.log_path/retention/log_group")
        kept = replace(
            old,
            rules=new.rules,
            groups=new.groups,
            anomaly=new.anomaly,
            limits=replace(old.limits, sanitize=new.limits.sanitize),
            audit=replace(old.audit, log_all_messages=new.audit.log_all_messages),
        )
        self.config = kept
        self.limits = kept.limits
        self.admission.limits = kept.limits
        self.admission.policy = self._policy()
        self.groups = GroupTable(kept.groups, self._db_groups)
        return {"applied": applied, "restart_needed": restart}

    # --- plumbing ------------------------------------------------------------------------------

    def _audit(self, out: list[Effect], now: float, event: str, **fields: Any) -> None:
        """An audit line nobody waits for: it rides with the next commit."""
        out.append(Persist(audit=[AuditRecord(now, event, fields)]))

    def _finish(self, out: list[Effect], now: float) -> list[Effect]:
        """One ``delivered`` line per link for everything this call pushed."""
        delivered = self.routing.delivered
        if delivered:
            self.routing.delivered = {}
            out.append(
                Persist(
                    audit=[
                        AuditRecord(
                            now,
                            "delivered",
                            {"to": link.agent, "ids": ids, "session": link.session.session_id},
                        )
                        for link, ids in delivered.items()
                    ]
                )
            )
        return out
