"""Direct mode (the seed's shared-socket fallback): both ends over real Unix sockets.

Listeners run on their own event loop in a thread, on real sockets in a real
shared dir, with a real SQLite inbox; senders are the blocking library and
the CLI. Refusals are provoked with hand-made frames on a raw socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from ccc_relay.cli.peer_cmd import peer
from ccc_relay.client.base import RelayError, RelayUnavailable
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.client.sync import RelayClient
from ccc_relay.credentials import Credential, write_credential_file
from ccc_relay.daemon.sockets import SocketPathError
from ccc_relay.peer import (
    DirectReceipt,
    PairKey,
    PairKeyError,
    PeerConfig,
    PeerConfigError,
    PeerListener,
    PeerStore,
    PeerUnavailable,
    Receiver,
    direct_warning,
    fallback_mode,
    read_pair_key,
    relay_or_direct,
    send_direct,
    write_pair_key,
)
from ccc_relay.peer.frames import (
    PeerAccepted,
    PeerError,
    PeerReply,
    PeerSend,
    canonical,
    decode_reply,
    sign_accepted,
    sign_send,
    verify_reply,
)
from ccc_relay.peer.keys import pair_file_name
from ccc_relay.policy.config import DEFAULT_MAX_MESSAGE_SIZE
from ccc_relay.policy.sanitize import sanitize
from ccc_relay.protocol.codec import encode, line_cap_for
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from tests.support import FakeClock

# --- fixtures and helpers ----------------------------------------------------


class Peers:
    """alice, bob and carol in one state dir; alice+bob and bob+carol are paired."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.env = {"CCC_CACHE_DIR": str(state)}
        self.keys = {}
        for a, b in (("alice", "bob"), ("bob", "carol")):
            key = PairKey.generate(a, b)
            write_pair_key(self.keys_dir / pair_file_name(a, b), key)
            self.keys[frozenset((a, b))] = key

    @property
    def keys_dir(self) -> Path:
        return self.state / "peer" / "keys"

    def config(self, me: str, **overrides: Any) -> PeerConfig:
        return PeerConfig.resolve(me=me, env=self.env, **overrides)

    def key(self, a: str, b: str) -> PairKey:
        return self.keys[frozenset((a, b))]

    def socket(self, me: str) -> Path:
        return self.config(me).socket_path(me)


class RunningListener:
    """A listener on its own loop in a thread, stopped by cancelling its task."""

    def __init__(self, config: PeerConfig, **receiver_options: Any) -> None:
        self.config = config
        self.store = PeerStore(config.store_path)
        self.receiver = Receiver(config.me, config.keys(), self.store, **receiver_options)
        self.path = config.socket_path(config.me)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        listener = PeerListener(self.receiver, self.path)
        self._task = self._loop.create_task(listener.serve(started=lambda _: self._ready.set()))
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    def stop(self) -> None:
        assert self._task is not None
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
        self.store.close()

    def inbox(self) -> list[Any]:
        return self.store.messages(unread_only=False)


Listen = Callable[..., RunningListener]


@pytest.fixture
def peers(state_dir: Path) -> Peers:
    return Peers(state_dir)


@pytest.fixture
def listen(peers: Peers) -> Iterator[Callable[..., RunningListener]]:
    running: list[RunningListener] = []

    def start(me: str = "alice", **options: Any) -> RunningListener:
        listener = RunningListener(peers.config(me), **options)
        running.append(listener)
        return listener

    yield start
    for listener in running:
        if listener._thread.is_alive():
            listener.stop()


