"""The agent session's state table, pair by pair: what ``next_event`` hands out
for every (phase, line) combination, plus the seq rule and the byte-level edges.

The expectations below are written out by hand, not derived from ``ALLOWED``
or ``WRONG_PHASE``: a change to the table must show up here as a failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ccc_relay.protocol.codec import encode
from ccc_relay.protocol.errors import ErrorCode, Refusal
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
from ccc_relay.protocol.session import AgentSession, Phase, Rejected, seq_refusal

CAP = 64 * 1024  # the session's line cap in these tests

HELLO = Hello(agent="alice", credential="ccc1.secret")
SEND = Send(seq=3, to="bob", body="hi")
ACK = Ack(ids=["m_abcdefgh1"])
FETCH = Fetch(limit=5)
SUBSCRIBE = Subscribe(window=8)
AGENTS = ListAgents()
PING = Ping(data="x")
BYE = Bye()


def session_in(phase: Phase) -> AgentSession:
    session = AgentSession(CAP)
    if phase is not Phase.HELLO:
        session.authenticated("alice", "s_abcdefgh12", wants_signatures=False)
    if phase is Phase.CLOSED:
        session.close()
    assert session.phase is phase
    return session


@dataclass(frozen=True)
class Frame:
    """``next_event`` returns the frame itself (equal to the one encoded)."""

    frame: object


@dataclass(frozen=True)
class Refused:
    code: ErrorCode
    fatal: bool
    seq: int | None


@dataclass(frozen=True)
class Nothing:
    """``next_event`` returns None (a blank line, or a closed session)."""


AUTH_REQUIRED = Refused(ErrorCode.AUTH_REQUIRED, fatal=True, seq=None)
ALREADY = Refused(ErrorCode.INVALID, fatal=False, seq=None)
INVALID = Refused(ErrorCode.INVALID, fatal=False, seq=None)

# name -> (line, {phase: expected})
LINES: dict[str, tuple[bytes, dict[Phase, object]]] = {
    "hello": (
        encode(HELLO),
        {Phase.HELLO: Frame(HELLO), Phase.READY: ALREADY, Phase.CLOSED: Nothing()},
    ),
    "send": (
        encode(SEND),
        {
            Phase.HELLO: Refused(ErrorCode.AUTH_REQUIRED, fatal=True, seq=3),
            Phase.READY: Frame(SEND),
            Phase.CLOSED: Nothing(),
        },
    ),
    "ack": (
        encode(ACK),
        {Phase.HELLO: AUTH_REQUIRED, Phase.READY: Frame(ACK), Phase.CLOSED: Nothing()},
    ),
    "fetch": (
        encode(FETCH),
        {Phase.HELLO: AUTH_REQUIRED, Phase.READY: Frame(FETCH), Phase.CLOSED: Nothing()},
    ),
    "subscribe": (
        encode(SUBSCRIBE),
        {Phase.HELLO: AUTH_REQUIRED, Phase.READY: Frame(SUBSCRIBE), Phase.CLOSED: Nothing()},
    ),
    "agents": (
        encode(AGENTS),
        {Phase.HELLO: AUTH_REQUIRED, Phase.READY: Frame(AGENTS), Phase.CLOSED: Nothing()},
    ),
    "ping": (
        encode(PING),
        {Phase.HELLO: AUTH_REQUIRED, Phase.READY: Frame(PING), Phase.CLOSED: Nothing()},
    ),
    "bye": (
        encode(BYE),
        {Phase.HELLO: AUTH_REQUIRED, Phase.READY: Frame(BYE), Phase.CLOSED: Nothing()},
    ),
    # Lines that are not frames are `invalid` (not fatal) in both live phases,
    # before the phase is even looked at -- as before the redesign.
    "garbage": (
        b"this is not json at all\n",
        {Phase.HELLO: INVALID, Phase.READY: INVALID, Phase.CLOSED: Nothing()},
    ),
    "invalid send object (seq salvaged)": (
        b'{"type":"send","seq":7,"to":"bob"}\n',  # no body
        {
            Phase.HELLO: Refused(ErrorCode.INVALID, fatal=False, seq=7),
            Phase.READY: Refused(ErrorCode.INVALID, fatal=False, seq=7),
            Phase.CLOSED: Nothing(),
        },
    ),
    "invalid send object (seq 0 not salvaged)": (
        b'{"type":"send","seq":0,"to":"bob","body":"x"}\n',
        {Phase.HELLO: INVALID, Phase.READY: INVALID, Phase.CLOSED: Nothing()},
    ),
    "unknown frame type": (
        b'{"type":"op","seq":4}\n',
        {Phase.HELLO: INVALID, Phase.READY: INVALID, Phase.CLOSED: Nothing()},
    ),
    "unknown field": (
        b'{"type":"ping","admin":true}\n',
        {Phase.HELLO: INVALID, Phase.READY: INVALID, Phase.CLOSED: Nothing()},
    ),
    "not an object": (
        b"[1,2,3]\n",
        {Phase.HELLO: INVALID, Phase.READY: INVALID, Phase.CLOSED: Nothing()},
    ),
    "bad utf-8": (
        b'{"type":"ping","data":"\xff\xfe"}\n',
        {Phase.HELLO: INVALID, Phase.READY: INVALID, Phase.CLOSED: Nothing()},
    ),
    "blank line": (
        b"  \t \n",
        {Phase.HELLO: Nothing(), Phase.READY: Nothing(), Phase.CLOSED: Nothing()},
    ),
    "empty line": (
        b"\n",
        {Phase.HELLO: Nothing(), Phase.READY: Nothing(), Phase.CLOSED: Nothing()},
    ),
}

CASES = [pytest.param(phase, name, id=f"{phase.value}-{name}") for name in LINES for phase in Phase]


def test_the_table_covers_every_phase_and_every_client_frame_type() -> None:
    assert set(Phase) == {Phase.HELLO, Phase.READY, Phase.CLOSED}
    for _line, expected in LINES.values():
        assert set(expected) == set(Phase)
    framed = {
        type(e.frame) for _line, x in LINES.values() for e in x.values() if isinstance(e, Frame)
    }
    assert framed == {Hello, Send, Ack, Fetch, Subscribe, ListAgents, Ping, Bye}


@pytest.mark.parametrize(("phase", "name"), CASES)
def test_state_table(phase: Phase, name: str) -> None:
    line, expectations = LINES[name]
    expected = expectations[phase]
    session = session_in(phase)
    assert session.receive_data(line, 0.0) is None
    event = session.next_event()
    if isinstance(expected, Frame):
        assert event == expected.frame
        assert type(event) is type(expected.frame)
    elif isinstance(expected, Refused):
        assert isinstance(event, Rejected), event
        assert (event.refusal.code, event.refusal.fatal, event.seq) == (
            expected.code,
            expected.fatal,
            expected.seq,
        )
        assert event.refusal.message
    else:
        assert event is None
    # One line, one event: nothing is left over, and the phase did not move.
    assert session.next_event() is None
    assert session.phase is phase


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
def test_a_too_long_line_is_refused_by_receive_data(phase: Phase) -> None:
    session = session_in(phase)
    refusal = session.receive_data(b"x" * (CAP + 1), 0.0)  # no newline: refused while arriving
    if phase is Phase.CLOSED:
        assert refusal is None  # bytes after the close are ignored
    else:
        assert refusal is not None
        assert (refusal.code, refusal.fatal) == (ErrorCode.TOO_LARGE, True)
    assert session.next_event() is None


@pytest.mark.parametrize("phase", [Phase.HELLO, Phase.READY], ids=lambda p: p.value)
def test_a_line_of_exactly_the_cap_is_decoded_not_refused(phase: Phase) -> None:
    session = session_in(phase)
    line = b'{"type":"ping","data":"' + b"y" * (CAP - 25) + b'"}'
    assert len(line) <= CAP
    assert session.receive_data(line + b"\n", 0.0) is None
    event = session.next_event()
    # Too long for a ping's data, but an invalid frame, not a too_large line.
    assert isinstance(event, Rejected) and event.refusal.code is ErrorCode.INVALID


# --- the seq rule ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "seq", "code"),
    [
        (0, 1, None),
        (5, 6, None),
        (2**40, 2**40 + 1, None),
        (5, 5, ErrorCode.REPLAY),
        (5, 4, ErrorCode.REPLAY),
        (5, 1, ErrorCode.REPLAY),
        (0, 0, ErrorCode.REPLAY),
        (5, 7, ErrorCode.OUT_OF_ORDER),
        (0, 2, ErrorCode.OUT_OF_ORDER),
        (5, 1000, ErrorCode.OUT_OF_ORDER),
    ],
)
def test_seq_rule(last: int, seq: int, code: ErrorCode | None) -> None:
    refusal = seq_refusal(last, seq)
    if code is None:
        assert refusal is None
    else:
        assert isinstance(refusal, Refusal)
        assert refusal.code is code
        assert refusal.fatal is False  # the client may go on with the right seq
        assert str(last) in refusal.message or str(last + 1) in refusal.message


# --- one read, several lines; lines split across reads ---------------------------------


def test_a_hello_and_a_send_in_one_read_the_send_is_judged_after_the_hello() -> None:
    session = AgentSession(CAP)
    assert session.receive_data(encode(HELLO) + encode(SEND), 0.0) is None
    assert session.next_event() == HELLO
    session.authenticated("alice", "s_abcdefgh12", wants_signatures=False)
    assert session.next_event() == SEND  # judged in READY, not in the phase of the read
    assert session.next_event() is None


def test_a_send_after_a_hello_that_did_not_authenticate_is_auth_required() -> None:
    session = AgentSession(CAP)
    session.receive_data(encode(HELLO) + encode(SEND), 0.0)
    assert session.next_event() == HELLO
    # The core refused the hello without closing (e.g. a failed resume): still HELLO.
    event = session.next_event()
    assert isinstance(event, Rejected)
    assert (event.refusal.code, event.refusal.fatal, event.seq) == (
        ErrorCode.AUTH_REQUIRED,
        True,
        3,
    )


def test_a_close_drops_the_lines_still_waiting() -> None:
    session = session_in(Phase.READY)
    session.receive_data(encode(PING) + encode(BYE) + encode(PING), 0.0)
    assert session.next_event() == PING
    assert session.next_event() == BYE
    session.close()
    assert session.next_event() is None
    assert session.receive_data(encode(PING), 0.0) is None
    assert session.next_event() is None


STREAM = encode(HELLO) + b"\n" + encode(SEND) + b"  \n" + encode(PING) + b"garbage\n" + encode(BYE)


def drive(chunks: list[bytes]) -> list[object]:
    """Feed ``chunks`` as successive reads; authenticate on the hello, as the core does."""
    session = AgentSession(CAP)
    events: list[object] = []
    for chunk in chunks:
        assert session.receive_data(chunk, 0.0) is None
        while (event := session.next_event()) is not None:
            events.append(event)
            if isinstance(event, Hello):
                session.authenticated(event.agent, "s_abcdefgh12", wants_signatures=False)
    assert session.buffered == 0
    return events


EXPECTED_STREAM = [HELLO, SEND, PING, Rejected(Refusal(ErrorCode.INVALID, "?")), BYE]


def same_events(got: list[object]) -> None:
    assert len(got) == len(EXPECTED_STREAM), got
    for event, want in zip(got, EXPECTED_STREAM, strict=True):
        if isinstance(want, Rejected):
            assert isinstance(event, Rejected)
            assert (event.refusal.code, event.seq) == (ErrorCode.INVALID, None)
        else:
            assert event == want


def test_the_stream_in_one_read() -> None:
    same_events(drive([STREAM]))


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_bytes_split_at_every_position(cut: int) -> None:
    same_events(drive([STREAM[:cut], STREAM[cut:]]))


def test_bytes_one_at_a_time() -> None:
    same_events(drive([STREAM[i : i + 1] for i in range(len(STREAM))]))


def test_an_unfinished_line_is_buffered_not_decoded() -> None:
    session = session_in(Phase.READY)
    line = encode(PING)
    session.receive_data(line[:-1], 0.0)
    assert session.next_event() is None
    assert session.buffered == len(line) - 1
    session.receive_data(b"\n", 0.0)
    assert session.next_event() == PING
    assert session.buffered == 0


# --- deep nesting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 5000,
        b'{"a":' * 5000,
        b'{"type":"send","seq":9,"to":"bob","body":' + b"[" * 5000,
        b'{"type":"send","seq":9,"to":"bob","body":"x","thread":' + b'{"a":' * 5000,
    ],
    ids=["arrays", "objects", "send-with-deep-body", "send-with-deep-thread"],
)
@pytest.mark.parametrize("phase", [Phase.HELLO, Phase.READY], ids=lambda p: p.value)
def test_deep_nesting_is_invalid_not_a_recursion_error(phase: Phase, line: bytes) -> None:
    session = session_in(phase)
    assert session.receive_data(line + b"\n", 0.0) is None
    event = session.next_event()
    assert isinstance(event, Rejected)
    assert (event.refusal.code, event.refusal.fatal, event.seq) == (ErrorCode.INVALID, False, None)
    assert session.next_event() is None


# --- the delivery window and the ids in flight ----------------------------------------------


def message(n: int) -> Message:
    return Message(id=f"m_abcdefgh{n}", sender="bob", to="alice", sent_at=1.0, body="b", delivery=n)


def test_window_room_and_inflight() -> None:
    session = session_in(Phase.READY)
    assert (session.subscribed, session.room) == (False, 0)
    session.subscribe(3)
    assert (session.subscribed, session.window, session.room) == (True, 3, 3)
    for n in (1, 2, 3):
        assert session.deliver(message(n)) == message(n)
    assert session.room == 0
    assert session.inflight == {"m_abcdefgh1": 1, "m_abcdefgh2": 2, "m_abcdefgh3": 3}
    session.settle(["m_abcdefgh2", "m_unknown000"])
    assert session.room == 1
    assert session.close() == {"m_abcdefgh1": 1, "m_abcdefgh3": 3}
    assert session.inflight == {}
    assert session.phase is Phase.CLOSED
