"""Fuzzing the wire codec: hostile inputs, Hypothesis, and atheris (coverage-guided).

The properties live in ``tests/fuzz_codec.py`` (``check``): the decoders return
a frame or raise ``ProtocolError(invalid)``, a decoded frame re-encodes to an
equal one, ``salvage_seq`` never raises, ``LineBuffer`` returns exactly the
complete lines or raises ``FrameTooLarge`` only for a line past its cap.

* ``test_hostile_input`` runs a fixed corpus: deep nesting, huge and odd
  numbers, duplicate keys, invalid UTF-8, NUL bytes, escaped lone surrogates,
  very long strings, BOMs, trailing garbage.
* ``test_random_bytes`` and ``test_mutated_frames`` are Hypothesis, bounded by
  ``max_examples`` (``CCC_FUZZ_EXAMPLES`` raises it).
* ``test_atheris_finds_nothing`` runs the atheris harness for a bounded time
  (``CCC_FUZZ_SECONDS``, default 8) on a corpus seeded with the hostile inputs
  and one valid frame of each kind, with a dictionary of the protocol's
  tokens. For a long run by hand, see ``tests/fuzz_codec.py``.

The tests at the end pin what the hunt found: name and id patterns ending in
"$" let a trailing newline through (Python's "$" matches before a final newline).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccc_relay.protocol.codec import decode_client_frame, encode
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import (
    Accepted,
    Ack,
    AgentInfo,
    AgentList,
    Bye,
    Error,
    Fetch,
    Fetched,
    Goodbye,
    Hello,
    ListAgents,
    Message,
    Ping,
    Pong,
    Send,
    Subscribe,
    Welcome,
)
from tests.fuzz_codec import check, check_line_buffer

EXAMPLES = int(os.environ.get("CCC_FUZZ_EXAMPLES", "1500"))
SECONDS = int(os.environ.get("CCC_FUZZ_SECONDS", "8"))
ROOT = Path(__file__).resolve().parent.parent

SEND = b'{"type":"send","seq":1,"to":"bob","body":"x"}'
HOSTILE: list[bytes] = [
    b"",
    b"\n",
    b"[" * 5000,
    b"{" * 5000,
    b'{"a":' * 5000,
    b'{"type":"send","seq":' + b"9" * 5000 + b',"to":"bob","body":"x"}',
    b'{"type":"send","seq":-' + b"9" * 400 + b',"to":"bob","body":"x"}',
    b'{"type":"send","seq":1e400,"to":"bob","body":"x"}',
    b'{"type":"send","seq":9223372036854775808,"to":"bob","body":"x"}',
    b'{"type":"send","seq":1.5,"to":"bob","body":"x"}',
    b'{"type":"send","seq":true,"to":"bob","body":"x"}',
    b'{"type":"send","seq":1,"to":"bob","body":"x","deliver_at":1e999}',
    b'{"type":"send","seq":1,"to":"bob","body":"x","deliver_at":-0.0}',
    b'{"type":"send","seq":1,"to":"bob","body":"x","deliver_at":NaN}',
    b'{"type":"send","seq":1,"seq":2,"to":"bob","body":"x"}',  # duplicate keys
    b'{"type":"ping","type":"send","seq":1,"to":"bob","body":"x"}',
    b'{"type":"send","type":"ping"}',
    b'{"type":"send","seq":1,"to":"bob","to":"../../etc","body":"x"}',
    b'{"type":"send","seq":1,"to":"bob","body":"\xff\xfe"}',  # invalid UTF-8
    b'{"type":"send","seq":1,"to":"bob","body":"\xc0\xaf"}',  # overlong encoding
    b'{"type":"send","seq":1,"to":"bob","body":"\xed\xa0\x80"}',  # a raw surrogate
    b'{"type":"send","seq":1,"to":"bob","body":"\\ud800"}',  # escaped lone surrogates
    b'{"type":"send","seq":1,"to":"bob","body":"\\udfff\\ud800"}',
    b'{"type":"send","seq":1,"to":"bob","body":"\\ud83d\\ude00"}',
    b'{"type":"send","seq":1,"to":"bob","body":"a\\u0000b"}',
    b'{"type":"send","seq":1,"to":"bob","body":"a\x00b"}',  # a raw NUL
    b"\x00" * 64,
    SEND + b"\x00",
    b"\xef\xbb\xbf" + SEND,  # a BOM
    SEND + SEND,
    SEND + b" \t\r",
    b'{"type":"send","seq":1,"to":"bob","body":"' + b"x" * 2_000_000 + b'"}',
    b'{"type":"send","seq":1,"to":"bob","body":"' + b"\\u0001" * 100_000 + b'"}',
    b'{"type":"hello","agent":"' + b"a" * 100_000 + b'","credential":"c"}',
    b'{"type":"hello","agent":"alice","credential":"c","version":1e2}',
    b'{"type":"hello","agent":"alice","credential":"c","resume":null}',
    b'{"type":"ack","ids":[' + b'"m_aaaaaaaa",' * 1024 + b'"m_aaaaaaaa"]}',
    b'{"type":"ack","ids":[]}',
    b'{"type":"welcome","session":"s","agent":"a","expires_at":1,"last_seq":1,'
    b'"max_message_size":1,"rate_limit_per_minute":1}',
    b'{"type":"message","id":"m","from":"a","to":"b","sent_at":1e308,"body":"","delivery":-1}',
    b'{"type":"error","code":"x","message":"y","seq":null,"retry_after":-1}',
    b'{"type":"agents","agents":[{"name":"x","online":true,"may_send":false,"extra":1}]}',
    b"null",
    b"true",
    b"1",
    b'"send"',
    b"[]",
    b"{}",
    b'{"type":null}',
    b'{"type":1}',
    b"\\",
    b'"\\',
    b'{"type":"ping","data":"' + b"\\" * 5001,
]


@pytest.mark.parametrize("data", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input(data: bytes) -> None:
    check(data)
    for cap in (0, 1, 64, 1 << 20):
        check_line_buffer(data + b"\n" + data, cap, [1, 7, len(data) // 2])


def test_hostile_input_is_refused_as_invalid() -> None:
    """Spot checks of what the corpus means: nesting and numbers are refusals."""
    for data in (b"[" * 5000, b'{"a":' * 5000, HOSTILE[5], HOSTILE[7], HOSTILE[19], HOSTILE[21]):
        with pytest.raises(ProtocolError) as caught:
            decode_client_frame(data)
        assert caught.value.code is ErrorCode.INVALID


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check(data)


def _valid_frames() -> list[msgspec.Struct]:
    message = Message(
        id="m_abcdefgh1", sender="alice", to="bob", sent_at=1.5, body="hi", delivery=1
    )
    return [
        Hello(agent="alice", credential="c" * 48, resume="s_abcdefgh", signatures=True),
        Send(seq=1, to="bob", body="hi", thread="t", reply_to="m_abcdefgh1", deliver_at=2.0),
        Ack(ids=["m_abcdefgh1"]),
        Fetch(limit=5),
        Subscribe(window=3),
        ListAgents(),
        Ping(data="p"),
        Bye(),
        Welcome(
            session="s_abcdefgh",
            agent="alice",
            expires_at=1.0,
            last_seq=3,
            max_message_size=10,
            rate_limit_per_minute=1.0,
        ),
        Accepted(seq=1, id="m_abcdefgh1", changes=["nfc"]),
        Error(code="replay", message="m", seq=1, retry_after=0.5),
        message,
        Fetched(count=1, pending=0),
        AgentList(agents=[AgentInfo(name="bob", online=True, may_send=True)]),
        Pong(data="p"),
        Goodbye(reason="bye"),
    ]


VALID = [encode(frame)[:-1] for frame in _valid_frames()]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame's line, then bytes flipped, cut, duplicated or inserted."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup", "swap"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            data[at:at] = draw(
                st.sampled_from(
                    [b'"', b"\\", b"{", b"[", b",", b":", b"1e999", b"\\ud800", b"\x00"]
                )
                | st.binary(max_size=6)
            )
        elif op == "dup":
            data[at:at] = data[: draw(st.integers(0, len(data)))]
        else:
            data[at:at] = draw(st.sampled_from(VALID))
    return bytes(data)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_mutated_frames(data: bytes) -> None:
    check(data)


@pytest.mark.slow
def test_atheris_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, data in enumerate([*HOSTILE[:30], *VALID]):
        (corpus / f"seed-{index}").write_bytes(data[:4096])
    tokens = [
        "type", "send", "hello", "ack", "fetch", "subscribe", "agents", "ping", "bye", "seq",
        "to", "body", "thread", "reply_to", "deliver_at", "ids", "limit", "window", "data",
        "agent", "credential", "version", "resume", "signatures", "welcome", "accepted",
        "message", "error", "m_abcdefgh", "s_abcdefgh", "\\ud800", "1e999", "null", "true",
    ]  # fmt: skip
    dictionary = tmp_path / "codec.dict"
    dictionary.write_text("".join(f'"{t}"\n'.replace("\\", "\\\\") for t in tokens))
    result = subprocess.run(
        [
            sys.executable, "-m", "tests.fuzz_codec", f"-max_total_time={SECONDS}",
            f"-dict={dictionary}", "-max_len=4096", "-rss_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/", str(corpus),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120, check=False,
    )  # fmt: skip
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert result.returncode == 0 and not crashes, result.stderr[-4000:]
    assert "Done" in result.stderr, result.stderr[-2000:]


# --- what the hunt found --------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"send","seq":1,"to":"bob\\n","body":"x"}',
        b'{"type":"hello","agent":"alice\\n","credential":"c"}',
        b'{"type":"send","seq":1,"to":"bob","body":"x","reply_to":"m_abcdefgh\\n"}',
        b'{"type":"ack","ids":["m_abcdefgh\\n"]}',
        b'{"type":"hello","agent":"alice","credential":"c","resume":"s_abcdefgh\\n"}',
    ],
)
def test_a_trailing_newline_is_not_part_of_a_name_or_id(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_client_frame(line)


def test_a_real_relay_refuses_a_reply_to_with_a_trailing_newline(relay: object) -> None:
    import socket

    from ccc_relay.client import RelayClient
    from ccc_relay.protocol.codec import decode_relay_frame
    from tests.support import RunningRelay

    assert isinstance(relay, RunningRelay)
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(relay.config.socket_path))
    reader = sock.makefile("rb")
    try:
        sock.sendall(encode(Hello(agent="alice", credential=alice.credential.reveal())))
        assert isinstance(decode_relay_frame(reader.readline()), Welcome)
        sock.sendall(b'{"type":"send","seq":1,"to":"bob","body":"x","reply_to":"m_abcdefgh\\n"}\n')
        answer = decode_relay_frame(reader.readline())
    finally:
        reader.close()
        sock.close()
    with RelayClient(bob, timeout=10) as client:
        delivered = client.fetch()
    assert isinstance(answer, Error) and answer.code == "invalid", (answer, delivered)