class RawPeer:
    """A hand-driven connection to a listener, for frames no honest sender makes."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self._pending = b""

    def send(self, data: bytes | msgspec.Struct) -> PeerReply:
        self.sock.sendall(data if isinstance(data, bytes) else encode(data))
        return self.reply()

    def reply(self) -> PeerReply:
        while b"\n" not in self._pending:
            chunk = self.sock.recv(65536)
            assert chunk, "the listener closed the connection without answering"
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return decode_reply(line)

    def closed_by_listener(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(peers: Peers) -> Iterator[Callable[[str], RawPeer]]:
    opened: list[RawPeer] = []

    def connect(me: str = "alice") -> RawPeer:
        conn = RawPeer(peers.socket(me))
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def signed(peers: Peers, *, seq: int = 1, body: str = "hello", sender: str = "bob",
           recipient: str = "alice", key: PairKey | None = None) -> PeerSend:  # fmt: skip
    key = key or peers.key(sender, recipient)
    return sign_send(key.reveal(), sender=sender, recipient=recipient, seq=seq,
                     ts=int(time.time() * 1000), body=body)  # fmt: skip


def quiet(_: str) -> None:
    pass


# --- round trips ---------------------------------------------------------------


def test_round_trip_in_both_directions(
    peers: Peers, listen: Listen, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ccc_relay.peer")
    alice, bob = listen("alice"), listen("bob")
    to_alice = send_direct("alice", "the API changed", config=peers.config("bob"), warn=quiet)
    to_bob = send_direct("bob", "updating the client", config=peers.config("alice"), warn=quiet)
    [got_alice] = alice.inbox()
    [got_bob] = bob.inbox()
    assert (got_alice.id, got_alice.sender, got_alice.recipient, got_alice.body, got_alice.seq) == (
        to_alice.id, "bob", "alice", "the API changed", 1)  # fmt: skip
    assert (got_bob.id, got_bob.sender, got_bob.body) == (to_bob.id, "alice", "updating the client")
    assert to_alice.seq == to_bob.seq == 1
    again = send_direct("alice", "second", config=peers.config("bob"), warn=quiet)
    assert again.seq == 2
    assert [m.body for m in alice.inbox()] == ["the API changed", "second"]
    with PeerStore(peers.config("bob").store_path) as store:
        assert store.last_sent("alice") == 2  # bob's count is durable: no resync needed
    assert "refused" not in caplog.text


def test_modes_of_socket_dir_key_and_inbox(peers: Peers, listen: Listen) -> None:
    alice = listen("alice")
    sock = os.lstat(alice.path)
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o660
    shared = os.lstat(alice.path.parent)
    assert stat.S_ISDIR(shared.st_mode) and stat.S_IMODE(shared.st_mode) == 0o770
    key = os.lstat(peers.keys_dir / "alice+bob.key")
    assert stat.S_IMODE(key.st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(alice.store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(alice.store.path.parent).st_mode) == 0o700
    alice.stop()
    assert not os.path.lexists(alice.path)  # unbound on the way out


# --- unsafe paths ---------------------------------------------------------------


def _serve_once(peers: Peers, me: str = "alice") -> None:
    config = peers.config(me)
    with PeerStore(config.store_path) as store:
        receiver = Receiver(me, config.keys(), store)
        asyncio.run(PeerListener(receiver, config.socket_path(me)).serve())


def test_listener_refuses_a_symlink_at_its_socket_path(peers: Peers) -> None:
    victim = peers.state / "victim"
    victim.write_text("keep me")
    path = peers.socket("alice")
    path.parent.mkdir(mode=0o770, parents=True)
    path.symlink_to(victim)
    with pytest.raises(SocketPathError, match="is a symlink"):
        _serve_once(peers)
    assert victim.read_text() == "keep me" and path.is_symlink()


def test_listener_refuses_a_regular_file_at_its_socket_path(peers: Peers) -> None:
    path = peers.socket("alice")
    path.parent.mkdir(mode=0o770, parents=True)
    path.write_text("not a socket")
    with pytest.raises(SocketPathError, match="is not a socket"):
        _serve_once(peers)
    assert path.read_text() == "not a socket"


def test_listener_refuses_a_symlinked_shared_dir(peers: Peers) -> None:
    elsewhere = peers.state / "elsewhere"
    elsewhere.mkdir()
    shared = peers.socket("alice").parent
    shared.parent.mkdir(parents=True, exist_ok=True)
    shared.symlink_to(elsewhere)
    with pytest.raises(SocketPathError, match="is a symlink"):
        _serve_once(peers)
    assert list(elsewhere.iterdir()) == []


def test_sender_refuses_a_symlink_at_the_socket_path(peers: Peers, listen: Listen) -> None:
    alice = listen("alice")
    # carol's "socket" is a link to alice's: following it would deliver elsewhere.
    peers.socket("carol").symlink_to(alice.path)
    with pytest.raises(PeerConfigError, match="is a symlink"):
        send_direct("carol", "for carol", config=peers.config("bob"), warn=quiet)
    assert alice.inbox() == []


def test_sender_refuses_a_regular_file_at_the_socket_path(peers: Peers) -> None:
    path = peers.socket("carol")
    path.parent.mkdir(mode=0o770, parents=True)
    path.write_text("not a socket")
    with pytest.raises(PeerConfigError, match="is not a socket"):
        send_direct("carol", "hi", config=peers.config("bob"), warn=quiet)


def test_sender_refuses_a_symlinked_shared_dir(peers: Peers, listen: Listen) -> None:
    alice = listen("alice")
    link = peers.state / "shared-link"
    link.symlink_to(alice.path.parent)
    with pytest.raises(PeerConfigError, match="is a symlink"):
        send_direct("alice", "hi", config=peers.config("bob", peer_dir=link), warn=quiet)
    assert alice.inbox() == []


def test_no_listener_is_unavailable_with_what_to_do(peers: Peers) -> None:
    peers.socket("alice").parent.mkdir(mode=0o770, parents=True)
    with pytest.raises(PeerUnavailable, match="alice must run 'ccc peer listen'"):
        send_direct("alice", "hi", config=peers.config("bob"), warn=quiet)


def test_pair_key_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "keys" / "alice+bob.key"
    link.parent.mkdir()
    link.symlink_to(victim)
    key = PairKey.generate("alice", "bob")
    with pytest.raises(FileExistsError):
        write_pair_key(link, key)
    with pytest.raises(PairKeyError, match="is a symlink"):
        write_pair_key(link, key, replace=True)
    with pytest.raises(PairKeyError, match="is a symlink"):
        read_pair_key(link)
    assert victim.read_text() == "keep me"


def test_pair_key_file_open_to_everyone_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "alice+bob.key"
    write_pair_key(path, PairKey.generate("alice", "bob"))
    os.chmod(path, 0o604)
    with pytest.raises(PairKeyError, match="chmod 600"):
        read_pair_key(path)


def test_pair_key_round_trips_and_masks_itself(tmp_path: Path) -> None:
    key = PairKey.generate("bob", "alice")
    path = tmp_path / "k.key"
    write_pair_key(path, key)
    again = read_pair_key(path)
    assert again.pair == ("alice", "bob") and again.reveal() == key.reveal()
    assert len(key.reveal()) == 32
    assert key.text() not in repr(key) and key.text() not in str(key)
    assert "***" in repr(key)


# --- refusals, each with the relay's code -----------------------------------------


@pytest.mark.parametrize(
    ("alter", "why"),
    [
        ({"mac": "0" * 64}, "bad MAC"),
        ({"body": "hello, altered"}, "altered body"),
        ({"seq": 2}, "altered seq"),
        ({"ts": 1}, "altered timestamp"),
        ({"sender": "carol"}, "sender claimed by a non-holder"),
    ],
)
def test_forged_frames_are_refused_as_auth_failed(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer],
    caplog: pytest.LogCaptureFixture, alter: dict[str, Any], why: str,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING, logger="ccc_relay.peer")
    alice = listen("alice")
    conn = raw("alice")
    reply = conn.send(msgspec.structs.replace(signed(peers), **alter))
    assert isinstance(reply, PeerError) and reply.code == "auth_failed", why
    assert reply.mac is None  # nothing proven, nothing to sign
    assert conn.closed_by_listener()
    assert alice.inbox() == []
    assert "refused auth_failed" in caplog.text


def test_frame_signed_with_another_key_is_refused(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer]
) -> None:
    alice = listen("alice")
    stranger = PairKey.generate("alice", "bob")  # right names, wrong secret
    reply = raw("alice").send(signed(peers, key=stranger))
    assert isinstance(reply, PeerError) and reply.code == "auth_failed"
    assert alice.inbox() == []


def test_unpaired_sender_gets_the_same_answer_as_a_bad_signature(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer]
) -> None:
    listen("alice")
    # carol holds a key, just not one alice knows: alice cannot tell her from a forger.
    unknown = raw("alice").send(signed(peers, sender="carol", key=peers.key("bob", "carol")))
    forged = raw("alice").send(msgspec.structs.replace(signed(peers), mac="f" * 64))
    assert isinstance(unknown, PeerError) and isinstance(forged, PeerError)
    assert (unknown.code, unknown.message) == (forged.code, forged.message)


def test_frame_for_another_recipient_is_refused(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer]
) -> None:
    alice = listen("alice")
    # A genuine bob->carol frame replayed at alice's socket.
    reply = raw("alice").send(signed(peers, recipient="carol"))
    assert isinstance(reply, PeerError) and reply.code == "forbidden"
    assert alice.inbox() == []


def test_replayed_frame_is_refused_with_a_signed_answer(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING, logger="ccc_relay.peer")
    alice = listen("alice")
    frame = signed(peers, seq=1)
    conn = raw("alice")
    first = conn.send(frame)
    again = conn.send(frame)
    assert isinstance(first, PeerAccepted)
    assert isinstance(again, PeerError) and again.code == "replay" and again.next_seq == 2
    key = peers.key("alice", "bob").reveal()
    assert verify_reply(key, first, listener="alice", request=frame)
    assert verify_reply(key, again, listener="alice", request=frame)
    assert len(alice.inbox()) == 1
    assert "refused replay from bob seq 1" in caplog.text


@pytest.mark.parametrize(
    ("seqs", "code", "next_seq"),
    [
        ((1, 3), "out_of_order", 2),  # a gap is refused, as the relay refuses it
        ((1, 2, 1), "replay", 3),  # lower than the high-water mark
        ((2,), "out_of_order", 1),  # the first frame must be seq 1
    ],
)
def test_reordered_frames_are_refused(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer],
    seqs: tuple[int, ...], code: str, next_seq: int,
) -> None:  # fmt: skip
    alice = listen("alice")
    conn = raw("alice")
    replies = [conn.send(signed(peers, seq=seq, body=f"n{seq}")) for seq in seqs]
    *earlier, last = replies
    assert all(isinstance(r, PeerAccepted) for r in earlier)
    assert isinstance(last, PeerError) and (last.code, last.next_seq) == (code, next_seq)
    assert len(alice.inbox()) == len(earlier)


def test_replay_is_refused_across_a_listener_restart(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer]
) -> None:
    frame = signed(peers, seq=1)
    first = listen("alice")
    assert isinstance(raw("alice").send(frame), PeerAccepted)
    first.stop()
    second = listen("alice")  # a new process would open the same store file
    reply = raw("alice").send(frame)
    assert isinstance(reply, PeerError) and reply.code == "replay"
    assert len(second.inbox()) == 1


def test_body_of_exactly_the_limit_is_accepted_and_one_byte_more_refused(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer]
) -> None:
    alice = listen("alice")
    limit = DEFAULT_MAX_MESSAGE_SIZE  # the seed's 1MB
    conn = raw("alice")
    ok = conn.send(signed(peers, seq=1, body="é" * (limit // 2)))  # two UTF-8 bytes each
    assert isinstance(ok, PeerAccepted)
    over = conn.send(signed(peers, seq=2, body="a" * (limit + 1)))
    assert isinstance(over, PeerError) and over.code == "too_large"
    assert conn.closed_by_listener()
    assert [len(m.body.encode()) for m in alice.inbox()] == [limit]


def test_line_over_the_cap_is_refused_before_it_ends(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer]
) -> None:
    listen("alice", max_message_size=1000)
    conn = raw("alice")
    conn.sock.sendall(b"x" * (line_cap_for(1000) + 1))  # no newline: the line never ends
    reply = conn.reply()
    assert isinstance(reply, PeerError) and reply.code == "too_large"
    assert conn.closed_by_listener()


def _frame_dict(peers: Peers) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.json.decode(encode(signed(peers)))
    return data


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda d: {**d, "extra": 1}, "invalid"),  # unknown field
        (lambda d: {**d, "seq": "1"}, "invalid"),  # wrong type
        (lambda d: {k: v for k, v in d.items() if k != "mac"}, "invalid"),  # missing field
        (lambda d: {**d, "from": "../bob"}, "invalid"),  # not an agent name
        (lambda d: {**d, "seq": 0}, "invalid"),  # seq starts at 1
        (lambda d: {**d, "type": "accepted"}, "invalid"),  # not a sender's frame
        (lambda d: {**d, "v": 2}, "unsupported_version"),
    ],
)
def test_schema_invalid_frames_are_refused(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer],
    mangle: Callable[[dict[str, Any]], dict[str, Any]], code: str,
) -> None:  # fmt: skip
    alice = listen("alice")
    reply = raw("alice").send(msgspec.json.encode(mangle(_frame_dict(peers))) + b"\n")
    assert isinstance(reply, PeerError) and reply.code == code
    assert alice.inbox() == []


def test_non_json_and_lone_surrogates_are_invalid(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer]
) -> None:
    alice = listen("alice")
    conn = raw("alice")
    reply = conn.send(b"this is not json\n")
    assert isinstance(reply, PeerError) and reply.code == "invalid"
    surrogate = encode(signed(peers)).replace(b'"hello"', b'"\\ud800"')
    reply = conn.send(surrogate)
    assert isinstance(reply, PeerError) and reply.code == "invalid"
    assert alice.inbox() == []


def test_a_peer_that_keeps_sending_garbage_is_cut_off(
    listen: Listen, raw: Callable[[str], RawPeer]
) -> None:
    listen("alice")
    conn = raw("alice")
    conn.sock.sendall(b"{}\n" * 20)
    received = b""
    while chunk := conn.sock.recv(65536):  # until the listener closes the connection
        received += chunk
    replies = [decode_reply(line) for line in received.splitlines()]
    assert [r.code for r in replies if isinstance(r, PeerError)] == ["invalid"] * 8
    assert len(replies) == 8


def test_rate_limit_refuses_and_consumes_the_seq(
    peers: Peers, listen: Listen, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ccc_relay.peer")
    clock = FakeClock()
    alice = listen("alice", rate_per_minute=2, clock=clock)
    bob = peers.config("bob")
    send_direct("alice", "1", config=bob, warn=quiet)
    send_direct("alice", "2", config=bob, warn=quiet)
    with pytest.raises(RelayError) as refused:
        send_direct("alice", "3", config=bob, warn=quiet)
    assert refused.value.code == "rate_limited" and refused.value.retry_after
    clock.advance(61)
    after = send_direct("alice", "4", config=bob, warn=quiet)
    assert after.seq == 4  # seq 3 was consumed by the refusal, as the relay does
    assert caplog.text.count("refused") == 1  # the signed refusal kept bob's count right
    assert [m.body for m in alice.inbox()] == ["1", "2", "4"]


# --- what the sender trusts --------------------------------------------------------


def test_sender_resyncs_after_losing_its_count(
    peers: Peers, listen: Listen, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ccc_relay.peer")
    alice = listen("alice")
    bob = peers.config("bob")
    send_direct("alice", "one", config=bob, warn=quiet)
    for suffix in ("", "-wal", "-shm"):  # bob's container lost its state
        Path(f"{bob.store_path}{suffix}").unlink(missing_ok=True)
    receipt = send_direct("alice", "two", config=bob, warn=quiet)
    assert receipt.seq == 2
    assert [m.body for m in alice.inbox()] == ["one", "two"]
    assert caplog.text.count("refused replay") == 1


def _impostor(path: Path, answer: Callable[[PeerSend], bytes]) -> threading.Thread:
    path.parent.mkdir(mode=0o770, parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                line = conn.makefile("rb").readline()
                conn.sendall(answer(msgspec.json.decode(line, type=PeerSend)))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_an_impostor_at_the_socket_path_cannot_fake_a_delivery(peers: Peers) -> None:
    wrong = PairKey.generate("alice", "bob")

    def forged_accept(frame: PeerSend) -> bytes:
        return encode(sign_accepted(wrong.reveal(), listener="alice", request=frame,
                                    id="d_faked-delivery", changes=[]))  # fmt: skip

    thread = _impostor(peers.socket("alice"), forged_accept)
    with pytest.raises(RelayError, match="not signed with the pair key") as refused:
        send_direct("alice", "secret plans", config=peers.config("bob"), warn=quiet)
    thread.join(10)
    assert refused.value.code == "auth_failed"
    with PeerStore(peers.config("bob").store_path) as store:
        assert store.last_sent("alice") == 0  # nothing is known to have been delivered


def test_an_answer_for_another_frame_does_not_verify(peers: Peers) -> None:
    key = peers.key("alice", "bob").reveal()
    first, second = signed(peers, seq=1, body="a"), signed(peers, seq=1, body="b")
    answer = sign_accepted(key, listener="alice", request=first, id="d_abcdefgh", changes=[])
    assert verify_reply(key, answer, listener="alice", request=first)
    assert not verify_reply(key, answer, listener="alice", request=second)
    assert not verify_reply(key, answer, listener="bob", request=first)


def test_unsigned_refusals_pass_on_their_code_without_touching_the_count(peers: Peers) -> None:
    thread = _impostor(peers.socket("alice"), lambda f: encode(
        PeerError(code="busy", message="\x1b[2Jtry again later", seq=f.seq)
    ))  # fmt: skip
    with pytest.raises(RelayError) as refused:
        send_direct("alice", "hi", config=peers.config("bob"), warn=quiet)
    thread.join(10)
    assert refused.value.code == "busy"
    assert "\x1b" not in refused.value.message  # a listener's sentence cannot drive the terminal
    with PeerStore(peers.config("bob").store_path) as store:
        assert store.last_sent("alice") == 0


def test_canonical_encoding_has_no_ambiguous_field_boundaries() -> None:
    # Without length prefixes both would read "s" "as" "s" "b" / "s" "a" "s" "sb".
    assert canonical("send", "as", "b") != canonical("send", "a", "sb")
    assert canonical("send", 5) != canonical("send", "5")
    assert canonical("send", None) != canonical("send", "")
    assert canonical("accepted", ["a", "b"]) != canonical("accepted", ["ab"])


# --- sanitisation and secrets --------------------------------------------------------


def test_receiver_sanitises_exactly_as_the_relay_does(peers: Peers, listen: Listen) -> None:
    alice = listen("alice")
    key_text = peers.key("alice", "bob").text()
    body = (
        "\x1b[31mred\x1b[0m te\u200bxt \u202eevil\u202c see /etc/passwd and ../../x "
        f"token ghp_{'a1' * 20} and our key {key_text}"
    )
    receipt = send_direct("alice", body, config=peers.config("bob"), warn=quiet)
    expected = sanitize(body)
    [stored] = alice.inbox()
    assert stored.body == expected.text
    assert receipt.changes == stored.changes == expected.describe()
    assert key_text not in stored.body and "/etc/passwd" not in stored.body
    assert "\x1b" not in stored.body and "\u202e" not in stored.body


def test_the_pair_key_never_reaches_logs_answers_or_cli_output(
    peers: Peers, listen: Listen, raw: Callable[[str], RawPeer],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="ccc_relay.peer")
    key = peers.key("alice", "bob")
    listen("alice")
    conn = raw("alice")
    answers = [conn.send(signed(peers, seq=1)), conn.send(signed(peers, seq=1))]
    conn.send(msgspec.structs.replace(signed(peers, seq=2), mac="0" * 64))
    result = CliRunner().invoke(peer, ["pair", "bob", "dave"], env=peers.env)
    dave_key = read_pair_key(peers.keys_dir / "bob+dave.key")
    for secret in (key.text(), key.reveal().hex(), dave_key.text()):
        assert secret not in caplog.text
        assert secret not in result.output
        assert all(secret not in encode(a).decode() for a in answers)


# --- configuration ----------------------------------------------------------------


def test_name_comes_from_the_credential_file_when_not_given(peers: Peers, tmp_path: Path) -> None:
    cred = tmp_path / "bob.cred"
    write_credential_file(cred, "bob", Credential.generate())
    config = PeerConfig.resolve(env={**peers.env, "CCC_CREDENTIAL": str(cred)})
    assert config.me == "bob"
    assert config.store_path == peers.state / "peer" / "inbox" / "bob.db"
    assert config.peer_dir == peers.state / "peer" / "shared"
    with pytest.raises(PeerConfigError, match="CCC_PEER_NAME"):
        PeerConfig.resolve(env=peers.env)


def test_explicit_key_files_and_dirs(peers: Peers, tmp_path: Path) -> None:
    env = {**peers.env, "CCC_PEER_KEY": str(peers.keys_dir / "alice+bob.key")}
    alice = PeerConfig.resolve(me="alice", env=env)
    assert set(alice.keys()) == {"bob"}
    with pytest.raises(PairKeyError, match="ccc peer pair alice carol"):
        alice.key_for("carol")
    # A key file named on its own must be this agent's; one found in a dir may not be.
    with pytest.raises(PairKeyError, match="not for carol"):
        PeerConfig.resolve(me="carol", env=env).keys()
    bob = PeerConfig.resolve(me="bob", key_paths=[peers.keys_dir], env=peers.env)
    assert set(bob.keys()) == {"alice", "carol"}


# --- when direct mode is used at all ---------------------------------------------------


def _dead_relay(state: Path) -> Callable[[], object]:
    """A real relay client pointed at a socket nobody serves."""
    client = RelayClient(Endpoint(state / "daemon.sock", "bob", Credential.generate()), timeout=5)

    def send() -> object:
        client.connect()
        raise AssertionError("no relay runs here")

    return send


@pytest.mark.parametrize(
    ("value", "mode"),
    [(None, None), ("", None), ("off", None), ("none", None), ("direct", "direct"),
     (" Direct ", "direct")],
)  # fmt: skip
def test_fallback_mode(value: str | None, mode: str | None) -> None:
    env = {} if value is None else {"CCC_FALLBACK": value}
    assert fallback_mode(env) == mode


def test_a_misspelt_fallback_is_an_error_not_a_guess() -> None:
    with pytest.raises(PeerConfigError, match="'drect' is not a fallback mode"):
        fallback_mode({"CCC_FALLBACK": "drect"})


def test_no_fallback_unless_configured(peers: Peers, listen: Listen) -> None:
    alice = listen("alice")
    warnings: list[str] = []
    with pytest.raises(RelayUnavailable) as unavailable:
        relay_or_direct(_dead_relay(peers.state), "alice", "hi", env=peers.env,
                        warn=warnings.append, config=peers.config("bob"))  # fmt: skip
    assert not isinstance(unavailable.value, PeerUnavailable)  # the relay's own error
    assert warnings == [] and alice.inbox() == []


def test_configured_fallback_is_loud(
    peers: Peers, listen: Listen, capfd: pytest.CaptureFixture[str]
) -> None:
    alice = listen("alice")
    env = {**peers.env, "CCC_FALLBACK": "direct"}
    receipt = relay_or_direct(_dead_relay(peers.state), "alice", "hi", env=env,
                              config=peers.config("bob"))  # fmt: skip
    err = capfd.readouterr().err
    assert err.startswith("warning: relay unavailable (")
    assert err.endswith(
        "; using DIRECT mode to alice: messages are not audited or policy-checked by a relay\n"
    )
    assert isinstance(receipt, DirectReceipt)
    assert [m.id for m in alice.inbox()] == [receipt.id]


def test_a_relay_that_refuses_is_never_bypassed(peers: Peers, listen: Listen) -> None:
    alice = listen("alice")
    warnings: list[str] = []

    def forbidden() -> object:
        raise RelayError("forbidden", "no allow rule from bob to alice")

    env = {**peers.env, "CCC_FALLBACK": "direct"}
    with pytest.raises(RelayError, match="no allow rule"):
        relay_or_direct(forbidden, "alice", "hi", env=env, warn=warnings.append,
                        config=peers.config("bob"))  # fmt: skip
    assert warnings == [] and alice.inbox() == []


def test_a_working_relay_is_used_and_direct_flag_skips_it(peers: Peers, listen: Listen) -> None:
    alice = listen("alice")
    warnings: list[str] = []
    env = {**peers.env, "CCC_FALLBACK": "direct"}
    assert relay_or_direct(lambda: "relayed", "alice", "hi", env=env, warn=warnings.append,
                           config=peers.config("bob")) == "relayed"  # fmt: skip
    assert warnings == []

    def must_not_run() -> object:
        raise AssertionError("--direct must not try the relay")

    relay_or_direct(must_not_run, "alice", "hi", direct=True, env=peers.env,
                    warn=warnings.append, config=peers.config("bob"))  # fmt: skip
    assert warnings == [direct_warning("alice", "--direct given")]
    assert len(alice.inbox()) == 1


def test_relay_only_options_are_refused_rather_than_dropped(peers: Peers, listen: Listen) -> None:
    alice = listen("alice")
    env = {**peers.env, "CCC_FALLBACK": "direct"}
    with pytest.raises(RelayError, match="--thread needs the relay"):
        relay_or_direct(_dead_relay(peers.state), "alice", "hi", env=env, warn=quiet,
                        relay_only_options=["--thread"], config=peers.config("bob"))  # fmt: skip
    assert alice.inbox() == []


# --- the CLI --------------------------------------------------------------------------


def test_cli_pair_send_inbox(peers: Peers, listen: Listen) -> None:
    runner = CliRunner()
    made = runner.invoke(peer, ["pair", "dave", "erin"], env=peers.env)
    assert made.exit_code == 0, made.output
    assert "dave+erin.key (mode 0600" in made.output
    again = runner.invoke(peer, ["pair", "dave", "erin"], env=peers.env)
    assert again.exit_code == 7 and "--rotate" in again.output  # conflict
    old = read_pair_key(peers.keys_dir / "dave+erin.key")
    assert runner.invoke(peer, ["pair", "erin", "dave", "--rotate"], env=peers.env).exit_code == 0
    assert read_pair_key(peers.keys_dir / "dave+erin.key").reveal() != old.reveal()

    listen("erin")
    sent = runner.invoke(peer, ["--as", "dave", "send", "erin", "hello erin"], env=peers.env)
    assert sent.exit_code == 0, sent.output
    assert "using DIRECT mode to erin" in sent.output and "(direct)" in sent.output
    peeked = runner.invoke(peer, ["--as", "erin", "inbox", "--peek"], env=peers.env)
    assert "from dave" in peeked.output and "hello erin" in peeked.output
    assert "did not pass through a relay" in peeked.output
    read = runner.invoke(peer, ["--as", "erin", "inbox", "--json"], env=peers.env)
    [message] = msgspec.json.decode(read.stdout)["messages"]
    assert message["body"] == "hello erin"
    empty = runner.invoke(peer, ["--as", "erin", "inbox"], env=peers.env)
    assert "no messages" in empty.output


def test_cli_send_without_a_listener_exits_3(peers: Peers) -> None:
    peers.socket("alice").parent.mkdir(mode=0o770, parents=True)
    result = CliRunner().invoke(peer, ["--as", "bob", "send", "alice", "hi"], env=peers.env)
    assert result.exit_code == 3
    assert "no direct-mode listener" in result.output and "[peer_unavailable]" in result.output


def test_cli_send_without_a_pair_key_exits_8(peers: Peers) -> None:
    result = CliRunner().invoke(peer, ["--as", "alice", "send", "carol", "hi"], env=peers.env)
    assert result.exit_code == 8 and "ccc peer pair alice carol" in result.output  # credential


@pytest.mark.slow
def test_cli_listen_serves_until_sigterm(peers: Peers) -> None:
    env = {**os.environ, **peers.env, "CCC_PEER_NAME": "alice"}
    code = "from ccc_relay.cli.peer_cmd import peer; peer(prog_name='ccc peer')"
    proc = subprocess.Popen([sys.executable, "-c", code, "listen"], env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stderr is not None
        warning = proc.stderr.readline()
        assert "DIRECT mode" in warning and "not audited" in warning
        ready = proc.stderr.readline()
        assert ready.startswith("listening as alice on ") and ready.rstrip().endswith("for bob")
        receipt = send_direct("alice", "over the wire", config=peers.config("bob"), warn=quiet)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert not os.path.lexists(peers.socket("alice"))
    with PeerStore(peers.config("alice").store_path) as store:
        assert [m.id for m in store.messages()] == [receipt.id]


# --- the store ----------------------------------------------------------------------


def test_store_commits_seq_and_message_together(tmp_path: Path) -> None:
    from ccc_relay.peer.inbox import Received

    with PeerStore(tmp_path / "inbox" / "alice.db") as store:
        message = Received(id="d_" + secrets.token_urlsafe(8), sender="bob", recipient="alice",
                           seq=1, sent_at=1.0, received_at=2.0, body="hi")  # fmt: skip
        store.commit_received("bob", 1, message)
        with pytest.raises(ProtocolError) as replay:
            store.commit_received("bob", 1, message)
        assert replay.value.code is ErrorCode.REPLAY
        assert store.last_received("bob") == 1
        assert [m.body for m in store.messages()] == ["hi"]
        assert store.mark_read([message.id]) == 1
        assert store.messages() == []
