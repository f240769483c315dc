"""Both clients reconnect by themselves, with backoff, resuming their session.

Against a real relay (the in-process ``relay`` fixture, stopped and started
again on the same state dir): a subscriber goes on receiving, a sender's
numbering goes on, a redelivered message is dropped. Against a scripted relay
(``ScriptedRelay``, a Unix socket whose every connection follows a script):
exactly which sends are sent again after a broken connection -- only those the
relay's ``welcome.last_seq`` proves it never took -- and which raise.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import pytest

from ccc_relay.client import AsyncRelayClient, Endpoint, RelayClient, RelayError, RelayUnavailable
from ccc_relay.client.reconnect import Backoff, retryable
from ccc_relay.credentials import Credential
from ccc_relay.protocol.codec import encode
from ccc_relay.protocol.frames import Accepted, Error, Welcome
from tests.support import RunningRelay

FAST = Backoff(initial=0.01, maximum=0.2)
SESSION = "s_first-session"
OTHER = "s_second-session"


# --- the policy ---------------------------------------------------------------------


def test_backoff_starts_at_once_grows_with_jitter_and_stays_bounded() -> None:
    import random

    policy = Backoff(initial=0.05, maximum=5.0)
    delays = policy.delays(random.Random(7))
    waits = [next(delays) for _ in range(40)]
    assert waits[0] == 0.0
    for n, wait in enumerate(waits[1:]):
        ceiling = min(5.0, 0.05 * 2**n)
        assert ceiling / 2 <= wait <= ceiling
    assert max(waits) <= 5.0 and waits[-1] >= 2.5  # it reached the ceiling and stayed
    assert len({round(w, 6) for w in waits[10:]}) > 1  # jittered, not in lockstep
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=0)


def test_only_waits_that_can_help_are_retried() -> None:
    for code in ("relay_unavailable", "busy", "unavailable", "rate_limited", "session_expired"):
        assert retryable(RelayError(code, "x"))
    for code in ("auth_failed", "quarantined", "unsupported_version", "bad_signature"):
        assert not retryable(RelayError(code, "x"))


# --- a scripted relay -----------------------------------------------------------------

Script = Callable[["Peer"], None]


class Peer:
    """One connection of the scripted relay: frames in as dicts, frames out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader: BinaryIO = sock.makefile("rb")

    def read(self) -> dict[str, Any]:
        line = self.reader.readline()
        assert line, "the client closed the connection"
        frame: dict[str, Any] = msgspec.json.decode(line)
        return frame

    def write(self, frame: msgspec.Struct) -> None:
        self.sock.sendall(encode(frame))

    def welcome(self, session: str, last_seq: int) -> dict[str, Any]:
        """Read a hello and welcome it; return the hello."""
        hello = self.read()
        assert hello["type"] == "hello"
        self.write(
            Welcome(
                session=session,
                agent=hello["agent"],
                expires_at=time.time() + 3600,
                last_seq=last_seq,
                max_message_size=1000,
                rate_limit_per_minute=100.0,
            )
        )
        return hello

    def accept(self, send: dict[str, Any]) -> None:
        self.write(Accepted(seq=send["seq"], id=f"m_{send['body']:0>8}"))


class ScriptedRelay:
    """Each connection runs the next script; the sends it read are recorded."""

    def __init__(self, path: Path, scripts: list[Script]) -> None:
        self.path = path
        self.scripts = list(scripts)
        self.hellos: list[dict[str, Any]] = []
        self.failure: BaseException | None = None
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            for script in self.scripts:
                sock, _ = self.listener.accept()
                peer = Peer(sock)
                try:
                    script(peer)
                finally:
                    peer.reader.close()
                    sock.close()
        except BaseException as exc:  # reported by finish()
            self.failure = exc

    def finish(self) -> None:
        self.thread.join(10)
        self.listener.close()
        if self.failure is not None:
            raise self.failure
        assert not self.thread.is_alive(), "the client did not go through every script"


@pytest.fixture
def endpoint(state_dir: Path) -> Endpoint:
    return Endpoint(state_dir / "scripted.sock", "alice", Credential.generate())


@pytest.fixture
def scripted(endpoint: Endpoint) -> Iterator[Callable[[list[Script]], ScriptedRelay]]:
    relays: list[ScriptedRelay] = []

    def make(scripts: list[Script]) -> ScriptedRelay:
        relays.append(ScriptedRelay(endpoint.socket_path, scripts))
        return relays[-1]

    yield make
    for relay in relays:
        relay.listener.close()


