"""Stateful fuzzing of the sans-IO agent session (``protocol/session.py``).

A Hypothesis ``RuleBasedStateMachine`` plays a relay core around one
``AgentSession``: it feeds bytes (valid frames of every kind, invalid lines,
random bytes, long unfinished lines), split at random points and read at a
clock it moves itself; it answers hellos (welcoming most, refusing some),
judges sends by the seq rule (``seq_refusal``), pushes messages into the
window and settles acks, and closes the session on ``bye``, on every fatal
refusal and at random (the peer went away). After every step:

* nothing raised (every rule runs the session's own methods bare);
* every complete, non-blank line fed got exactly one event -- a frame or a
  ``Rejected`` -- in the order fed, until the session closed; blank lines none;
  a closed session yields nothing and takes no bytes;
* a frame is handed out only in a phase whose row of ``ALLOWED`` names it; a
  line that is a frame of the wrong phase is refused with that phase's
  ``WRONG_PHASE`` answer; a line that is no frame is ``invalid``, with the
  send's seq when one can be read (``salvage_seq``);
* the phase moves only hello -> ready -> closed (or hello -> closed);
* the seq high-water mark only grows, and by exactly one per send taken;
* the window is never negative and the driver never pushes past ``room``;
  ``inflight`` holds exactly the pushed, unsettled ids;
* every refusal carries one of the documented codes; a line past 64 KiB is
  refused ``too_large`` exactly when it shows no ``"send"`` tag, and
  ``too_slow`` only when it has been arriving, since its own first byte, for
  longer than the grace and slower than the rate.

Bounded for CI (``max_examples`` below, ~10 s). For a longer hunt::

    CCC_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/test_fuzz_session.py

Two deterministic tests at the end pin a bug this hunt found in the long-line
rate check: it was measured from the last complete line, not the line's own start.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ccc_relay.protocol.codec import decode_client_frame, encode, line_cap_for
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import (
    Ack,
    Bye,
    Fetch,
    Hello,
    ListAgents,
    Message,
    Ping,
    Send,
    Subscribe,
)
from ccc_relay.protocol.session import (
    ALLOWED,
    LINE_GRACE,
    LINE_STALL,
    MIN_LINE_RATE,
    SEND_TAG,
    SHORT_LINE_CAP,
    WRONG_PHASE,
    AgentSession,
    Phase,
    Rejected,
    salvage_seq,
    seq_refusal,
)

EXAMPLES = int(os.environ.get("CCC_FUZZ_EXAMPLES", "400"))
MAX_MESSAGE = 100_000
CAP = line_cap_for(MAX_MESSAGE)
# Codes a session (or the seq rule) may refuse with; anything else is a bug.
SESSION_CODES = {
    ErrorCode.INVALID,
    ErrorCode.AUTH_REQUIRED,
    ErrorCode.TOO_LARGE,
    ErrorCode.TOO_SLOW,
    ErrorCode.REPLAY,
    ErrorCode.OUT_OF_ORDER,
}
NEXT_PHASES = {
    Phase.HELLO: {Phase.HELLO, Phase.READY, Phase.CLOSED},
    Phase.READY: {Phase.READY, Phase.CLOSED},
    Phase.CLOSED: {Phase.CLOSED},
}

names = st.sampled_from(["alice", "bob", "carol", "mallory", "a" * 64])
message_ids = st.from_regex(r"m_[A-Za-z0-9_-]{8,12}", fullmatch=True)
texts = st.text(max_size=40)


def frames(seqs: st.SearchStrategy[int]) -> st.SearchStrategy[bytes]:
    """One encoded client frame of any kind (newline included)."""
    return st.one_of(
        st.builds(Hello, agent=names, credential=st.text(max_size=50)),
        st.builds(Send, seq=seqs, to=names, body=texts),
        st.builds(Ack, ids=st.lists(message_ids, min_size=1, max_size=4)),
        st.builds(Fetch, limit=st.integers(1, 1000)),
        st.builds(Subscribe, window=st.integers(1, 8)),
        st.builds(ListAgents),
        st.builds(Ping, data=st.none() | st.text(max_size=20)),
        st.builds(Bye),
    ).map(encode)


invalid_lines = st.one_of(
    st.sampled_from(
        [
            b'{"type":"send","seq":3,"to":"bob"}',  # a field missing: seq salvaged
            b'{"type":"send","seq":-1,"to":"bob","body":"x"}',
            b'{"type":"send","seq":1,"to":"../etc","body":"x"}',
            b'{"type":"hello","agent":"alice","credential":"c","extra":1}',
            b'{"type":"nope"}',
            b'{"type":"ack","ids":[]}',
            b"[" * 5000,
            b'{"type":"send","seq":' + b"9" * 400 + b',"to":"b","body":""}',
            b"\xff\xfe\x00",
            b'{"type":"ping","data":"\\ud800"}',
            b"null",
            b"   ",
            b"",
        ]
    ),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b),
).map(lambda line: line + b"\n")


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.session = AgentSession(CAP)
        self.now = 1_700_000_000.0
        self.partial = b""  # the model's unfinished line
        self.lines: deque[bytes] = deque()  # complete, non-blank, not yet handed out
        self.phase = Phase.HELLO
        self.last_seq = 0
        self.pushed: dict[str, int] = {}  # the model of inflight
        self.delivery = 0
        self.events = 0
        self.shrunk = False  # a later subscribe asked for a smaller window
        self.seen_phase = Phase.HELLO
        self.line_started = self.now  # when the model's unfinished line began to arrive
        self.last_byte = self.now  # when a byte of it last arrived

    @initialize()
    def start(self) -> None:
        assert self.session.phase is Phase.HELLO

    # --- bytes in --------------------------------------------------------------------

    def feed(self, data: bytes, cuts: list[int], step: float) -> None:
        """``data`` in pieces cut at ``cuts``, a read every ``step`` seconds,
        each drained like the core drains a read."""
        points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
        for start, end in itertools.pairwise(points):
            self.now += step
            self.read(data[start:end])
            if self.phase is Phase.CLOSED:
                return

    def read(self, piece: bytes) -> None:
        closed = self.phase is Phase.CLOSED
        refusal = self.session.receive_data(piece, self.now)
        if closed:
            assert refusal is None  # bytes after the close are ignored
            return
        fresh = not self.partial
        self.partial += piece
        *complete, self.partial = self.partial.split(b"\n")
        self.lines.extend(line for line in complete if line.strip())
        if complete or fresh:
            self.line_started = self.now  # the unfinished rest began with this read
        if self.partial:
            self.last_byte = self.now
        long_non_send = len(self.partial) > SHORT_LINE_CAP and SEND_TAG not in self.partial
        if refusal is not None:
            # Only for an unfinished line past the short cap; the core closes the
            # link at once (what else the read finished is never decided).
            assert refusal.fatal and refusal.code in (ErrorCode.TOO_LARGE, ErrorCode.TOO_SLOW)
            assert len(self.partial) > SHORT_LINE_CAP
            if refusal.code is ErrorCode.TOO_LARGE:
                # Past the short cap without a send tag, or past the line cap at all.
                assert long_non_send or len(self.partial) > CAP, (
                    "a long line carrying a send tag refused too_large under the line cap"
                )
            else:
                self.check_too_slow()
            self.close()
            return
        assert not long_non_send, "a long line without a send tag was not refused"
        assert self.session.buffered == len(self.partial)
        self.drain()

    def check_too_slow(self) -> None:
        """``too_slow`` only for a long line that has been arriving, since its own
        first byte, for longer than the grace and slower than the rate, or that
        has had no byte for longer than LINE_STALL."""
        if self.now - self.last_byte > LINE_STALL:
            return
        took = self.now - self.line_started
        assert took > LINE_GRACE, f"too_slow after {took}s"
        assert len(self.partial) < took * MIN_LINE_RATE

    def drain(self) -> None:
        """Take every event, as the core does: one at a time before the hello,
        a read's worth once ready; stop at a close."""
        while self.phase is not Phase.CLOSED:
            events = self.session.next_events()
            if not events:
                assert not self.lines, "a complete line got no event"
                return
            if self.phase is Phase.HELLO:
                assert len(events) == 1
            for event in events:
                self.judge(event)
                if self.phase is Phase.CLOSED:
                    return

    def judge(self, event: object) -> None:
        assert self.lines, "an event without a line"
        line = self.lines.popleft()
        self.events += 1
        try:
            frame = decode_client_frame(line)
        except ProtocolError as exc:
            assert isinstance(event, Rejected)
            assert event.refusal.code is ErrorCode.INVALID is exc.code
            assert event.seq == salvage_seq(line)
            return
        allowed = ALLOWED[self.phase]
        if not isinstance(frame, allowed):
            assert isinstance(event, Rejected)
            assert event.refusal == WRONG_PHASE[self.phase]
            assert event.seq == (frame.seq if isinstance(frame, Send) else None)
            if event.refusal.fatal:
                self.close()
            return
        assert event == frame and isinstance(event, allowed)
        self.react(event)

    def react(self, frame: object) -> None:
        """What the core does with a frame the session handed out."""
        if isinstance(frame, Hello):
            if frame.agent == "mallory":  # refused: fatal, like auth_failed
                self.close()
                return
            self.session.authenticated(frame.agent, "s_fuzzfuzzfuzz", wants_signatures=False)
            self.phase = Phase.READY
        elif isinstance(frame, Send):
            refusal = seq_refusal(self.last_seq, frame.seq)
            if refusal is None:
                assert frame.seq == self.last_seq + 1
                self.last_seq = frame.seq
            else:
                assert refusal.code in SESSION_CODES and not refusal.fatal
                expected = (
                    ErrorCode.REPLAY if frame.seq <= self.last_seq else ErrorCode.OUT_OF_ORDER
                )
                assert refusal.code is expected
        elif isinstance(frame, Ack):
            self.session.settle(frame.ids)
            for mid in frame.ids:
                self.pushed.pop(mid, None)
        elif isinstance(frame, Subscribe):
            if self.session.subscribed and frame.window < self.session.window:
                self.shrunk = True
            self.session.subscribe(frame.window)
        elif isinstance(frame, Bye):
            self.close()

    def close(self) -> None:
        back = self.session.close()
        assert back == self.pushed  # what was in flight goes back to the queue
        self.pushed = {}
        self.phase = Phase.CLOSED
        self.lines.clear()

    # --- rules ---------------------------------------------------------------------------

    @rule(
        data=st.lists(
            st.one_of(
                frames(st.integers(1, 12)),
                invalid_lines,
                st.binary(max_size=40),
                st.sampled_from([b"\n", b"\r\n", b" \t\n"]),
            ),
            min_size=1,
            max_size=8,
        ).map(b"".join),
        cuts=st.lists(st.integers(0, 10_000), max_size=6),
        step=st.sampled_from([0.0, 0.001, 0.5]),
    )
    def feed_lines(self, data: bytes, cuts: list[int], step: float) -> None:
        self.feed(data, cuts, step)

    @precondition(lambda self: self.phase is Phase.HELLO)
    @rule(hello=st.builds(Hello, agent=names.filter(lambda n: n != "mallory"), credential=texts))
    def say_hello(self, hello: Hello) -> None:
        self.feed(encode(hello), [], 0.01)

    @precondition(lambda self: self.phase is Phase.READY)
    @rule(window=st.integers(1, 8))
    def subscribe(self, window: int) -> None:
        self.feed(encode(Subscribe(window=window)), [], 0.001)

    @rule(
        data=st.data(),
        delta=st.sampled_from([-3, -1, 0, 1, 1, 1, 2, 50]),
        cuts=st.lists(st.integers(0, 200), max_size=3),
    )
    def send_with_seq(self, data: st.DataObject, delta: int, cuts: list[int]) -> None:
        """A send whose seq is right (last+1) or wrong (a replay, a gap)."""
        seq = max(1, self.last_seq + delta)
        body = data.draw(texts)
        self.feed(encode(Send(seq=seq, to="bob", body=body)), cuts, 0.001)

    @precondition(lambda self: bool(self.pushed))
    @rule(data=st.data())
    def ack_inflight(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.pushed)), min_size=1, max_size=4))
        self.feed(encode(Ack(ids=ids)), [], 0.001)

    @precondition(lambda self: self.phase is Phase.READY and self.session.subscribed)
    @rule(count=st.integers(1, 10))
    def push_messages(self, count: int) -> None:
        """The core pushes as many as the window has room for, no more."""
        for _ in range(min(count, self.session.room)):
            self.delivery += 1
            message = Message(
                id=f"m_fuzzfuzz{self.delivery:x}",
                sender="bob",
                to=self.session.agent or "",
                sent_at=self.now,
                body="hi",
                delivery=self.delivery,
            )
            assert self.session.deliver(message) is message
            self.pushed[message.id] = message.delivery

    @rule(
        tagged=st.booleans(),
        size=st.integers(SHORT_LINE_CAP - 100, SHORT_LINE_CAP + 5000),
        step=st.sampled_from([0.0, 0.01, 1.0, 3.0]),
    )
    def long_unfinished_line(self, tagged: bool, size: int, step: float) -> None:
        """Part of a long line: with a "send" tag it may grow to the cap; without
        one it is refused once past SHORT_LINE_CAP."""
        head = b'{"type":"send","seq":1,"to":"bob","body":"' if tagged else b'{"body":"'
        self.feed(head + b"x" * size, [len(head) + size // 2], step)

    @rule(seconds=st.sampled_from([0.1, 1.0, 2.5, 10.0]))
    def time_passes(self, seconds: float) -> None:
        """The core's tick: a long line that stopped arriving is refused."""
        self.now += seconds
        refusal = self.session.check_partial(self.now)
        if refusal is not None:
            assert self.phase is not Phase.CLOSED
            assert refusal.code is ErrorCode.TOO_SLOW and refusal.fatal
            assert len(self.partial) > SHORT_LINE_CAP
            self.check_too_slow()
            self.close()

    @rule()
    def peer_goes_away(self) -> None:
        self.close()
        assert self.session.next_event() is None
        assert self.session.next_events() == []

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def phase_follows_the_table(self) -> None:
        assert self.session.phase is self.phase
        assert self.session.ready is (self.phase is Phase.READY)
        assert self.phase in NEXT_PHASES[self.seen_phase]  # hello -> ready -> closed only
        self.seen_phase = self.phase

    @invariant()
    def window_is_sound(self) -> None:
        assert self.session.window >= 0
        assert self.session.inflight == self.pushed
        if not self.shrunk:
            assert self.session.room >= 0

    @invariant()
    def nothing_is_left_undecided(self) -> None:
        if self.phase is not Phase.CLOSED:
            assert not self.lines


SessionMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestAgentSession = SessionMachine.TestCase


# --- what the hunt found --------------------------------------------------------------------


def test_a_long_send_after_an_idle_pause_is_not_too_slow() -> None:
    """Reproduction: hello at t=1000, nothing for 10 s, then the first 256 KiB
    read of a 1 MB send at t=1010. The line began arriving at t=1010, so its
    rate is unknown yet (within LINE_GRACE); the session says it has been
    arriving for 10 s at 26 KiB/s and refuses it ``too_slow`` (fatal). On a
    connection whose first read is already past 64 KiB the clock starts at 0.0:
    "arriving for 1700000000s"."""
    session = AgentSession(line_cap_for(1_000_000))
    assert session.receive_data(encode(Hello(agent="alice", credential="c")), 1000.0) is None
    assert isinstance(session.next_event(), Hello)
    session.authenticated("alice", "s_fuzzfuzzfuzz", wants_signatures=False)
    line = encode(Send(seq=1, to="bob", body="x" * 1_000_000))
    assert session.receive_data(line[: 256 * 1024], 1010.0) is None


def test_a_real_relay_accepts_a_big_send_after_an_idle_pause(
    relay_factory: Callable[..., object],
) -> None:
    """The same bug end to end: an in-process relay with a clock moved by hand;
    alice says hello, the clock moves 10 s, she sends 500 kB at once. The relay
    refuses it ``too_slow`` and closes (the client sees a broken pipe)."""
    from tests.support import FakeClock, RunningRelay

    clock = FakeClock()
    relay: RunningRelay = relay_factory(clock)  # type: ignore[assignment]
    alice = relay.add_agent("alice")
    relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as client:
        clock.advance(10)
        client.send("bob", "x" * 500_000)
