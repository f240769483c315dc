"""The sans-IO protocol core: framing caps, strict schemas, never a crash."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccc_relay.protocol.codec import (
    ENVELOPE_ALLOWANCE,
    FrameTooLarge,
    LineBuffer,
    body_size,
    decode_client_frame,
    decode_relay_frame,
    encode,
    line_cap_for,
)
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import Ack, Fetch, Hello, Message, Send, Subscribe
from ccc_relay.protocol.names import agent_name_problem, is_agent_name


def test_line_buffer_joins_lines_split_across_chunks() -> None:
    buf = LineBuffer(100)
    assert buf.feed(b'{"a":') == []
    assert buf.feed(b'1}\n{"b"') == [b'{"a":1}']
    assert buf.feed(b":2}\n\n") == [b'{"b":2}', b""]
    assert buf.pending == 0


def test_line_buffer_accepts_exactly_the_cap_and_refuses_one_more() -> None:
    assert LineBuffer(10).feed(b"x" * 10 + b"\n") == [b"x" * 10]
    with pytest.raises(FrameTooLarge):
        LineBuffer(10).feed(b"x" * 11 + b"\n")


def test_line_buffer_refuses_an_unfinished_line_before_it_is_whole() -> None:
    buf = LineBuffer(1000)
    buf.feed(b"x" * 600)
    with pytest.raises(FrameTooLarge) as caught:
        buf.feed(b"x" * 600)  # no newline yet: refused while still arriving
    assert caught.value.code is ErrorCode.TOO_LARGE
    assert caught.value.fatal


def test_line_cap_fits_a_body_of_the_limit_even_fully_escaped() -> None:
    limit = 1000
    body = "\x01" * limit  # every byte escapes to six
    line = encode(Send(seq=1, to="bob", body=body))
    assert len(line) - 1 <= line_cap_for(limit)
    assert line_cap_for(limit) == limit * 6 + ENVELOPE_ALLOWANCE


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b'{"type":"send","seq":1,"to":"bob","body":"x","from":"eve"}',
         "'from' is not a field the relay knows"),
        (b'{"type":"send","seq":"1","to":"bob","body":"x"}',
         "'seq' must be a whole number, not text"),
        (b'{"type":"send","seq":1,"to":"bob"}', "'body' is missing"),
        (b'{"type":"send","seq":0,"to":"bob","body":"x"}', "'seq' must be >= 1"),
        (b'{"type":"send","seq":1,"to":"../etc","body":"x"}', "'to' must be an agent name"),
        (b'{"type":"exec","cmd":"id"}', "'type' is 'exec', which the relay does not know"),
        (b'{"type":"hello","agent":"a","credential":"c","version":1,"x":1}',
         "'x' is not a field the relay knows"),
        (b'["send"]', "the frame must be a mapping, not a list"),
        (b"not json", "JSON"),
        (b'{"type":"send","seq":1,"to":"bob","body":"\xff\xfe"}', "UTF-8"),
        (b'{"type":"ack","ids":[]}', "'ids' must hold at least 1 item(s)"),
        (b'{"type":"ack","ids":["zz"]}', "'ids' must be message ids such as m_"),
        (b'{"type":"send","seq":1,"to":"bob","body":"x","reply_to":"nonsense"}',
         "'reply_to' must be a message id such as m_"),
    ],
)  # fmt: skip
def test_schema_violations_are_invalid(line: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client_frame(line)
    assert caught.value.code is ErrorCode.INVALID
    assert fragment.lower() in caught.value.message.lower()
    assert "`" not in caught.value.message  # plain words, none of the checker's own


def test_there_is_no_code_execution_or_admin_frame_on_the_agent_plane() -> None:
    for kind in ("exec", "eval", "run", "shell", "agent_add", "allow", "shutdown", "admin"):
        with pytest.raises(ProtocolError):
            decode_client_frame(json.dumps({"type": kind}).encode())


def test_a_message_frame_names_its_sender_from() -> None:
    frame = Message(id="m_abcdefgh", sender="alice", to="bob", sent_at=1.0, body="hi", delivery=3)
    data = json.loads(encode(frame))
    assert data["from"] == "alice"
    assert decode_relay_frame(encode(frame)) == frame


def test_hello_repr_masks_the_credential() -> None:
    hello = Hello(agent="alice", credential="ccc1.supersecret")
    assert "supersecret" not in repr(hello)


def test_body_size_counts_utf8_bytes() -> None:
    assert body_size("é") == 2
    assert body_size("😀") == 4
    with pytest.raises(ProtocolError):
        body_size("\ud800")


@pytest.mark.parametrize("name", ["alice", "a", "team-x_2", "a.b", "x" * 64])
def test_good_agent_names(name: str) -> None:
    assert is_agent_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "Alice", "a/b", "..", "a..b", ".hidden", "-x", "x" * 65, "a b", "operator", "a\nb", "ä"],
)
def test_bad_agent_names(name: str) -> None:
    assert agent_name_problem(name) is not None


frames = st.one_of(
    st.builds(
        Send,
        seq=st.integers(1, 2**63 - 1),
        to=st.sampled_from(["bob", "a.b", "x-1"]),
        body=st.text(),
        thread=st.none() | st.text(min_size=1, max_size=128),
    ),
    st.builds(
        Ack,
        ids=st.lists(
            st.from_regex(r"^m_[A-Za-z0-9_-]{8,20}$", fullmatch=True), min_size=1, max_size=5
        ),
    ),
    st.builds(Fetch, limit=st.integers(1, 1000)),
    st.builds(Subscribe, window=st.integers(1, 1024)),
)


@given(frames)
def test_every_client_frame_round_trips(frame: msgspec.Struct) -> None:
    line = encode(frame)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_client_frame(line[:-1]) == frame


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_protocol_errors(data: bytes) -> None:
    buf = LineBuffer(200)
    try:
        lines = buf.feed(data + b"\n")
    except FrameTooLarge:
        return
    for line in lines:
        try:
            decode_client_frame(line)
        except ProtocolError as exc:
            assert exc.code is ErrorCode.INVALID


@given(st.lists(st.binary(min_size=0, max_size=50), max_size=20))
def test_chunking_does_not_change_the_lines(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    whole = LineBuffer(10_000).feed(data)
    pieces = LineBuffer(10_000)
    split: list[bytes] = []
    for chunk in chunks:
        split.extend(pieces.feed(chunk))
    assert split == whole
