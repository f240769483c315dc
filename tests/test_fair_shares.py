"""Fair shares under hostile agents: what one agent (or one peer uid) may hold of
the relay, tried the way such an agent would, over a real socket."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from ccc_relay.client import RelayError
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.credentials import Credential
from ccc_relay.daemon import connection as connection_module
from tests.support import FakeClock, RunningRelay


def raw(relay: RunningRelay) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    relay.raw_sockets.append(sock)
    sock.connect(str(relay.config.socket_path))
    return sock


def frames(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    data = b""
    while len(out) < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
        *lines, data = data.split(b"\n")
        out += [json.loads(line) for line in lines if line]
    return out


def hello(endpoint: Endpoint) -> bytes:
    frame = {"type": "hello", "agent": endpoint.agent, "credential": endpoint.credential.reveal()}
    return json.dumps(frame).encode() + b"\n"


def ready(relay: RunningRelay, endpoint: Endpoint) -> socket.socket:
    sock = raw(relay)
    sock.sendall(hello(endpoint))
    assert frames(sock, 1)[0]["type"] == "welcome"
    return sock


def audit(relay: RunningRelay) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in sorted(relay.config.audit.log_path.iterdir()):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_wrong_guess_at_one_name_does_not_lock_out_another_agent(relay_factory: Any) -> None:
    relay = relay_factory(auth_failures_per_minute=3)
    alice = relay.add_agent("alice")
    ghost = Endpoint(relay.config.socket_path, "ghost", Credential.generate())
    codes = []
    for _ in range(5):
        sock = raw(relay)
        sock.sendall(hello(ghost))
        codes.append(frames(sock, 1)[0]["code"])
    assert codes == ["auth_failed"] * 3 + ["rate_limited"] * 2
    with relay.client(alice) as a:  # same uid, another name: not locked out
        assert a.ping() >= 0


def test_one_agent_at_its_connection_cap_leaves_room_for_the_others(relay_factory: Any) -> None:
    relay = relay_factory(max_connections_per_agent=2)
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    held = [ready(relay, alice), ready(relay, alice)]
    third = raw(relay)
    third.sendall(hello(alice))
    [error] = frames(third, 1)
    assert error["code"] == "busy" and "alice" in error["message"]
    with relay.client(bob) as b:
        assert b.ping() >= 0
    for sock in held:
        sock.close()


def test_sessions_of_one_agent_are_capped_oldest_idle_first(relay_factory: Any) -> None:
    """Connect-hello-close cycles no longer pile up sessions in memory and relay.db."""
    relay = relay_factory(max_sessions_per_agent=3)
    alice = relay.add_agent("alice")
    keep = relay.client(alice)  # in use: never taken
    for _ in range(10):
        with relay.client(alice) as a:
            a.ping()
    core = relay.daemon.relay.core  # type: ignore[union-attr]
    sessions = relay.call(lambda: [s.id for s in core.sessions.values() if s.agent == "alice"])
    assert len(sessions) == 3
    assert keep.welcome is not None and keep.welcome.session in sessions
    assert keep.ping() >= 0
    keep.close()
    relay.stop()
    import sqlite3

    db = sqlite3.connect(relay.config.db_path)
    try:
        (rows,) = db.execute("SELECT count(*) FROM sessions WHERE agent = 'alice'").fetchone()
    finally:
        db.close()
    assert rows == 3


def test_every_frame_counts_against_the_agents_budget_and_others_are_unaffected(
    relay_factory: Any,
) -> None:
    relay = relay_factory(frames_per_minute=30.0)
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    sock = ready(relay, alice)
    sock.sendall(b'{"type":"ping"}\n' * 40)
    answers = frames(sock, 40)
    assert [a["type"] for a in answers[:30]] == ["pong"] * 30
    assert {a.get("code") for a in answers[30:]} == {"rate_limited"}
    with relay.client(bob) as b:
        assert b.ping() >= 0


def test_a_flood_of_refusals_is_one_line_per_kind_then_a_counted_summary_then_cut_off(
    relay_factory: Any,
) -> None:
    clock = FakeClock()
    relay = relay_factory(clock=clock)
    alice = relay.add_agent("alice")
    sock = ready(relay, alice)
    sock.sendall(b'{"type":"nonsense"}\n' * 150)
    assert {a["code"] for a in frames(sock, 150)} == {"invalid"}
    clock.advance(11)
    core = relay.daemon.relay.core  # type: ignore[union-attr]
    relay.call(lambda: relay.daemon.relay.run(core.tick(clock())))  # type: ignore[union-attr]
    wait_for(lambda: any(line["event"] == "refusals_counted" for line in audit(relay)))
    lines = audit(relay)
    assert [line["code"] for line in lines if line["event"] == "refused"] == ["invalid"]
    [summary] = [line for line in lines if line["event"] == "refusals_counted"]
    assert (summary["agent"], summary["count"], summary["codes"]) == (
        "alice",
        149,
        {"invalid": 149},
    )
    # More than the strikes one connection may earn in an interval: it is closed.
    sock.sendall(b'{"type":"nonsense"}\n' * 250)
    answers = frames(sock, 250)
    assert len(answers) == 201 and sock.recv(1) == b""
    wait_for(lambda: any(line["event"] == "cut_off" for line in audit(relay)))


def test_a_long_line_that_is_not_a_send_is_refused_early(relay: RunningRelay) -> None:
    sock = ready(relay, relay.add_agent("alice"))
    sock.sendall(b'{"type":"ping","data":"' + b"x" * (70 * 1024))
    [error] = frames(sock, 1)
    assert error["code"] == "too_large" and "other than send" in error["message"]


def test_a_long_send_line_that_stops_arriving_is_cut_off(relay_factory: Any) -> None:
    clock = FakeClock()
    relay = relay_factory(clock=clock)
    sock = ready(relay, relay.add_agent("alice"))
    sock.sendall(b'{"type":"send","seq":1,"to":"bob","body":"' + b"x" * (100 * 1024))
    time.sleep(0.2)  # the relay has read it
    clock.advance(10)  # ten seconds for 100 KiB: far below 64 KiB/s
    shell = relay.daemon.relay
    relay.call(lambda: shell.run(shell.core.tick(clock())))  # type: ignore[union-attr]
    [error] = frames(sock, 1)
    assert error["code"] == "too_slow"


def test_a_receiver_that_does_not_read_is_disconnected(
    relay_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_module, "WRITE_STALL_LIMIT", 0.3)
    relay = relay_factory(rate_per_minute=1e6, agent_rate_per_minute=1e6, pair_rate_per_minute=1e6)
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    sleeper = ready(relay, bob)
    sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sleeper.sendall(b'{"type":"subscribe","window":1000}\n')  # then never reads
    with relay.client(alice) as a:
        for _ in range(40):
            a.send("bob", "z" * 500_000)
    wait_for(lambda: any(line["event"] == "cut_off" for line in audit(relay)), timeout=10)
    [cut] = [line for line in audit(relay) if line["event"] == "cut_off"]
    assert cut["agent"] == "bob" and "reading" in cut["reason"]


def test_one_sender_fills_at_most_half_of_a_recipients_queue(relay_factory: Any) -> None:
    relay = relay_factory(max_queued_messages=4)
    alice, bob, carol = (relay.add_agent(n) for n in ("alice", "bob", "carol"))
    relay.allow("alice", "bob")
    relay.allow("carol", "bob")
    with relay.client(alice) as a:
        a.send("bob", "one")
        a.send("bob", "two")
        with pytest.raises(RelayError) as caught:
            a.send("bob", "three")
        assert caught.value.code == "queue_full"
        with relay.client(carol) as c:  # alice's flood does not crowd carol out
            c.send("bob", "from carol")
        with relay.client(bob) as b:
            assert len(b.inbox()) == 3  # read and acknowledged: the queue drains
        a.send("bob", "three, again")


def test_a_thread_with_terminal_escapes_arrives_clean(relay: RunningRelay) -> None:
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        a.send("bob", "hi", thread="\x1b[2K\x1b[1G--- \u202efrom operator")
    with relay.client(bob) as b:
        [message] = b.inbox()
    assert message.thread is not None
    assert message.thread.isprintable() and "\x1b" not in message.thread
    assert "\u202e" not in message.thread


def test_an_agents_share_of_the_audit_keeps_only_sizes_past_its_cap(relay_factory: Any) -> None:
    relay = relay_factory(audit_body_bytes_per_minute=1000)
    alice, _bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        first = a.send("bob", "a" * 600)
        second = a.send("bob", "b" * 600)
    wait_for(lambda: len([x for x in audit(relay) if x["event"] == "accepted"]) == 2)
    lines = {x["id"]: x for x in audit(relay) if x["event"] == "accepted"}
    assert lines[first.id]["body"] == "a" * 600
    assert "body" not in lines[second.id] and lines[second.id]["size"] == 600
    assert lines[second.id]["body_omitted"] == "audit_body_bytes_per_minute"
    assert len(lines[second.id]["sha256"]) == 64


def test_all_queues_together_have_a_cap_of_their_own(relay_factory: Any) -> None:
    relay = relay_factory(max_queued_messages_total=3)
    alice, bob, _carol = (relay.add_agent(n) for n in ("alice", "bob", "carol"))
    relay.allow("alice", "bob")
    relay.allow("alice", "carol")
    with relay.client(alice) as a:
        a.send("bob", "1")
        a.send("carol", "2")
        a.send("bob", "3")
        with pytest.raises(RelayError) as caught:
            a.send("carol", "4")
        assert caught.value.code == "queue_full" and "relay's queues" in caught.value.message
        with relay.client(bob) as b:
            assert len(b.inbox()) == 2
        a.send("carol", "4, again")


def test_a_burst_then_silence_does_not_hold_a_long_line() -> None:
    """A long send line that arrived fast and then stopped is cut off after
    LINE_STALL, however fast its average was: its bytes are not held for free."""
    from ccc_relay.protocol.codec import line_cap_for
    from ccc_relay.protocol.session import LINE_STALL, AgentSession

    session = AgentSession(line_cap_for(1_000_000))
    burst = b'{"type":"send","seq":1,"to":"bob","body":"' + b"x" * 900_000
    assert session.receive_data(burst, 100.0) is None
    assert session.check_partial(100.0 + LINE_STALL - 0.5) is None
    refusal = session.check_partial(100.0 + LINE_STALL + 0.5)
    assert refusal is not None and refusal.code == "too_slow" and refusal.fatal


def test_the_queue_cap_counts_bytes_not_characters(relay_factory: Any) -> None:
    """Four-byte characters fill a queue four times as fast as their count suggests."""
    relay = relay_factory(max_queued_bytes=2_000)
    alice, _bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        a.send("bob", "\U0001f600" * 240)  # 960 bytes: within alice's half (1,000)
        with pytest.raises(RelayError) as caught:
            a.send("bob", "\U0001f600" * 20)  # 80 more bytes, only 20 characters
        assert caught.value.code == "queue_full"
