"""The client's sans-IO session: bytes in, answers matched to requests, in microseconds.

No socket and no relay: requests are made on a ``ClientSession``, the relay's
frames are fed as bytes, and what comes out (events, the inbox) is compared
with tables.
"""

from __future__ import annotations

import ast
import itertools
import random
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from ccc_relay.protocol import client_session
from ccc_relay.protocol.client_session import ClientSession, Notice, Reply, Request, SeenIds
from ccc_relay.protocol.codec import FrameTooLarge, decode_client_frame, encode
from ccc_relay.protocol.frames import (
    Accepted,
    Acked,
    AgentInfo,
    AgentList,
    Error,
    Fetched,
    Goodbye,
    Held,
    Hello,
    Message,
    Pong,
    RelayFrame,
    Send,
    Welcome,
)


def message(n: int) -> Message:
    return Message(
        id=f"m_test{n:04d}",
        sender="alice",
        to="bob",
        sent_at=1.0 + n,
        body=f"body {n}",
        delivery=n,
    )


M1, M2, M3 = message(1), message(2), message(3)
WELCOME = Welcome(
    session="s_test0001",
    agent="bob",
    expires_at=2.0,
    last_seq=0,
    max_message_size=1000,
    rate_limit_per_minute=60.0,
)
AGENTS = AgentList(agents=[AgentInfo(name="alice", online=True, may_send=True)])


def accepted(seq: int) -> Accepted:
    return Accepted(seq=seq, id=f"m_sent{seq:04d}")


def error(seq: int | None = None, code: str = "forbidden") -> Error:
    return Error(code=code, message="no", seq=seq)


def stream(*frames: RelayFrame) -> bytes:
    return b"".join(encode(f) for f in frames)


def drain(session: ClientSession) -> list[Reply | Notice]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


REQUESTS: dict[str, Callable[[ClientSession], tuple[Request, bytes]]] = {
    "send": lambda s: s.send("alice", "hi"),
    "fetch": lambda s: s.fetch(),
    "ack": lambda s: s.ack(["m_test0001"]),
    "agents": lambda s: s.agents(),
    "ping": lambda s: s.ping(),
}


def issue(session: ClientSession, labels: list[str]) -> dict[str, Request]:
    """Make the requests named by ``labels`` ("send1", "ping2"...), in order."""
    return {label: REQUESTS[label.rstrip("0123456789")](session)[0] for label in labels}


def summary(event: Reply | Notice, names: dict[Request, str]) -> tuple[object, ...]:
    """(whose, what) -- and the message ids a fetch's answer carried."""
    frame = event.frame
    what = frame.code if isinstance(frame, Error) else type(frame).__name__
    if isinstance(event, Notice):
        return ("notice", what)
    if event.messages:
        return (names[event.request], what, [m.id for m in event.messages])
    return (names[event.request], what)


