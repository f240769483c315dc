"""The relay core alone: events in, effects out. No sockets, no asyncio, no SQLite,
no clock -- every call gets ``now`` and returns the effects to carry out, so each
case runs in microseconds and asserts exactly what the core decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ccc_relay.core.effects import (
    AckDurable,
    Close,
    Effect,
    FetchRead,
    Persist,
    Reply,
    SendsDurable,
    Then,
    TopUpRead,
)
from ccc_relay.core.relay import RelayCore
from ccc_relay.credentials import Credential
from ccc_relay.policy.config import Rule
from ccc_relay.protocol.codec import encode
from ccc_relay.protocol.frames import (
    Accepted,
    Ack,
    Acked,
    Error,
    Fetch,
    Fetched,
    Held,
    Hello,
    Message,
    Ping,
    Pong,
    Send,
    Subscribe,
    Welcome,
)
from ccc_relay.store.ops import (
    AckMessages,
    CreateSession,
    HoldMessages,
    Nothing,
    ReadDue,
    ReadDueAndPending,
)
from ccc_relay.store.records import AgentRecord, StoredMessage
from tests.support import make_config

T0 = 1_800_000_000.0
PEER = (4242, 1000, 1000)  # pid, uid, gid
NAMES = ("alice", "bob", "carol")


def fake_sign(message: Message) -> str:
    return f"sig:{message.id}"


class Core:
    """A ``RelayCore`` with three agents and helpers that speak frames to it."""

    def __init__(self, rules: Sequence[Rule] = (Rule("alice", "bob"),), **limits: Any) -> None:
        self.creds = {name: Credential.generate() for name in NAMES}
        agents = [AgentRecord(name, cred.digest(), T0) for name, cred in self.creds.items()]
        config = make_config(Path("/nonexistent/ccc-core-test"), rules=tuple(rules), **limits)
        self.core = RelayCore(
            config,
            agents=agents,
            db_rules=[],
            last_delivery=0,
            sign=fake_sign,
            now=T0,
            id_prefix="TESTpfx1",
        )
        self._next = 0
        self.sessions: dict[int, str] = {}

    def open(self, now: float = T0) -> int:
        self._next += 1
        assert self.core.connect(self._next, PEER, now) == []
        return self._next

    def hello(self, agent: str, now: float = T0, **extra: Any) -> int:
        conn = self.open(now)
        frame = Hello(agent=agent, credential=self.creds[agent].reveal(), **extra)
        effects = self.core.receive(conn, encode(frame), now)
        [welcome] = replies(effects, Welcome)
        self.sessions[conn] = welcome.session
        return conn

    def frames(self, conn: int, *frames: Any, now: float = T0) -> list[Effect]:
        return self.core.receive(conn, b"".join(encode(f) for f in frames), now)


def replies(effects: Sequence[Effect], kind: type | None = None, conn: int | None = None) -> list:
    return [
        e.frame
        for e in effects
        if isinstance(e, Reply)
        and (kind is None or isinstance(e.frame, kind))
        and (conn is None or e.conn == conn)
    ]


def persists(effects: Sequence[Effect]) -> list[Persist]:
    return [e for e in effects if isinstance(e, Persist)]


def waited(effects: Sequence[Effect]) -> list[Persist]:
    """The Persists someone waits for (those with a continuation)."""
    return [p for p in persists(effects) if p.then is not None]


def audit_events(effects: Sequence[Effect]) -> list[str]:
    return [record.event for p in persists(effects) for record in p.audit]


def closes(effects: Sequence[Effect]) -> list[int]:
    return [e.conn for e in effects if isinstance(e, Close)]


def errors(effects: Sequence[Effect]) -> list[tuple[str, int | None]]:
    return [(e.code, e.seq) for e in replies(effects, Error)]


def stored_message(n: int, to: str = "bob", sender: str = "alice") -> StoredMessage:
    return StoredMessage(
        id=f"m_STOREDxx{n}", sender=sender, recipient=to, body=f"body {n}", sent_at=T0, delivery=n
    )


# --- hello ---------------------------------------------------------------------------------


def test_connect_alone_does_nothing_visible() -> None:
    c = Core()
    assert c.core.connect(1, PEER, T0) == []
    assert c.core.connections == 1 and c.core.unauthenticated == 1


def test_hello_is_welcomed_and_its_session_persisted() -> None:
    c = Core()
    conn = c.open()
    effects = c.core.receive(
        conn, encode(Hello(agent="alice", credential=c.creds["alice"].reveal())), T0
    )
    [persist] = persists(effects)
    assert isinstance(persist.op, CreateSession)
    record = persist.op.record
    assert (record.agent, record.created, record.last_seq) == ("alice", T0, 0)
    assert persist.then is None and persist.messages == []
    assert [r.event for r in persist.audit] == ["authenticated"]
    assert persist.audit[0].fields["agent"] == "alice"
    assert persist.audit[0].fields["peer_uid"] == PEER[1]
    [welcome] = replies(effects, Welcome, conn)
    assert welcome.session == record.id
    assert (welcome.agent, welcome.last_seq) == ("alice", 0)
    assert welcome.expires_at == T0 + c.core.limits.session_timeout
    assert closes(effects) == [] and errors(effects) == []
    assert c.core.is_ready(conn) and c.core.unauthenticated == 0


@pytest.mark.parametrize(
    ("agent", "credential"),
    [
        ("alice", "wrong"),  # wrong credential
        ("alice", "bob's"),  # another agent's credential
        ("mallory", "whatever"),  # unknown agent
    ],
)
def test_a_failed_hello_is_auth_failed_and_closed(agent: str, credential: str) -> None:
    c = Core()
    conn = c.open()
    if credential == "bob's":
        credential = c.creds["bob"].reveal()
    effects = c.core.receive(conn, encode(Hello(agent=agent, credential=credential)), T0)
    assert errors(effects) == [("auth_failed", None)]
    assert closes(effects) == [conn]
    assert replies(effects, Welcome) == []
    assert not any(isinstance(p.op, CreateSession) for p in persists(effects))
    assert "refused" in audit_events(effects)
    assert not c.core.is_ready(conn)
    # Frames after the close are not decided at all.
    assert c.frames(conn, Ping()) == []


def test_hello_from_a_peer_with_the_wrong_bound_uid_is_auth_failed() -> None:
    c = Core()
    record = c.core.agents["alice"]
    c.core.agents["alice"] = AgentRecord(record.name, record.cred_hash, T0, uid=PEER[1] + 1)
    conn = c.open()
    effects = c.frames(conn, Hello(agent="alice", credential=c.creds["alice"].reveal()))
    assert errors(effects) == [("auth_failed", None)]
    assert closes(effects) == [conn]


@pytest.mark.parametrize(
    "frame",
    [Send(seq=1, to="bob", body="x"), Ping(), Fetch(), Subscribe(), Ack(ids=["m_abcdefgh1"])],
    ids=lambda f: type(f).__name__,
)
def test_a_frame_before_hello_is_auth_required_and_closed(frame: Any) -> None:
    c = Core()
    conn = c.open()
    effects = c.frames(conn, frame)
    assert errors(effects) == [("auth_required", getattr(frame, "seq", None))]
    assert closes(effects) == [conn]
    assert waited(effects) == []


def test_hello_timeout_closes_an_unauthenticated_connection_only() -> None:
    c = Core()
    waiting = c.open()
    ready = c.hello("alice")
    effects = c.core.hello_timed_out(waiting, T0 + 5)
    assert errors(effects) == [("hello_timeout", None)]
    assert closes(effects) == [waiting]
    assert c.core.hello_timed_out(ready, T0 + 5) == []


# --- send ----------------------------------------------------------------------------------


def test_a_send_is_one_persist_and_no_answer_before_it_is_durable() -> None:
    c = Core()
    alice = c.hello("alice")
    effects = c.frames(alice, Send(seq=1, to="bob", body="hello bob", thread="t1"))
    assert replies(effects) == []  # nothing is accepted before COMMIT
    [persist] = waited(effects)
    assert isinstance(persist.then, SendsDurable)
    assert persist.then.conn == alice
    [message] = persist.messages
    assert (message.sender, message.recipient, message.body, message.thread) == (
        "alice",
        "bob",
        "hello bob",
        "t1",
    )
    assert message.sent_at == T0 and message.delivery == 1
    assert message.id.startswith("m_TESTpfx1")
    assert persist.seqs == {c.sessions[alice]: 1}
    assert type(persist.op) is Nothing
    assert [r.event for r in persist.audit] == ["accepted"]
    assert persist.audit[0].fields["id"] == message.id
    [outcome] = persist.then.outcomes
    assert (outcome.seq, outcome.message, outcome.held) == (1, message, False)


def test_persisted_send_is_accepted_and_pushed_to_a_subscribed_recipient() -> None:
    c = Core()
    alice = c.hello("alice")
    bob = c.hello("bob", signatures=True)
    # bob subscribes: the core reads the store once to fill his window.
    effects = c.frames(bob, Subscribe(window=4))
    [read] = waited(effects)
    assert isinstance(read.op, ReadDue) and read.op.agent == "bob" and read.op.limit == 4
    assert isinstance(read.then, TopUpRead) and read.then.conn == bob
    assert replies(c.core.persisted(read.then, [], T0)) == []  # the store held nothing

    [persist] = waited(c.frames(alice, Send(seq=1, to="bob", body="ping")))
    assert isinstance(persist.then, SendsDurable)
    [message] = persist.messages
    effects = c.core.persisted(persist.then, None, T0 + 0.001)
    assert [(e.conn, type(e.frame)) for e in effects if isinstance(e, Reply)] == [
        (alice, Accepted),
        (bob, Message),
    ]
    [accepted] = replies(effects, Accepted)
    assert (accepted.seq, accepted.id) == (1, message.id)
    [pushed] = replies(effects, Message, bob)
    assert (pushed.id, pushed.sender, pushed.to, pushed.body, pushed.delivery) == (
        message.id,
        "alice",
        "bob",
        "ping",
        message.delivery,
    )
    assert pushed.signature == f"sig:{message.id}"  # bob asked for signatures
    assert "delivered" in audit_events(effects)
    assert c.core.counters.accepted == 1 and c.core.counters.delivered == 1


def test_persisted_send_to_an_unsubscribed_recipient_is_only_accepted() -> None:
    c = Core()
    alice = c.hello("alice")
    c.hello("bob")  # online, not subscribed: he fetches
    [persist] = waited(c.frames(alice, Send(seq=1, to="bob", body="x")))
    assert persist.then is not None
    effects = c.core.persisted(persist.then, None, T0)
    assert [type(f) for f in replies(effects)] == [Accepted]


def test_several_sends_in_one_read_are_one_persist() -> None:
    c = Core(rules=(Rule("alice", "bob"), Rule("alice", "carol")))
    alice = c.hello("alice")
    sends = [
        Send(seq=1, to="bob", body="one"),
        Send(seq=2, to="carol", body="two"),
        Send(seq=3, to="bob", body="three"),
    ]
    effects = c.frames(alice, *sends)
    [persist] = waited(effects)
    assert [p for p in persists(effects) if p.messages] == [persist]
    assert [(m.recipient, m.body) for m in persist.messages] == [
        ("bob", "one"),
        ("carol", "two"),
        ("bob", "three"),
    ]
    assert [m.delivery for m in persist.messages] == [1, 2, 3]
    assert persist.seqs == {c.sessions[alice]: 3}
    assert isinstance(persist.then, SendsDurable)
    assert [o.seq for o in persist.then.outcomes] == [1, 2, 3]
    answered = replies(c.core.persisted(persist.then, None, T0), Accepted)
    assert [(a.seq, a.id) for a in answered] == [
        (i + 1, m.id) for i, m in enumerate(persist.messages)
    ]


def test_another_frame_between_sends_keeps_the_store_in_frame_order() -> None:
    c = Core()
    alice = c.hello("alice")
    effects = c.frames(
        alice,
        Send(seq=1, to="bob", body="before"),
        Fetch(limit=1),
        Send(seq=2, to="bob", body="after"),
    )
    steps = [(type(p.then).__name__, [m.body for m in p.messages]) for p in waited(effects)]
    # The fetch must see the first send (the store runs jobs in order) but not the second.
    assert steps == [
        ("SendsDurable", ["before"]),
        ("FetchRead", []),
        ("SendsDurable", ["after"]),
    ]


def test_a_forbidden_send_is_refused_at_once_and_persists_no_message() -> None:
    c = Core()
    alice = c.hello("alice")
    for to in ("carol", "nobody"):  # forbidden and unknown: the same answer
        seq = 1 if to == "carol" else 2
        effects = c.frames(alice, Send(seq=seq, to=to, body="let me in"))
        assert errors(effects) == [("forbidden", seq)]
        assert closes(effects) == []
        assert waited(effects) == []
        assert all(p.messages == [] for p in persists(effects))
        # The first refusal of a kind in an interval has its own line; later ones
        # are counted into one summary line when the interval ends.
        assert ("refused" in audit_events(effects)) == (to == "carol")
    assert c.core.counters.refused["forbidden"] == 2
    assert c.core.counters.accepted == 0
    assert c.core.tick(T0 + 1) == []
    [summary] = [r for p in persists(c.core.tick(T0 + 11)) for r in p.audit]
    assert summary.event == "refusals_counted"
    assert summary.fields["agent"] == "alice"
    assert summary.fields["codes"] == {"forbidden": 1}


def test_a_refused_send_between_two_allowed_ones_keeps_one_persist_and_its_seq() -> None:
    c = Core()
    alice = c.hello("alice")
    effects = c.frames(
        alice,
        Send(seq=1, to="bob", body="a"),
        Send(seq=2, to="carol", body="b"),
        Send(seq=3, to="bob", body="c"),
    )
    assert errors(effects) == [("forbidden", 2)]
    [persist] = waited(effects)
    assert [m.body for m in persist.messages] == ["a", "c"]
    assert persist.then is not None
    assert [o.seq for o in persist.then.outcomes] == [1, 3]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("seqs", "expected"),
    [
        ([1, 1], [("replay", 1)]),
        ([1, 3], [("out_of_order", 3)]),
        ([2], [("out_of_order", 2)]),
        ([1, 2, 2, 3], [("replay", 2)]),
    ],
)
def test_the_seq_rule_through_the_core(seqs: list[int], expected: list[tuple[str, int]]) -> None:
    c = Core()
    alice = c.hello("alice")
    effects = c.frames(alice, *(Send(seq=s, to="bob", body=f"s{s}") for s in seqs))
    assert errors(effects) == expected
    assert closes(effects) == []


def test_a_hold_pair_persists_held_messages_and_answers_held() -> None:
    c = Core(rules=(Rule("alice", "bob", "hold"),))
    alice = c.hello("alice")
    [persist] = waited(c.frames(alice, Send(seq=1, to="bob", body="deploy?")))
    assert isinstance(persist.op, HoldMessages)
    [message] = persist.op.messages
    assert persist.messages == []  # not queued for bob
    assert [r.event for r in persist.audit] == ["held"]
    assert persist.then is not None
    effects = c.core.persisted(persist.then, None, T0)
    [held] = replies(effects)
    assert isinstance(held, Held) and (held.seq, held.id) == (1, message.id)
    assert c.core.counters.accepted == 0 and c.core.counters.held == 1


# --- rate limits ---------------------------------------------------------------------------


def test_the_101st_send_in_a_minute_is_rate_limited_with_retry_after() -> None:
    c = Core()
    alice = c.hello("alice")
    for seq in range(1, 101):
        effects = c.frames(alice, Send(seq=seq, to="bob", body="x"), now=T0 + seq * 0.1)
        assert errors(effects) == [], seq
        assert len(waited(effects)) == 1
    effects = c.frames(alice, Send(seq=101, to="bob", body="x"), now=T0 + 10.1)
    [error] = replies(effects, Error)
    assert (error.code, error.seq) == ("rate_limited", 101)
    assert error.retry_after is not None and 0 < error.retry_after <= 60
    assert waited(effects) == []
    assert closes(effects) == []
    # Waiting retry_after is enough.
    later = T0 + 10.1 + error.retry_after
    effects = c.frames(alice, Send(seq=102, to="bob", body="x"), now=later)
    assert errors(effects) == []


def test_rate_limit_in_one_read_admits_exactly_100() -> None:
    c = Core()
    alice = c.hello("alice")
    effects = c.frames(alice, *(Send(seq=s, to="bob", body="x") for s in range(1, 106)))
    [persist] = waited(effects)
    assert len(persist.messages) == 100
    assert errors(effects) == [("rate_limited", s) for s in range(101, 106)]
    assert all(e.retry_after for e in replies(effects, Error))
    assert persist.seqs == {c.sessions[alice]: 105}  # refused seqs are consumed too


def test_reconnecting_does_not_reset_the_agent_budget() -> None:
    c = Core(rate_per_minute=1000)  # the session's own limit is not what binds
    first = c.hello("alice")
    effects = c.frames(first, *(Send(seq=s, to="bob", body="x") for s in range(1, 101)))
    assert errors(effects) == []
    second = c.hello("alice")
    effects = c.frames(second, Send(seq=1, to="bob", body="x"))
    assert errors(effects) == [("rate_limited", 1)]


# --- fetch and ack -------------------------------------------------------------------------


def test_fetch_reads_the_store_then_answers_messages_and_fetched() -> None:
    c = Core()
    bob = c.hello("bob")
    effects = c.frames(bob, Fetch(limit=5), now=T0 + 1)
    assert replies(effects) == []
    [persist] = waited(effects)
    assert persist.op == ReadDueAndPending("bob", T0 + 1, 5, frozenset())
    assert persist.then == FetchRead(bob)
    due = [stored_message(1), stored_message(2)]
    effects = c.core.persisted(persist.then, (due, 3), T0 + 1)
    frames = replies(effects, conn=bob)
    assert [type(f) for f in frames] == [Message, Message, Fetched]
    assert [f.id for f in frames[:2]] == [m.id for m in due]
    assert frames[0].signature is None  # bob did not ask for signatures
    assert (frames[2].count, frames[2].pending) == (2, 1)
    assert "delivered" in audit_events(effects)

    # A second fetch excludes what is in flight, and does not push it again.
    [again] = waited(c.frames(bob, Fetch(limit=5), now=T0 + 2))
    assert isinstance(again.op, ReadDueAndPending)
    assert again.op.exclude == frozenset(m.id for m in due)
    assert again.then is not None
    effects = c.core.persisted(again.then, ([due[0]], 3), T0 + 2)
    assert [type(f) for f in replies(effects)] == [Fetched]


def test_ack_persists_then_answers_acked() -> None:
    c = Core()
    bob = c.hello("bob")
    [read] = waited(c.frames(bob, Fetch()))
    assert read.then is not None
    due = [stored_message(1), stored_message(2)]
    c.core.persisted(read.then, (due, 2), T0)
    ids = [due[0].id, due[0].id, "m_notmine01"]  # a repeat counts once
    effects = c.frames(bob, Ack(ids=ids))
    assert replies(effects) == []
    [persist] = waited(effects)
    # in flight: its delivery number, sender and size; the other only by its id
    assert persist.op == AckMessages("bob", [(1, "alice", len("body 1"))], ["m_notmine01"])
    assert persist.then == AckDurable(bob, "bob", [due[0].id, "m_notmine01"])
    assert [r.event for r in persist.audit] == ["acked"]
    effects = c.core.persisted(persist.then, [("alice", 9)], T0)
    assert replies(effects) == [Acked(count=1)]
    assert c.core.routing.inflight_ids("bob") == frozenset({due[1].id})
    assert c.core.counters.acked == 1


# --- time ----------------------------------------------------------------------------------


def test_sessions_expire_with_the_time_passed_in() -> None:
    c = Core(session_timeout=100.0)
    alice = c.hello("alice")
    assert c.core.expire_sessions(T0 + 99.9) == []
    effects = c.core.expire_sessions(T0 + 100)
    assert errors(effects) == [("session_expired", None)]
    assert closes(effects) == [alice]
    assert "session_expired" in audit_events(effects)
    assert c.sessions[alice] not in c.core.sessions


def test_a_frame_after_expiry_is_session_expired_not_answered() -> None:
    c = Core(session_timeout=100.0)
    alice = c.hello("alice")
    assert replies(c.frames(alice, Ping(data="a"), now=T0 + 99)) == [Pong(data="a")]
    effects = c.frames(alice, Ping(data="b"), Send(seq=1, to="bob", body="x"), now=T0 + 100)
    assert errors(effects) == [("session_expired", None)]
    assert replies(effects, Pong) == []
    assert waited(effects) == []
    assert closes(effects) == [alice]


def test_a_resumed_session_keeps_its_seq_until_it_expires() -> None:
    c = Core(session_timeout=100.0)
    first = c.hello("alice")
    c.frames(first, Send(seq=1, to="bob", body="x"))
    c.core.disconnected(first, T0 + 1)
    second = c.open(T0 + 2)
    hello = Hello(agent="alice", credential=c.creds["alice"].reveal(), resume=c.sessions[first])
    effects = c.frames(second, hello, now=T0 + 2)
    [welcome] = replies(effects, Welcome)
    assert (welcome.session, welcome.last_seq) == (c.sessions[first], 1)
    assert not any(isinstance(p.op, CreateSession) for p in persists(effects))
    third = c.open(T0 + 100)
    effects = c.frames(third, hello, now=T0 + 100)
    assert errors(effects) == [("session_expired", None)]


# --- the store fails -----------------------------------------------------------------------


def continuation(c: Core, kind: str) -> tuple[int, Then, list[int | None]]:
    """A real continuation of ``kind`` from the core, and the seqs its error must carry."""
    alice = c.hello("alice")
    if kind == "sends":
        frames: list[Any] = [Send(seq=1, to="bob", body="a"), Send(seq=2, to="bob", body="b")]
        seqs: list[int | None] = [1, 2]
    elif kind == "ack":
        frames, seqs = [Ack(ids=["m_abcdefgh1"])], [None]
    elif kind == "fetch":
        frames, seqs = [Fetch()], [None]
    else:
        frames, seqs = [Subscribe(window=2)], [None]
    [persist] = waited(c.frames(alice, *frames))
    assert persist.then is not None
    return alice, persist.then, seqs


KINDS = {"sends": SendsDurable, "ack": AckDurable, "fetch": FetchRead, "topup": TopUpRead}


@pytest.mark.parametrize("kind", list(KINDS))
def test_persist_failed_answers_unavailable_and_audits_it(kind: str) -> None:
    c = Core()
    alice, then, seqs = continuation(c, kind)
    assert isinstance(then, KINDS[kind])
    effects = c.core.persist_failed(then, "durable store failed: disk I/O error", T0 + 1)
    assert errors(effects) == [("unavailable", seq) for seq in seqs]
    assert all(e.conn == alice for e in effects if isinstance(e, Reply))
    assert all("disk I/O error" in e.message for e in replies(effects, Error))
    assert replies(effects, Accepted) == [] and replies(effects, Message) == []
    assert closes(effects) == []  # unavailable is not fatal
    [record] = [r for p in persists(effects) for r in p.audit if r.event == "unavailable"]
    assert record.fields["agent"] == "alice"
    assert record.fields["session"] == c.sessions[alice]
    assert record.fields["work"] == type(then).__name__
    assert "disk I/O error" in record.fields["reason"]
    assert waited(effects) == []
    assert c.core.counters.accepted == 0
    assert c.core.counters.refused["unavailable"] == 1


def test_a_failed_topup_can_be_retried() -> None:
    c = Core()
    _bob, then, _ = continuation(c, "topup")
    c.core.persist_failed(then, "disk", T0)
    link = c.core.links[then.conn]
    assert not link.topping_up  # a later ack or push may read again


def test_persist_failed_for_a_closed_connection_or_nobody_is_silent() -> None:
    c = Core()
    alice, then, _ = continuation(c, "sends")
    assert c.core.persist_failed(None, "disk", T0) == []
    c.core.disconnected(alice, T0)
    assert c.core.persist_failed(then, "disk", T0) == []


def test_persisted_sends_of_a_closed_connection_still_reach_the_recipient() -> None:
    c = Core()
    alice = c.hello("alice")
    bob = c.hello("bob")
    [read] = waited(c.frames(bob, Subscribe()))
    assert read.then is not None
    c.core.persisted(read.then, [], T0)
    [persist] = waited(c.frames(alice, Send(seq=1, to="bob", body="x")))
    assert persist.then is not None
    c.core.disconnected(alice, T0)
    effects = c.core.persisted(persist.then, None, T0)
    assert [(e.conn, type(e.frame)) for e in effects if isinstance(e, Reply)] == [(bob, Message)]


def test_a_defect_in_store_work_is_answered_internal() -> None:
    c = Core()
    _conn, then, _seqs = continuation(c, "fetch")
    effects = c.core.persist_failed(then, "a defect", T0, defect=True)
    assert [code for code, _ in errors(effects)] == ["internal"]
    assert "internal" in audit_events(effects)


def test_once_the_store_has_failed_a_hello_is_refused_unavailable() -> None:
    c = Core()
    c.core.store_failed("durable store failed: disk I/O error")
    conn = c.open()
    effects = c.frames(conn, Hello(agent="alice", credential=c.creds["alice"].reveal()))
    assert errors(effects) == [("unavailable", None)]
    assert closes(effects) == [conn]
    assert not any(isinstance(r, Welcome) for r in replies(effects))


def test_the_overflow_cap_counts_body_bytes_not_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Committed messages waiting for window room are held up to a byte cap; a
    body of three-byte characters counts three times its length."""
    from ccc_relay.core import routing as routing_module
    from ccc_relay.core.routing import Counters, Link, Routing
    from ccc_relay.protocol.session import AgentSession

    monkeypatch.setattr(routing_module, "OVERFLOW_MAX_BYTES", 100)
    routing = Routing(lambda _message: "", Counters())
    link = Link(1, AgentSession(10**6), (1, 0, 0), T0)
    link.session.authenticated("bob", "s_overflowtest", wants_signatures=False)
    link.session.subscribe(1)
    routing.attach(link)

    def message(n: int) -> StoredMessage:
        return StoredMessage(id=f"m_OVERFLOW{n}", sender="alice", recipient="bob",
                             body="€" * 20, sent_at=T0, delivery=n)  # fmt: skip

    out: list = []
    routing.route("bob", message(1), out)  # pushed: the window had room for one
    routing.route("bob", message(2), out)  # kept: 60 bytes
    assert [m.delivery for m in routing.overflow["bob"]] == [2]
    routing.route("bob", message(3), out)  # 120 bytes would pass the cap: the store is the queue
    assert list(routing.overflow["bob"]) == []
    assert routing.inflight["bob"]["m_OVERFLOW1"][1:] == ("alice", 60)