def breaks_after_sends(count: int, sent: list[dict[str, Any]]) -> Script:
    """Welcome a new session, read ``count`` sends, and drop the connection unanswered."""

    def script(peer: Peer) -> None:
        peer.welcome(SESSION, 0)
        for _ in range(count):
            sent.append(peer.read())

    return script


def resumes(last_seq: int, sent: list[dict[str, Any]], answer: int) -> Script:
    """Welcome a resume of SESSION with ``last_seq``; accept ``answer`` sends."""

    def script(peer: Peer) -> None:
        hello = peer.welcome(SESSION, last_seq)
        assert hello.get("resume") == SESSION
        for _ in range(answer):
            send = peer.read()
            sent.append(send)
            peer.accept(send)
        peer.read()  # the client's bye

    return script


# --- which sends are sent again: the blocking client -------------------------------------


def test_sync_send_the_relay_never_took_is_sent_again_with_the_next_seq(
    endpoint: Endpoint, scripted: Callable[[list[Script]], ScriptedRelay]
) -> None:
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    relay = scripted([breaks_after_sends(1, first), resumes(0, second, answer=1)])
    client = RelayClient(endpoint, timeout=5, reconnect=FAST)
    client.connect()
    answer = client.send("bob", "one")
    client.close()
    relay.finish()
    assert (answer.seq, answer.id) == (1, "m_00000one")
    assert [s["seq"] for s in first] == [1] and [s["seq"] for s in second] == [1]
    assert client.reconnects == 1


def test_sync_send_the_relay_took_raises_outcome_unknown_and_numbering_goes_on(
    endpoint: Endpoint, scripted: Callable[[list[Script]], ScriptedRelay]
) -> None:
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    relay = scripted([breaks_after_sends(1, first), resumes(1, second, answer=1)])
    client = RelayClient(endpoint, timeout=5, reconnect=FAST)
    client.connect()
    with pytest.raises(RelayUnavailable, match="whether it was accepted is unknown"):
        client.send("bob", "one")  # seq 1 reached the relay: never sent twice
    assert client.send("bob", "two").seq == 2
    client.close()
    relay.finish()
    assert [(s["seq"], s["body"]) for s in first + second] == [(1, "one"), (2, "two")]


def test_sync_resume_refused_falls_back_to_a_new_session(
    endpoint: Endpoint, scripted: Callable[[list[Script]], ScriptedRelay]
) -> None:
    first: list[dict[str, Any]] = []

    def refuses_the_resume(peer: Peer) -> None:
        hello = peer.read()
        assert hello.get("resume") == SESSION
        peer.write(Error(code="session_expired", message="unknown session"))
        hello = peer.welcome(OTHER, 0)
        assert "resume" not in hello
        send = peer.read()
        assert send["seq"] == 1  # a new session numbers from 1
        peer.accept(send)
        peer.read()

    relay = scripted([breaks_after_sends(1, first), refuses_the_resume])
    client = RelayClient(endpoint, timeout=5, reconnect=FAST)
    client.connect()
    # A new session knows nothing of the old one's seqs: the outcome is unknown.
    with pytest.raises(RelayUnavailable, match="unknown"):
        client.send("bob", "one")
    assert client.welcome is not None and client.welcome.session == OTHER
    assert client.send("bob", "two").seq == 1
    client.close()
    relay.finish()


def test_sync_reconnecting_stops_at_a_refusal_no_wait_changes(
    endpoint: Endpoint, scripted: Callable[[list[Script]], ScriptedRelay]
) -> None:
    def refuses(peer: Peer) -> None:
        peer.read()
        peer.write(Error(code="auth_failed", message="authentication failed"))

    relay = scripted([breaks_after_sends(0, []), refuses])
    client = RelayClient(endpoint, timeout=5, reconnect=FAST)
    client.connect()
    with pytest.raises(RelayError, match="auth_failed"):
        client.ping()  # the connection breaks under it; the new one is refused
    relay.finish()
    with pytest.raises(RelayUnavailable, match="not connected"):
        client.ping()  # no further attempt


