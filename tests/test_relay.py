"""The relay end to end over real Unix sockets and a real SQLite file.

Each test starts a relay (tests/conftest.py), registers agents through the
admin socket, and talks to it with the real client library or raw frames.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from ccc_relay.client import RelayClient, RelayError, RelayUnavailable
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.credentials import Credential
from tests.support import FakeClock, RunningRelay


def raw(relay: RunningRelay) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    relay.raw_sockets.append(sock)
    sock.connect(str(relay.config.socket_path))
    return sock


def send_frames(sock: socket.socket, *frames: dict | bytes) -> None:
    for frame in frames:
        sock.sendall(frame if isinstance(frame, bytes) else json.dumps(frame).encode() + b"\n")


def read_frames(sock: socket.socket, count: int) -> list[dict]:
    out: list[dict] = []
    data = b""
    while len(out) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        *lines, data = data.split(b"\n")
        out.extend(json.loads(line) for line in lines if line)
    return out


def hello(endpoint: Endpoint) -> dict:
    return {"type": "hello", "agent": endpoint.agent, "credential": endpoint.credential.reveal()}


def audit_lines(relay: RunningRelay) -> list[dict]:
    lines = []
    for path in sorted(relay.config.audit.log_path.iterdir()):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- exchange ----------------------------------------------------------------


def test_two_agents_exchange_messages_and_each_is_seen_once(relay: RunningRelay) -> None:
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob", both=True)
    with relay.client(alice) as a, relay.client(bob) as b:
        accepted = a.send("bob", "the API changed", thread="api")
        [message] = b.inbox()
        assert (message.id, message.sender, message.body, message.thread) == (
            accepted.id,
            "alice",
            "the API changed",
            "api",
        )
        assert b.inbox() == []  # acked: gone
        b.send("alice", "on it", reply_to=message.id)
        [reply] = a.inbox()
        assert reply.reply_to == message.id and reply.sender == "bob"


def test_messages_wait_for_an_offline_agent_in_order(relay: RunningRelay) -> None:
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        ids = [a.send("bob", f"message {i}").id for i in range(20)]
    with relay.client(bob) as b:
        got = b.inbox(limit=100)
    assert [m.id for m in got] == ids
    assert [m.delivery for m in got] == sorted(m.delivery for m in got)


def test_pushed_delivery_wakes_a_subscribed_agent(relay: RunningRelay) -> None:
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(bob) as b, relay.client(alice) as a:
        b.subscribe()
        assert b.wait_for_message(0.2) is None
        sent = a.send("bob", "ping")
        got = b.wait_for_message(5)
        assert got is not None and got.id == sent.id
        b.ack([got.id])


def test_unacked_messages_are_redelivered_to_a_new_session(relay: RunningRelay) -> None:
    """At least once on the wire; tests/test_client_redelivery.py proves the client
    libraries then hand each id out once."""
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        sent = a.send("bob", "important")
    with relay.client(bob) as b:
        assert [m.id for m in b.fetch()] == [sent.id]  # delivered, not acked
    with relay.client(bob) as b:
        [again] = b.fetch()  # a new session gets it again: at-least-once
        assert again.id == sent.id
        assert b.ack([sent.id]) == 1
    with relay.client(bob) as b:
        assert b.fetch() == []


def test_ack_only_settles_the_agents_own_messages(relay: RunningRelay) -> None:
    alice, bob, eve = (relay.add_agent(n) for n in ("alice", "bob", "eve"))
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        sent = a.send("bob", "for bob only")
    with relay.client(eve) as e:
        assert e.ack([sent.id]) == 0
    with relay.client(bob) as b:
        assert [m.id for m in b.inbox()] == [sent.id]


def test_scheduled_message_is_held_until_deliver_at(relay: RunningRelay) -> None:
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(bob) as b, relay.client(alice) as a:
        b.subscribe()
        a.send("bob", "later", deliver_at=time.time() + 0.6)
        assert b.fetch() == []
        got = b.wait_for_message(5)
        assert got is not None and got.body == "later"


# --- identity and policy ---------------------------------------------------------


def test_sender_is_the_authenticated_identity(relay: RunningRelay) -> None:
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    sock = raw(relay)
    send_frames(
        sock, hello(alice), {"type": "send", "seq": 1, "to": "bob", "body": "x", "from": "carol"}
    )
    welcome, error = read_frames(sock, 2)
    assert welcome["type"] == "welcome" and error["code"] == "invalid"
    with relay.client(bob) as b:
        assert b.inbox() == []


def test_unknown_and_forbidden_recipients_get_the_same_answer(relay: RunningRelay) -> None:
    alice, _bob = relay.add_agent("alice"), relay.add_agent("bob")
    with relay.client(alice) as a:
        with pytest.raises(RelayError) as forbidden:
            a.send("bob", "hi")
        with pytest.raises(RelayError) as unknown:
            a.send("nobody", "hi")
    assert forbidden.value.code == unknown.value.code == "forbidden"
    assert forbidden.value.message.replace("bob", "X") == unknown.value.message.replace(
        "nobody", "X"
    )


def test_agents_lists_only_those_it_may_talk_to(relay: RunningRelay) -> None:
    alice = relay.add_agent("alice")
    for name in ("bob", "carol", "dave"):
        relay.add_agent(name)
    relay.allow("alice", "bob")
    relay.allow("carol", "alice")
    with relay.client(alice) as a:
        listed = {(x.name, x.may_send, x.may_receive) for x in a.agents()}
    assert listed == {("bob", True, False), ("carol", False, True)}


def test_deny_withdraws_permission(relay: RunningRelay) -> None:
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    relay.admin.request("deny", sender="alice", recipient="bob")
    with relay.client(alice) as a, pytest.raises(RelayError, match="forbidden"):
        a.send("bob", "hi")


def test_wrong_credential_and_unknown_agent_fail_alike(relay: RunningRelay) -> None:
    alice = relay.add_agent("alice")
    forged = Endpoint(alice.socket_path, "alice", Credential.generate())
    unknown = Endpoint(alice.socket_path, "zed", Credential.generate())
    messages = []
    for endpoint in (forged, unknown):
        with pytest.raises(RelayError) as caught:
            RelayClient(endpoint).connect()
        assert caught.value.code == "auth_failed"
        messages.append(caught.value.message)
    assert messages[0] == messages[1]


def test_repeated_failed_hellos_are_throttled(relay_factory) -> None:
    relay = relay_factory(auth_failures_per_minute=3)
    alice = relay.add_agent("alice")
    forged = Endpoint(alice.socket_path, "alice", Credential.generate())
    codes = []
    for _ in range(5):
        with pytest.raises(RelayError) as caught:
            RelayClient(forged).connect()
        codes.append(caught.value.code)
    assert codes == ["auth_failed"] * 3 + ["rate_limited"] * 2
    with pytest.raises(RelayError) as caught:
        RelayClient(alice).connect()  # even the right credential waits out the throttle
    assert caught.value.retry_after is not None and caught.value.retry_after > 0


def test_frames_before_hello_are_refused_and_the_connection_closed(relay: RunningRelay) -> None:
    sock = raw(relay)
    send_frames(sock, {"type": "agents"})
    [error] = read_frames(sock, 1)
    assert error["code"] == "auth_required"
    assert sock.recv(1) == b""


def test_an_unauthenticated_connection_has_a_deadline(relay_factory) -> None:
    relay = relay_factory(hello_timeout=0.3)
    sock = raw(relay)
    started = time.monotonic()
    [error] = read_frames(sock, 1)
    assert error["code"] == "hello_timeout"
    assert time.monotonic() - started < 3


def test_unauthenticated_connections_are_capped_and_the_oldest_makes_room(
    relay_factory,
) -> None:
    """At the cap, the connection that waited longest is closed with ``busy``: a
    silent peer cannot hold every place while others want to say hello."""
    relay = relay_factory(max_unauthenticated=2)
    oldest, second = raw(relay), raw(relay)
    third = raw(relay)
    [error] = read_frames(oldest, 1)
    assert error["code"] == "busy"
    alice = relay.add_agent("alice")
    send_frames(third, hello(alice))
    assert read_frames(third, 1)[0]["type"] == "welcome"
    for sock in (oldest, second, third):
        sock.close()


def test_one_peer_uid_cannot_hold_every_place_before_hello(relay_factory) -> None:
    relay = relay_factory(max_unauthenticated=8, max_unauthenticated_per_uid=2)
    waiting = [raw(relay), raw(relay)]
    third = raw(relay)
    [error] = read_frames(third, 1)
    assert error["code"] == "busy" and "this user" in error["message"]
    for sock in (*waiting, third):
        sock.close()


def test_sessions_expire_after_session_timeout(relay_factory, clock: FakeClock) -> None:
    relay = relay_factory(clock=clock, session_timeout=3600)
    alice = relay.add_agent("alice")
    with relay.client(alice) as client:
        assert client.ping() >= 0
        clock.advance(3601)
        with pytest.raises(RelayError) as caught:
            client.agents()
    assert caught.value.code == "session_expired"


def test_rotation_ends_old_sessions_and_old_credentials(relay: RunningRelay) -> None:
    alice = relay.add_agent("alice")
    new = Credential.generate()
    with relay.client(alice) as client:
        relay.admin.request("agent_rotate", name="alice", cred_hash=new.digest())
        with pytest.raises((RelayError, RelayUnavailable)):
            client.agents()
    with pytest.raises(RelayError, match="auth_failed"):
        RelayClient(alice).connect()
    with relay.client(Endpoint(alice.socket_path, "alice", new)) as fresh:
        assert fresh.agents() == []


def test_removed_agent_can_no_longer_authenticate(relay: RunningRelay) -> None:
    alice = relay.add_agent("alice")
    relay.admin.request("agent_remove", name="alice")
    with pytest.raises(RelayError, match="auth_failed"):
        RelayClient(alice).connect()


def test_agent_bound_to_another_uid_is_refused(relay: RunningRelay) -> None:
    alice = relay.add_agent("alice", uid=os.getuid() + 4242)
    with pytest.raises(RelayError, match="auth_failed"):
        RelayClient(alice).connect()
    wait_for(lambda: any(x["event"] == "refused" for x in audit_lines(relay)))
    refused = [x for x in audit_lines(relay) if x["event"] == "refused"]
    assert refused[-1]["peer_uid"] == os.getuid()


# --- the seed's limits, at their boundaries -----------------------------------------


def test_body_of_exactly_the_limit_is_accepted_one_more_byte_is_refused(relay_factory) -> None:
    relay = relay_factory(max_message_size=1000)
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        assert a.send("bob", "é" * 500).id  # 1000 UTF-8 bytes
        with pytest.raises(RelayError) as caught:
            a.send("bob", "x" * 1001)
        assert caught.value.code == "too_large"
        with pytest.raises(RelayUnavailable):
            a.ping()  # the connection was closed


def test_default_limit_is_the_seeds_1mb(relay: RunningRelay) -> None:
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        a.send("bob", "x" * 1_000_000)
        with pytest.raises(RelayError, match="too_large"):
            a.send("bob", "x" * 1_000_001)
    with relay.client(bob) as b:
        [m] = b.inbox()
        assert len(m.body) == 1_000_000


def test_huge_frame_is_cut_off_before_it_is_buffered_whole(relay_factory) -> None:
    relay = relay_factory(max_message_size=1000)
    alice = relay.add_agent("alice")
    sock = raw(relay)
    send_frames(sock, hello(alice))
    read_frames(sock, 1)
    sent = 0
    prefix = b'{"type":"send","seq":1,"to":"bob","body":"'
    with pytest.raises(OSError):  # noqa: PT011, PT012 - EPIPE or ECONNRESET, part-way
        sock.sendall(prefix)
        chunk = b"x" * 65536
        for _ in range(2000):  # up to 128 MiB, far past the 22 KB line cap
            sock.sendall(chunk)
            sent += len(chunk)
    assert sent < 16 * 1024 * 1024
    wait_for(lambda: any(x.get("code") == "too_large" for x in audit_lines(relay)))


def test_the_101st_message_in_a_minute_is_rate_limited(relay_factory, clock: FakeClock) -> None:
    relay = relay_factory(clock=clock)
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        for i in range(100):
            clock.advance(0.1)
            a.send("bob", f"m{i}")
        with pytest.raises(RelayError) as caught:
            a.send("bob", "one too many")
        assert caught.value.code == "rate_limited"
        assert 45 <= caught.value.retry_after <= 61
        a.ping()  # the connection goes on
        clock.advance(caught.value.retry_after)
        a.send("bob", "after the wait")


def test_reconnecting_does_not_reset_the_rate_limit(relay_factory, clock: FakeClock) -> None:
    relay = relay_factory(clock=clock)
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        for i in range(100):
            a.send("bob", f"m{i}")
    with relay.client(alice) as a, pytest.raises(RelayError, match="rate_limited"):
        a.send("bob", "new session, same agent")


def test_replayed_and_skipped_seqs_are_refused(relay: RunningRelay) -> None:
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    sock = raw(relay)
    send = {"type": "send", "to": "bob", "body": "x"}
    send_frames(
        sock,
        hello(alice),
        {**send, "seq": 1},
        {**send, "seq": 1},
        {**send, "seq": 5},
        {**send, "seq": 2},
    )
    frames = read_frames(sock, 5)
    by_seq = {}
    for f in frames[1:]:
        by_seq.setdefault(f["seq"], []).append(f.get("code") or f["type"])
    assert sorted(by_seq[1]) == ["accepted", "replay"]
    assert by_seq[5] == ["out_of_order"]
    assert by_seq[2] == ["accepted"]


def test_seq_high_water_mark_survives_a_restart(relay_factory, state_dir: Path) -> None:
    relay = relay_factory()
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        for i in range(3):
            a.send("bob", f"m{i}")
        session = a.welcome.session
    relay.stop()
    relay = relay_factory()
    sock = raw(relay)
    send_frames(
        sock,
        {**hello(alice), "resume": session},
        {"type": "send", "seq": 3, "to": "bob", "body": "replayed"},
        {"type": "send", "seq": 4, "to": "bob", "body": "next"},
    )
    welcome, first, second = read_frames(sock, 3)
    assert welcome["last_seq"] == 3
    assert first["code"] == "replay"
    assert second["type"] == "accepted" and second["seq"] == 4


def test_schema_errors_are_answered_and_the_connection_goes_on(relay: RunningRelay) -> None:
    alice = relay.add_agent("alice")
    sock = raw(relay)
    send_frames(
        sock,
        hello(alice),
        b'{"type":"send","seq":1}\n',
        b"\xff\xfe\n",
        b'{"type":"ping","data":"still here","extra":1}\n',
        b'{"type":"ping"}\n',
    )
    _, *rest = read_frames(sock, 5)
    assert [f.get("code") or f["type"] for f in rest] == ["invalid", "invalid", "invalid", "pong"]


def test_the_agent_socket_cannot_do_admin_operations(relay: RunningRelay) -> None:
    alice = relay.add_agent("alice")
    sock = raw(relay)
    send_frames(
        sock,
        hello(alice),
        {"op": "agent_add", "name": "mallory", "cred_hash": "0" * 64},
        {"type": "agent_add", "name": "mallory", "cred_hash": "0" * 64},
    )
    _, first, second = read_frames(sock, 3)
    assert first["code"] == second["code"] == "invalid"
    assert "mallory" not in relay.daemon.relay.core.agents


def test_sockets_and_state_have_safe_modes(relay: RunningRelay) -> None:
    config = relay.config
    assert oct(config.socket_path.stat().st_mode & 0o777) == "0o660"
    assert oct(config.admin_socket_path.stat().st_mode & 0o777) == "0o600"
    assert oct(config.state_dir.stat().st_mode & 0o777) == "0o700"
    relay.add_agent("alice")
    for path in [
        config.db_path,
        *config.credentials_dir.iterdir(),
        *config.audit.log_path.iterdir(),
    ]:
        assert oct(path.stat().st_mode & 0o777) == "0o600", path


def test_only_the_credential_hash_is_stored_and_nothing_leaks(relay: RunningRelay, caplog) -> None:
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    secret = alice.credential.reveal()
    with relay.client(alice) as a:
        a.send("bob", "hello")
    wrong = Endpoint(alice.socket_path, "bob", alice.credential)  # alice's secret as bob
    with pytest.raises(RelayError) as caught:
        RelayClient(wrong).connect()
    assert secret not in str(caught.value)
    relay.stop()
    state = relay.config.state_dir
    for path in state.rglob("*"):
        if path.is_file() and path.suffix != ".cred":
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in caplog.text
    assert alice.credential.digest() in {a.cred_hash for a in _agents(relay)}


def _agents(relay: RunningRelay):
    from ccc_relay.store import Store

    store = Store(relay.config.db_path)
    try:
        return store.agents()
    finally:
        store.close()


def test_store_failure_stops_acceptance_loudly(relay: RunningRelay) -> None:
    import sqlite3

    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    store = relay.daemon.relay.committer._store

    def broken(messages):  # the seam: the disk fails under the store
        raise sqlite3.OperationalError("disk I/O error")

    store.insert_messages = broken
    with relay.client(alice) as a:
        with pytest.raises(RelayError) as caught:
            a.send("bob", "lost?")
        assert caught.value.code == "unavailable"
        with pytest.raises(RelayError, match="unavailable"):
            a.send("bob", "and again")
    status = relay.admin.request("status")
    assert status["accepting"] is False and "disk I/O error" in status["failure"]


def test_operator_can_write_to_an_agent(relay: RunningRelay) -> None:
    bob = relay.add_agent("bob")
    relay.admin.request("session_send", to="bob", body="maintenance at 5")
    with relay.client(bob) as b:
        [m] = b.inbox()
    assert (m.sender, m.body) == ("operator", "maintenance at 5")


def test_status_counts_and_session_list(relay: RunningRelay) -> None:
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        a.send("bob", "x")
        with pytest.raises(RelayError):
            a.send("carol", "x")
        sessions = relay.admin.request("session_list")
        assert [s["agent"] for s in sessions] == ["alice"]
        assert sessions[0]["peer_uid"] == os.getuid()
    status = relay.admin.request("status")
    assert status["counters"]["accepted"] == 1
    assert status["counters"]["refused"] == {"forbidden": 1}
    assert {a["name"]: a["queued"] for a in status["agents"]} == {"alice": 0, "bob": 1}


def test_every_refusal_has_an_audit_line(relay: RunningRelay) -> None:
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    with relay.client(alice) as a, pytest.raises(RelayError):
        a.send("bob", "x")
    with pytest.raises(RelayError):
        RelayClient(Endpoint(alice.socket_path, "alice", Credential.generate())).connect()
    wait_for(lambda: len([x for x in audit_lines(relay) if x["event"] == "refused"]) >= 2)
    refused = [x for x in audit_lines(relay) if x["event"] == "refused"]
    assert {x["code"] for x in refused} == {"forbidden", "auth_failed"}
    assert all(x["reason"] for x in refused)


def test_per_agent_socket_authenticates_only_its_own_agent(relay_factory, state_dir: Path) -> None:
    from dataclasses import replace as dc_replace

    from tests.support import make_config

    config = dc_replace(make_config(state_dir), per_agent_sockets=True)
    relay = relay_factory(config=config)
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    alice_sock = config.agent_socket("alice")
    assert oct(alice_sock.stat().st_mode & 0o777) == "0o660"
    assert oct(config.agent_sockets.stat().st_mode & 0o777) == "0o711"
    with RelayClient(Endpoint(alice_sock, "alice", alice.credential)) as a:
        a.send("bob", "via my own socket")
    # bob's valid credential on alice's socket is refused
    with pytest.raises(RelayError, match="auth_failed"):
        RelayClient(Endpoint(alice_sock, "bob", bob.credential)).connect()
    wait_for(lambda: any(x.get("socket_agent") == "alice" for x in audit_lines(relay)))
    relay.admin.request("agent_remove", name="bob")
    assert not config.agent_socket("bob").exists()


def test_invalid_send_frames_are_answered_with_their_seq(relay: RunningRelay) -> None:
    alice = relay.add_agent("alice")
    sock = raw(relay)
    send_frames(sock, hello(alice), {"type": "send", "seq": 1, "to": "../x", "body": "b"})
    _, error = read_frames(sock, 2)
    assert (error["code"], error["seq"]) == ("invalid", 1)


def test_deliveries_are_signed_for_clients_that_verify(relay: RunningRelay, monkeypatch) -> None:
    import base64

    from ccc_relay.daemon.signing import public_key_of

    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    key = public_key_of(relay.config.state_dir)
    assert key is not None and len(base64.b64decode(key)) == 32
    monkeypatch.setenv("CCC_RELAY_PUBKEY", key)
    bob_checked = Endpoint.resolve(
        socket_path=bob.socket_path, credential_file=relay.config.credentials_dir / "bob.cred"
    )
    assert bob_checked.relay_pubkey is not None
    with relay.client(alice) as a:
        a.send("bob", "signed, please", thread="t")
    with RelayClient(bob_checked) as b:
        [m] = b.inbox()
        assert m.signature and m.body == "signed, please"
    # A different key: the same delivery is refused, and stays queued.
    with relay.client(alice) as a:
        a.send("bob", "second")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    wrong = Ed25519PrivateKey.generate().public_key()
    with RelayClient(Endpoint(bob.socket_path, "bob", bob.credential, wrong)) as b:
        with pytest.raises(RelayError) as caught:
            b.fetch()
        assert caught.value.code == "bad_signature"
    with relay.client(bob) as b:
        assert [m.body for m in b.inbox()] == ["second"]


def test_signature_covers_every_field() -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ccc_relay.client.signatures import verify_message
    from ccc_relay.daemon.signing import MessageSigner
    from ccc_relay.protocol.frames import Message

    key = Ed25519PrivateKey.generate()
    signer = MessageSigner(key)
    message = Message(
        id="m_abcdefgh1", sender="alice", to="bob", sent_at=1.5, body="hi", delivery=1,
        thread="t",
    )  # fmt: skip
    message.signature = signer.sign(message)
    # The signed bytes are part of the protocol (docs/protocol.md): pin them.
    from ccc_relay.protocol.signature import message_signed_bytes

    assert message_signed_bytes(message) == (
        b'["ccc-relay/message/v1","m_abcdefgh1","alice","bob",1.5,"t",null,'
        b'"8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"]'
    )
    verify_message(key.public_key(), message)
    import msgspec

    for change in (
        {"sender": "mallory"},
        {"body": "hi!"},
        {"to": "eve"},
        {"sent_at": 1.6},
        {"thread": None},
        {"id": "m_abcdefgh2"},
        {"signature": None},
    ):
        with pytest.raises(RelayError, match="bad_signature"):
            verify_message(key.public_key(), msgspec.structs.replace(message, **change))
    assert base64.b64decode(message.signature)


def test_admin_refusals_are_answered_and_audited(relay: RunningRelay) -> None:
    with pytest.raises(RelayError) as bad:
        relay.admin.request("agent_add", name="../x", cred_hash="0" * 64)
    assert bad.value.code == "invalid"
    with pytest.raises(RelayError) as missing:
        relay.admin.request("agent_remove", name="ghost")
    assert missing.value.code == "not_found"
    wait_for(lambda: len([x for x in audit_lines(relay) if x["event"] == "admin_refused"]) >= 2)
    codes = {x["code"] for x in audit_lines(relay) if x["event"] == "admin_refused"}
    assert codes == {"invalid", "not_found"}