def test_a_reload_while_a_big_body_was_sanitised_is_honoured() -> None:
    """The worker sanitised with the rules of before a reload: the core cleans the body
    again with the rules of now, so no body slips through under the old ones."""
    from dataclasses import replace

    from ccc_relay.core.effects import Sanitize
    from ccc_relay.core.relay import SANITIZE_INLINE_LIMIT
    from ccc_relay.policy.sanitize import SanitizeOptions, sanitize

    c = Core()
    c.core.limits = replace(c.core.limits, sanitize=SanitizeOptions(redact_secrets=False))
    alice = c.hello("alice")
    body = "token ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8 " + "x" * SANITIZE_INLINE_LIMIT
    [work] = [
        e for e in c.frames(alice, Send(seq=1, to="bob", body=body)) if isinstance(e, Sanitize)
    ]
    before = c.core.limits.sanitize
    cleaned = sanitize(work.frame.body, before)  # on the worker, with the rules of before
    c.core.limits = replace(c.core.limits, sanitize=SanitizeOptions())  # the reload
    [persist] = waited(
        c.core.sanitized(alice, work.frame, work.action, cleaned, T0, options=before)
    )
    [message] = persist.messages
    assert message.body.startswith("token [redacted:github-token] ")


def test_the_audit_body_budget_counts_bytes_not_characters() -> None:
    from dataclasses import replace

    c = Core()
    c.core.limits = c.core.shares.limits = replace(
        c.core.limits, audit_body_bytes_per_minute=100, audit_body_bytes_per_minute_total=10**9
    )
    alice = c.hello("alice")
    effects = c.frames(alice, Send(seq=1, to="bob", body="€" * 30))  # 30 characters, 90 bytes
    effects += c.frames(alice, Send(seq=2, to="bob", body="€" * 30))
    lines = [r.fields for p in persists(effects) for r in p.audit if r.event == "accepted"]
    assert ["body" in line for line in lines] == [True, False]
    assert lines[1]["body_omitted"] == "audit_body_bytes_per_minute"