def test_sync_gives_up_after_the_configured_time(
    endpoint: Endpoint, scripted: Callable[[list[Script]], ScriptedRelay]
) -> None:
    relay = scripted([breaks_after_sends(0, [])])
    client = RelayClient(endpoint, timeout=5, reconnect=Backoff(0.01, 0.05, give_up_after=0.3))
    client.connect()
    relay.finish()
    endpoint.socket_path.unlink()  # nobody listens any more
    started = time.monotonic()
    with pytest.raises(RelayUnavailable, match="no relay is listening"):
        client.ping()
    assert 0.2 < time.monotonic() - started < 2


def test_without_reconnect_a_broken_connection_raises_as_before(
    endpoint: Endpoint, scripted: Callable[[list[Script]], ScriptedRelay]
) -> None:
    relay = scripted([breaks_after_sends(1, [])])
    client = RelayClient(endpoint, timeout=5)
    client.connect()
    with pytest.raises(RelayUnavailable, match="closed the connection"):
        client.send("bob", "one")
    relay.finish()
    assert client.reconnects == 0


# --- which sends are sent again: the asyncio client ----------------------------------


def test_async_pipelined_sends_past_the_high_water_mark_are_sent_again(
    endpoint: Endpoint, scripted: Callable[[list[Script]], ScriptedRelay]
) -> None:
    """Three sends in flight when the connection breaks; the resumed session's
    last_seq is 1: seq 1 was taken (outcome unknown), 2 and 3 were not and go
    again, numbered 2 and 3 on the new connection, and so does a send made
    while the client was reconnecting."""
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    relay = scripted([breaks_after_sends(3, first), resumes(1, second, answer=3)])

    async def scenario() -> list[Any]:
        broke = asyncio.Event()
        client = AsyncRelayClient(endpoint, reconnect=FAST, on_reconnect=lambda _: broke.set())
        await client.connect()
        futures = [client.send_nowait("bob", body) for body in ("one", "two", "three")]
        await asyncio.wait_for(broke.wait(), 10)  # the relay dropped the connection
        futures.append(client.send_nowait("bob", "four"))  # parked until the relay is back
        results = await asyncio.gather(*futures, return_exceptions=True)
        await client.close()
        return results

    results = asyncio.run(scenario())
    relay.finish()
    assert isinstance(results[0], RelayUnavailable) and "unknown" in results[0].message
    assert [(r.seq, r.id) for r in results[1:]] == [
        (2, "m_00000two"),
        (3, "m_000three"),
        (4, "m_0000four"),
    ]
    assert [(s["seq"], s["body"]) for s in first] == [(1, "one"), (2, "two"), (3, "three")]
    assert [(s["seq"], s["body"]) for s in second] == [(2, "two"), (3, "three"), (4, "four")]


def test_async_requests_wait_for_the_reconnect_and_ask_again(
    endpoint: Endpoint, scripted: Callable[[list[Script]], ScriptedRelay]
) -> None:
    from ccc_relay.protocol.frames import Pong

    def breaks_on_ping(peer: Peer) -> None:
        peer.welcome(SESSION, 0)
        assert peer.read()["type"] == "ping"

    def answers_ping(peer: Peer) -> None:
        assert peer.welcome(SESSION, 0).get("resume") == SESSION
        assert peer.read()["type"] == "ping"
        peer.write(Pong())
        peer.read()

    relay = scripted([breaks_on_ping, answers_ping])

    async def scenario() -> int:
        client = AsyncRelayClient(endpoint, reconnect=FAST)
        await client.connect()
        await client.ping()
        await client.close()
        return client.reconnects

    assert asyncio.run(scenario()) == 1
    relay.finish()


def test_async_wait_for_message_raises_once_the_connection_is_over(
    endpoint: Endpoint, scripted: Callable[[list[Script]], ScriptedRelay]
) -> None:
    """Without reconnect, a waiter on a connection that ends is told so at once
    rather than left waiting for its timeout."""
    relay = scripted([breaks_after_sends(0, [])])

    async def scenario() -> float:
        client = AsyncRelayClient(endpoint)
        await client.connect()
        started = time.monotonic()
        with pytest.raises(RelayUnavailable):
            await client.wait_for_message(30)
        await client.close()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 5
    relay.finish()


# --- against a real relay, restarted ------------------------------------------------------


def restart(relay: RunningRelay, relay_factory: Callable[..., RunningRelay]) -> RunningRelay:
    relay.stop()  # says bye to every connection, as a restart does
    return relay_factory(config=relay.config)


