"""Stateful fuzzing of the relay core (``core/relay.py``) driven with encoded frames.

A Hypothesis ``RuleBasedStateMachine`` opens connections to a ``RelayCore``
(alice and bob, each allowed to write to the other), feeds them bytes -- hellos
right and wrong (some resuming a session another connection holds), sends
whose seq is right or wrong, acks of what was pushed, fetches, subscribes,
pings, byes, invalid lines and random bytes -- split at random points, moves
its clock (``tick``), drops connections, and plays the store: it answers the
``Persist`` effects someone waits for, in order, when it likes (reads find
nothing stored; the rest is acknowledged). A model of the documented protocol
predicts, line by line, the phase and the seq high-water mark. After each step:

* the core raised nothing and every frame it replied with encodes;
* no connection gets a reply after its ``Close``, and a close follows a word
  (an error or ``bye``) unless the peer left;
* each connection got at most one answer per complete non-blank line, and --
  while it is open and the store has answered everything -- exactly one
  (a ``subscribe`` gets none; pushed messages are not answers);
* per session the seq high-water mark never goes down, moves exactly as the
  rule says (last+1 is taken, anything else is not), and every ``accepted``
  names a seq taken, in increasing order;
* a subscribed connection never has more in flight than its window.

Bounded for CI; ``CCC_FUZZ_EXAMPLES=5000`` for a longer hunt.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ccc_relay.core.effects import AckDurable, Close, FetchRead, Persist, Reply, TopUpRead
from ccc_relay.core.relay import RelayCore
from ccc_relay.credentials import Credential
from ccc_relay.policy.config import Rule
from ccc_relay.protocol.codec import decode_client_frame, encode
from ccc_relay.protocol.errors import ProtocolError
from ccc_relay.protocol.frames import (
    Accepted,
    Ack,
    Bye,
    Error,
    Fetch,
    Goodbye,
    Held,
    Hello,
    ListAgents,
    Message,
    Ping,
    Send,
    Subscribe,
    Welcome,
)
from ccc_relay.store.records import AgentRecord
from tests.support import make_config

EXAMPLES = int(os.environ.get("CCC_FUZZ_EXAMPLES", "400"))
T0 = 1_800_000_000.0
PEER = (4242, 1000, 1000)
AGENTS = ("alice", "bob")
HIGH = 10_000_000.0  # every rate far out of reach: this is about state, not policy


@dataclass
class Link:
    agent: str | None = None  # once welcomed
    session: str | None = None
    ready: bool = False
    closed: bool = False  # the core closed it, or the peer left
    peer_left: bool = False
    partial: bytes = b""
    expected: int = 0  # answers owed: one per complete non-blank line (a subscribe none)
    answers: int = 0
    unsure: bool = False  # the core closed it mid-read: what followed was never decided
    window: int = 0
    inflight: set[str] = field(default_factory=set)


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.creds = {name: Credential.generate() for name in AGENTS}
        config = make_config(
            Path("/nonexistent/ccc-fuzz-core"),
            rules=(Rule("alice", "bob"), Rule("bob", "alice")),
            rate_per_minute=HIGH,
            agent_rate_per_minute=HIGH,
            pair_rate_per_minute=HIGH,
            global_rate_per_minute=HIGH,
        )
        self.core = RelayCore(
            config,
            agents=[AgentRecord(n, c.digest(), T0) for n, c in self.creds.items()],
            db_rules=[],
            last_delivery=0,
            sign=lambda message: "sig",
            now=T0,
            id_prefix="FUZZpfx1",
        )
        self.now = T0
        self.links: dict[int, Link] = {}
        self.ids = itertools.count(1)
        self.waiting: deque[Persist] = deque()  # the store's queue
        self.last_seq: dict[str, int] = {}  # the model's high-water mark, per session
        self.core_seq: dict[str, int] = {}  # what the core's was, last seen
        self.accepted_seq: dict[str, int] = {}
        self.session_of_conn: dict[int, str] = {}
        self.stored: dict[str, tuple[str, str, int]] = {}  # id -> (recipient, sender, bytes)

    # --- effects -------------------------------------------------------------------

    def apply(self, effects: list[Any]) -> None:
        worded: set[int] = set()  # connections told why in this batch
        for effect in effects:
            if isinstance(effect, Reply):
                link = self.links[effect.conn]
                assert not link.closed, f"a reply after the close: {effect}"
                frame = effect.frame
                if isinstance(frame, Error | Goodbye):
                    worded.add(effect.conn)
                encode(frame)  # every frame the core makes can be written
                if isinstance(frame, Message):
                    link.inflight.add(frame.id)
                    assert len(link.inflight) <= link.window, "pushed past the window"
                    continue
                link.answers += 1
                if isinstance(frame, Welcome):
                    self.session_of_conn[effect.conn] = frame.session
                    self.last_seq.setdefault(frame.session, frame.last_seq)
                if isinstance(frame, Accepted | Held):
                    session = self.session_of_conn[effect.conn]
                    assert frame.seq > self.accepted_seq.get(session, 0), "accepted out of order"
                    assert frame.seq <= self.core.sessions[session].last_seq
                    self.accepted_seq[session] = frame.seq
            elif isinstance(effect, Close):
                link = self.links[effect.conn]
                assert effect.conn in worded, "closed without a word"
                assert not link.closed, "closed twice"
                link.closed = True
                link.unsure = True  # the lines after the fatal one are never answered
            elif isinstance(effect, Persist) and effect.then is not None:
                self.waiting.append(effect)

    # --- the model -------------------------------------------------------------------

    def predict(self, conn: int, data: bytes) -> None:
        """Walk the lines ``data`` completes, as the documented protocol says."""
        link = self.links[conn]
        link.partial += data
        *lines, link.partial = link.partial.split(b"\n")
        for line in lines:
            if not line.strip() or link.closed:
                continue
            try:
                frame = decode_client_frame(line)
            except ProtocolError:
                link.expected += 1  # invalid
                continue
            if isinstance(frame, Subscribe) and link.ready:
                link.window = frame.window
                continue
            link.expected += 1
            if not link.ready:
                if isinstance(frame, Hello) and self.welcomes(frame):
                    link.ready = True
                    link.agent = frame.agent
                continue
            if isinstance(frame, Send):
                session = self.session_of_conn.get(conn)
                if session is not None and frame.seq == self.last_seq.get(session, 0) + 1:
                    self.last_seq[session] = frame.seq

    def welcomes(self, hello: Hello) -> bool:
        """A hello this model expects to be welcomed (a resume only of a known session)."""
        credential = self.creds.get(hello.agent)
        if credential is None or hello.credential != credential.reveal():
            return False
        return hello.resume is None or hello.resume in self.core.sessions

    def feed(self, conn: int, data: bytes, cuts: list[int]) -> None:
        points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
        for start, end in itertools.pairwise(points):
            link = self.links[conn]
            if link.closed:
                return
            piece = data[start:end]
            before = {s: self.core.sessions[s].last_seq for s in self.core.sessions}
            effects = self.core.receive(conn, piece, self.now)
            # The model walks the same lines; a hello's session is known from
            # the welcome, so the effects are applied line-wise below.
            self.apply_and_predict(conn, piece, effects, before)

    def apply_and_predict(
        self, conn: int, piece: bytes, effects: list[Any], before: dict[str, int]
    ) -> None:
        # Welcomes first (the model needs the session a send belongs to), then the walk.
        for effect in effects:
            if isinstance(effect, Reply) and isinstance(effect.frame, Welcome):
                self.session_of_conn[conn] = effect.frame.session
                self.last_seq.setdefault(effect.frame.session, effect.frame.last_seq)
        self.predict(conn, piece)
        self.apply(effects)
        link = self.links[conn]
        for session, record in self.core.sessions.items():
            assert record.last_seq >= before.get(session, 0), "the seq high-water mark fell"
        session = self.session_of_conn.get(conn)
        if session is not None and not link.unsure:
            assert self.core.sessions[session].last_seq == self.last_seq[session], (
                "the seq rule moved the mark otherwise than last+1"
            )
        elif session is not None:
            self.last_seq[session] = self.core.sessions[session].last_seq

    # --- rules ---------------------------------------------------------------------------

    @precondition(lambda self: len(self.open_links()) < 4)
    @rule(agent=st.sampled_from(AGENTS), hello=st.sampled_from([True, True, True, False]))
    def connect(self, agent: str, hello: bool) -> None:
        """A new connection; most say hello right away."""
        conn = next(self.ids)
        self.links[conn] = Link()
        self.apply(self.core.connect(conn, PEER, self.now))
        if hello and not self.links[conn].closed:
            frame = Hello(agent=agent, credential=self.creds[agent].reveal())
            self.feed(conn, encode(frame), [])

    def open_links(self) -> list[int]:
        return [conn for conn, link in self.links.items() if not link.closed]

    def ready_links(self) -> list[int]:
        return [conn for conn, link in self.links.items() if link.ready and not link.closed]

    @precondition(lambda self: bool(self.ready_links()))
    @rule(data=st.data(), window=st.integers(1, 4))
    def subscribe(self, data: st.DataObject, window: int) -> None:
        conn = data.draw(st.sampled_from(self.ready_links()))
        self.feed(conn, encode(Subscribe(window=window)), [])

    @precondition(lambda self: bool(self.open_links()))
    @rule(
        data=st.data(),
        agent=st.sampled_from(AGENTS),
        right=st.sampled_from([True, True, True, False]),
        resume=st.booleans(),
    )
    def hello(self, data: st.DataObject, agent: str, right: bool, resume: bool) -> None:
        conn = data.draw(st.sampled_from(self.open_links()))
        known = [s for s, rec in self.core.sessions.items() if rec.agent == agent]
        frame = Hello(
            agent=agent,
            credential=self.creds[agent].reveal() if right else "wrong",
            resume=data.draw(st.sampled_from(known)) if resume and known else None,
        )
        self.feed(conn, encode(frame), [])

    @precondition(lambda self: bool(self.ready_links()))
    @rule(
        data=st.data(),
        deltas=st.lists(st.sampled_from([-2, 0, 1, 1, 1, 1, 3]), min_size=1, max_size=5),
        cuts=st.lists(st.integers(0, 500), max_size=4),
    )
    def sends(self, data: st.DataObject, deltas: list[int], cuts: list[int]) -> None:
        """Consecutive sends in one write (decided together), numbered from the
        model's mark: right (+1), replays and gaps."""
        conn = data.draw(st.sampled_from(self.ready_links()))
        link = self.links[conn]
        session = self.session_of_conn.get(conn)
        mark = self.last_seq.get(session, 0) if session else 0
        to = "alice" if link.agent == "bob" else "bob"
        lines = []
        for delta in deltas:
            seq = max(1, mark + delta)
            if seq == mark + 1:
                mark = seq
            lines.append(encode(Send(seq=seq, to=to, body=data.draw(st.text(max_size=20)))))
        self.feed(conn, b"".join(lines), cuts)

    @precondition(lambda self: bool(self.open_links()))
    @rule(
        data=st.data(),
        frames=st.lists(
            st.one_of(
                st.builds(Fetch, limit=st.integers(1, 5)),
                st.builds(Subscribe, window=st.integers(1, 4)),
                st.builds(ListAgents),
                st.builds(Ping),
                st.just(Bye()),
            ).map(encode)
            | st.binary(max_size=30)
            | st.sampled_from([b"\n", b"{}\n", b'{"type":"send","seq":1}\n', b"[" * 300 + b"\n"]),
            min_size=1,
            max_size=5,
        ),
        cuts=st.lists(st.integers(0, 300), max_size=4),
    )
    def other_frames(self, data: st.DataObject, frames: list[bytes], cuts: list[int]) -> None:
        conn = data.draw(st.sampled_from(self.open_links()))
        self.feed(conn, b"".join(frames), cuts)

    @precondition(lambda self: any(link.inflight for link in self.links.values()))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from([c for c, link in self.links.items() if link.inflight]))
        link = self.links[conn]
        if link.closed:
            link.inflight.clear()
            return
        ids = data.draw(st.lists(st.sampled_from(sorted(link.inflight)), min_size=1, max_size=4))
        link.inflight -= set(ids)
        self.feed(conn, encode(Ack(ids=ids)), [])

    @precondition(lambda self: bool(self.waiting))
    @rule(count=st.integers(1, 5))
    def store_answers(self, count: int) -> None:
        for _ in range(min(count, len(self.waiting))):
            persist = self.waiting.popleft()
            then = persist.then
            for message in persist.messages:  # committed with the batch
                size = len(message.body.encode())
                self.stored[message.id] = (message.recipient, message.sender, size)
            result: object = None
            if isinstance(then, AckDurable):  # the recipient's own rows go: (sender, bytes)
                rows = []
                for mid in dict.fromkeys(then.ids):
                    row = self.stored.get(mid)
                    if row is not None and row[0] == then.agent:
                        del self.stored[mid]
                        rows.append((row[1], row[2]))
                result = rows
            elif isinstance(then, FetchRead):
                result = ([], 0)
            elif isinstance(then, TopUpRead):
                result = []
            assert then is not None
            self.apply(self.core.persisted(then, result, self.now))

    @rule(seconds=st.sampled_from([0.001, 0.5, 3.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.core.tick(self.now))

    @precondition(lambda self: bool(self.open_links()))
    @rule(data=st.data())
    def peer_leaves(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self.open_links()))
        link = self.links[conn]
        link.closed = link.peer_left = link.unsure = True
        self.apply(self.core.disconnected(conn, self.now))

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def one_answer_per_line(self) -> None:
        for conn, link in self.links.items():
            assert link.answers <= link.expected, (conn, link)
            if not link.closed and not self.waiting:
                assert link.answers == link.expected, (conn, link)


CoreMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestRelayCore = CoreMachine.TestCase