# (requests made, frames the relay sends, events expected, ids left in the inbox)
MATCHING = {
    "sends are answered by seq, in any order": (
        ["send1", "send2"],
        [accepted(2), accepted(1)],
        [("send2", "Accepted"), ("send1", "Accepted")],
        [],
    ),
    "held answers a send too": (
        ["send1"],
        [Held(seq=1, id="m_sent0001")],
        [("send1", "Held")],
        [],
    ),
    "an answer goes to the oldest request of its kind": (
        ["ping1", "fetch1", "ping2", "ack1", "agents1"],
        [Pong(), Acked(count=1), AGENTS, Fetched(count=0, pending=0), Pong()],
        [
            ("ping1", "Pong"),
            ("ack1", "Acked"),
            ("agents1", "AgentList"),
            ("fetch1", "Fetched"),
            ("ping2", "Pong"),
        ],
        [],
    ),
    "a message between a send and its answer goes to the inbox": (
        ["send1"],
        [M1, accepted(1)],
        [("send1", "Accepted")],
        [M1.id],
    ),
    "a message between a ping and its pong goes to the inbox": (
        ["ping1"],
        [M1, Pong(), M2],
        [("ping1", "Pong")],
        [M1.id, M2.id],
    ),
    "a fetch's messages come with its fetched": (
        ["fetch1"],
        [M1, M2, Fetched(count=2, pending=0)],
        [("fetch1", "Fetched", [M1.id, M2.id])],
        [],
    ),
    "a message after fetched stays in the inbox": (
        ["fetch1"],
        [M1, Fetched(count=1, pending=0), M2],
        [("fetch1", "Fetched", [M1.id])],
        [M2.id],
    ),
    "an error with seq N refuses send N": (
        ["send1", "send2", "ping1"],
        [error(seq=2), accepted(1), Pong()],
        [("send2", "forbidden"), ("send1", "Accepted"), ("ping1", "Pong")],
        [],
    ),
    "an error without seq refuses the oldest request that is not a send": (
        ["send1", "fetch1", "ping1"],
        [error(code="rate_limited"), accepted(1), Pong()],
        [("fetch1", "rate_limited"), ("send1", "Accepted"), ("ping1", "Pong")],
        [],
    ),
    "an error without seq and only sends outstanding is a notice": (
        ["send1"],
        [error(code="session_expired")],
        [("notice", "session_expired")],
        [],
    ),
    "an error without seq and nothing outstanding is a notice": (
        [],
        [error(code="quarantined")],
        [("notice", "quarantined")],
        [],
    ),
    "an error with a seq no send has is dropped": (
        ["send1"],
        [error(seq=7), accepted(1)],
        [("send1", "Accepted")],
        [],
    ),
    "answers nobody waits for are dropped": (
        ["ping1"],
        [accepted(3), Fetched(count=0, pending=0), Pong(), Pong()],
        [("ping1", "Pong")],
        [],
    ),
    "bye is a notice": (
        ["ping1"],
        [Goodbye(reason="shutdown")],
        [("notice", "Goodbye")],
        [],
    ),
    "repeated deliveries are dropped": (
        [],
        [M1, M1, M2, M1, M2],
        [],
        [M1.id, M2.id],
    ),
    "a repeat inside a fetch's answer is dropped": (
        ["fetch1"],
        [M1, M1, M2, Fetched(count=3, pending=0), M2, M1],
        [("fetch1", "Fetched", [M1.id, M2.id])],
        [],
    ),
}


@pytest.mark.parametrize(("labels", "frames", "expected", "inbox"), MATCHING.values(), ids=MATCHING)
def test_answers_are_matched_to_their_requests(
    labels: list[str],
    frames: list[RelayFrame],
    expected: list[tuple[object, ...]],
    inbox: list[str],
) -> None:
    session = ClientSession()
    requests = issue(session, labels)
    names = {request: label for label, request in requests.items()}
    session.receive_data(stream(*frames))
    assert [summary(e, names) for e in drain(session)] == expected
    assert [m.id for m in session.take_messages()] == inbox


def _conversation(chunks: list[bytes]) -> tuple[list[tuple[object, ...]], list[str]]:
    session = ClientSession()
    requests = issue(session, ["ping1", "fetch1", "send1", "agents1"])
    names = {request: label for label, request in requests.items()}
    events = []
    for chunk in chunks:
        session.receive_data(chunk)
        events += [summary(e, names) for e in drain(session)]
    return events, [m.id for m in session.take_messages()]


CONVERSATION = stream(M1, Pong(), M2, M1, Fetched(count=2, pending=0), accepted(1), M3, AGENTS, M2)


EXPECTED = (
    [
        ("ping1", "Pong"),
        ("fetch1", "Fetched", [M1.id, M2.id]),
        ("send1", "Accepted"),
        ("agents1", "AgentList"),
    ],
    [M3.id],
)


def _random_chunks(seed: int) -> list[bytes]:
    data = CONVERSATION
    cuts = sorted(random.Random(seed).sample(range(1, len(data)), 12))
    return [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]


SPLITS = {
    "whole": [CONVERSATION],
    "byte by byte": [CONVERSATION[i : i + 1] for i in range(len(CONVERSATION))],
    **{f"at random places ({seed})": _random_chunks(seed) for seed in range(3)},
}


@pytest.mark.parametrize("chunks", SPLITS.values(), ids=SPLITS)
def test_bytes_split_anywhere_give_the_same_answers(chunks: list[bytes]) -> None:
    assert _conversation(chunks) == EXPECTED


def test_bytes_split_in_two_at_every_place_give_the_same_answers() -> None:
    data = CONVERSATION
    for at in range(1, len(data)):
        assert _conversation([data[:at], data[at:]]) == EXPECTED, f"split at {at}"