def test_sync_subscriber_and_sender_go_on_after_a_relay_restart(
    relay: RunningRelay, relay_factory: Callable[..., RunningRelay]
) -> None:
    alice_ep, bob_ep = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    alice = RelayClient(alice_ep, timeout=10, reconnect=FAST)
    bob = RelayClient(bob_ep, timeout=10, reconnect=FAST)
    alice.connect()
    bob.connect()
    try:
        bob.subscribe()
        first = alice.send("bob", "before")
        got = bob.wait_for_message(10)
        assert got is not None and got.id == first.id  # taken in, not acknowledged

        sessions = (alice.welcome.session, bob.welcome.session)  # type: ignore[union-attr]
        relay = restart(relay, relay_factory)

        second = alice.send("bob", "after")  # the broken connection is replaced first
        assert second.seq == first.seq + 1  # the session resumed: numbering goes on
        # The relay delivers "before" again (never acknowledged): dropped here.
        got = bob.wait_for_message(10)
        assert got is not None and (got.id, got.body) == (second.id, "after")
        assert bob.ack([first.id, second.id]) == 2
        assert (alice.welcome.session, bob.welcome.session) == sessions  # type: ignore[union-attr]
        assert (alice.reconnects, bob.reconnects) == (1, 1)
    finally:
        alice.close()
        bob.close()


def test_sync_subscriber_waits_through_a_relay_that_is_down_for_a_while(
    relay: RunningRelay, relay_factory: Callable[..., RunningRelay]
) -> None:
    alice_ep, bob_ep = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    bob = RelayClient(bob_ep, timeout=10, reconnect=FAST)
    bob.connect()
    bob.subscribe()
    relay.stop()
    config = relay.config

    def later() -> None:
        time.sleep(0.6)
        started = relay_factory(config=config)
        with started.client(alice_ep) as alice:
            alice.send("bob", "back")

    helper = threading.Thread(target=later)
    helper.start()
    try:
        got = bob.wait_for_message(15)
        assert got is not None and got.body == "back"
    finally:
        helper.join(15)
        bob.close()


def test_sync_wait_for_message_times_out_while_the_relay_is_down(
    relay: RunningRelay,
) -> None:
    bob = RelayClient(relay.add_agent("bob"), timeout=10, reconnect=FAST)
    bob.connect()
    bob.subscribe()
    relay.stop()
    started = time.monotonic()
    assert bob.wait_for_message(0.5) is None
    assert time.monotonic() - started < 2
    bob.close()


def test_async_subscriber_and_sender_go_on_after_a_relay_restart(
    relay: RunningRelay, relay_factory: Callable[..., RunningRelay]
) -> None:
    alice_ep, bob_ep = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    box: dict[str, RunningRelay] = {"relay": relay}

    async def scenario() -> None:
        alice = AsyncRelayClient(alice_ep, reconnect=FAST)
        bob = AsyncRelayClient(bob_ep, reconnect=FAST)
        await alice.connect()
        await bob.connect()
        try:
            await bob.subscribe()
            first = await alice.send("bob", "before")
            got = await bob.wait_for_message(10)
            assert got is not None and got.id == first.id

            box["relay"] = await asyncio.to_thread(restart, box["relay"], relay_factory)
            second = await alice.send("bob", "after")
            assert second.seq == first.seq + 1
            got = await bob.wait_for_message(10)
            assert got is not None and (got.id, got.body) == (second.id, "after")
            assert await bob.ack([first.id, second.id]) == 2
            assert (alice.reconnects, bob.reconnects) == (1, 1)
            assert bob.messages.empty()
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


def test_a_connection_the_relay_ended_leaves_no_open_socket_behind(
    endpoint: Endpoint, scripted: Callable[[list[Script]], ScriptedRelay]
) -> None:
    """When the relay ends the connection (or the reader task is cancelled, as a
    loop's shutdown does), the client closes its own end at once: a client
    dropped without ``close()`` leaves no open transport for the garbage
    collector (an "unclosed transport" ResourceWarning, and under uvloop a
    loop whose ``close()`` waits for that handle for ever)."""
    import gc
    import warnings

    relay = scripted([breaks_after_sends(0, [])])

    async def scenario() -> None:
        client = AsyncRelayClient(endpoint)
        await client.connect()
        with pytest.raises(RelayUnavailable):
            await client.wait_for_message(10)  # the relay hung up
        del client

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(scenario())
        gc.collect()
    relay.finish()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], caught