def test_sends_are_numbered_from_the_welcomes_last_seq() -> None:
    session = ClientSession()
    hello, data = session.hello("bob", "secret")
    assert decode_client_frame(data) == Hello(agent="bob", credential="secret", show_delivered=True)
    welcome = msgspec.structs.replace(WELCOME, last_seq=41)  # the session had sent 41
    session.receive_data(encode(welcome))
    assert drain(session) == [Reply(hello, welcome)]
    seqs = []
    for _ in range(3):
        request, data = session.send("alice", "hi")
        frame = decode_client_frame(data)
        assert isinstance(frame, Send) and frame.seq == request.seq
        seqs.append(frame.seq)
    assert seqs == [42, 43, 44] and session.last_seq == 44


def test_an_abandoned_fetch_keeps_its_place_and_leaves_the_inbox_alone() -> None:
    session = ClientSession()
    first, _ = session.fetch()
    second, _ = session.fetch()
    session.abandon(first)  # e.g. its caller timed out
    assert session.fetching  # the second is still waiting
    session.receive_data(stream(M1, Fetched(count=1, pending=0), M2))
    assert drain(session) == []  # the late answer was the first fetch's, and is dropped
    assert [m.id for m in session.inbox] == [M1.id, M2.id]
    session.receive_data(stream(Fetched(count=0, pending=0)))
    assert drain(session) == [Reply(second, Fetched(count=0, pending=0), (M1, M2))]
    assert not session.fetching


def test_abandoning_an_answered_request_changes_nothing() -> None:
    session = ClientSession()
    ping, _ = session.ping()
    session.receive_data(stream(Pong()))
    assert drain(session) == [Reply(ping, Pong())]
    session.abandon(ping)
    later, _ = session.ping()
    session.receive_data(stream(Pong()))
    assert drain(session) == [Reply(later, Pong())]


def test_a_new_connection_forgets_requests_and_partial_lines_but_not_seen_ids() -> None:
    session = ClientSession()
    session.ping()
    session.receive_data(stream(M1) + encode(M2)[:10])  # M1, and half of M2
    assert drain(session) == []  # M1 is taken in
    session.connection_closed()
    assert [m.id for m in session.inbox] == [M1.id]  # taken in, so not lost
    session.receive_data(stream(Pong(), M1, M2))  # the relay sends M1 again on the new one
    assert drain(session) == []  # that pong answers nothing of this connection
    assert [m.id for m in session.take_messages()] == [M1.id, M2.id]


def test_seen_ids_are_bounded_oldest_forgotten_first() -> None:
    seen = SeenIds(capacity=2)
    assert [seen.first_time(i) for i in ("a", "b", "a", "c")] == [True, True, False, True]
    assert seen.first_time("a")  # forgotten: three ids did not fit in two
    assert not seen.first_time("c")


def test_every_message_is_verified_before_the_inbox_sees_it() -> None:
    checked: list[str] = []

    def verify(message: Message) -> None:
        checked.append(message.id)
        if message.id == M2.id:
            raise ValueError("bad signature")

    session = ClientSession(verify=verify)
    _, data = session.hello("bob", "secret")
    assert decode_client_frame(data) == Hello(
        agent="bob", credential="secret", signatures=True, show_delivered=True
    )
    ping, _ = session.ping()
    session.receive_data(stream(M1, Pong(), M2, M3))
    assert session.next_event() == Reply(ping, Pong())  # what came before is kept
    with pytest.raises(ValueError, match="bad signature"):
        session.next_event()
    assert checked == [M1.id, M2.id]
    assert [m.id for m in session.inbox] == [M1.id]


def test_a_line_over_the_cap_is_refused_while_it_arrives() -> None:
    session = ClientSession(line_cap=64)
    with pytest.raises(FrameTooLarge):
        session.receive_data(b'{"type":"pong","data":"' + b"x" * 100)


def test_the_session_module_does_no_io() -> None:
    """No clock, socket, asyncio or logging: only the protocol package and msgspec."""
    tree = ast.parse(Path(client_session.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    allowed_stdlib = {"__future__", "collections", "collections.abc", "dataclasses", "typing"}
    outside = {
        name
        for name in imported
        if name not in allowed_stdlib
        and name != "msgspec"
        and not name.startswith("ccc_relay.protocol.")
    }
    assert outside == set()
