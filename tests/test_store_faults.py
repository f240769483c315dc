"""The durable store fails under a running relay: every waiting agent and operator
is answered at once, nothing is reported as done that was not, nothing held or
queued is lost, and the failure is logged (and audited where the audit can
still be written).

The fault is injected at the store's seam on the relay's own loop: its
``commit`` (or one statement inside a transaction) raises what a failing disk
raises, sqlite3.OperationalError("disk I/O error").
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest

from ccc_relay.client import RelayClient, RelayError
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.protocol.frames import Held
from ccc_relay.store import Store
from tests.support import RunningRelay
from tests.test_relay import audit_lines, hello, raw, read_frames, send_frames, wait_for

DISK = "disk I/O error"
PROMPT = 5.0  # seconds; the client's own timeout is 30


def disk_error(*_args: Any) -> None:
    raise sqlite3.OperationalError(DISK)


def break_commits(relay: RunningRelay) -> None:
    """From now on every COMMIT fails (on the relay's loop, between batches)."""

    def patch() -> None:
        relay.daemon.relay.committer._store.commit = disk_error  # type: ignore[method-assign,union-attr]

    relay.call(patch)


def client(endpoint: Endpoint) -> RelayClient:
    c = RelayClient(endpoint, timeout=30)
    c.connect()
    return c


def timed(fn: Callable[[], Any]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        fn()
    except BaseException as exc:  # the caller asserts what it was
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def stored(relay: RunningRelay) -> tuple[list[str], dict[str, int]]:
    """What relay.db holds, read from the file: held ids and queue depths."""
    store = Store(relay.config.db_path)
    try:
        return [m.id for m in store.held()], store.queue_depths()
    finally:
        store.close()


def pair(relay: RunningRelay, action: str = "allow") -> tuple[Endpoint, Endpoint]:
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.admin.request("allow", sender="alice", recipient="bob", action=action)
    return alice, bob


# --- (a) fetch --------------------------------------------------------------------------


def test_a_fetch_on_a_live_session_is_answered_unavailable_promptly(relay: RunningRelay) -> None:
    alice, bob = pair(relay)
    with client(alice) as a:
        a.send("bob", "before the fault")
    b = client(bob)
    break_commits(relay)
    caught, took = timed(b.fetch)
    assert isinstance(caught, RelayError), caught
    assert caught.code == "unavailable"
    assert DISK in caught.message
    assert took < PROMPT
    # And again, now that the committer has stopped: refused on the spot.
    caught, took = timed(b.fetch)
    assert isinstance(caught, RelayError) and caught.code == "unavailable"
    assert took < PROMPT
    b.close()


def test_a_fetch_after_the_failure_is_unavailable_on_the_wire(relay: RunningRelay) -> None:
    """The same, byte for byte, without the client library in between."""
    _alice, bob = pair(relay)
    sock = raw(relay)
    send_frames(sock, hello(bob))
    [welcome] = read_frames(sock, 1)
    assert welcome["type"] == "welcome"
    break_commits(relay)
    send_frames(sock, {"type": "fetch"}, {"type": "ack", "ids": ["m_abcdefgh1"]})
    frames = read_frames(sock, 2)
    assert [(f["type"], f["code"]) for f in frames] == [
        ("error", "unavailable"),
        ("error", "unavailable"),
    ]
    assert all("seq" not in f for f in frames)
    send_frames(sock, {"type": "ping", "data": "still there"})
    assert read_frames(sock, 1) == [{"type": "pong", "data": "still there"}]  # not closed


# --- (b) send ---------------------------------------------------------------------------


def test_a_send_is_answered_unavailable_and_nothing_is_accepted(
    relay_factory: Callable[..., RunningRelay],
) -> None:
    relay = relay_factory()
    alice, bob = pair(relay)
    a = client(alice)
    ok = a.send("bob", "durable")
    break_commits(relay)
    for text in ("lost?", "and again"):
        caught, took = timed(lambda text=text: a.send("bob", text))
        assert isinstance(caught, RelayError), caught
        assert caught.code == "unavailable"
        assert took < PROMPT
    status = relay.admin.request("status")
    assert status["accepting"] is False and DISK in status["failure"]
    assert status["counters"]["accepted"] == 1
    assert status["counters"]["refused"].get("unavailable") == 2
    a.close()
    relay.stop()
    # What the store holds is what was accepted: the one message before the fault.
    assert stored(relay) == ([], {"bob": 1})
    relay = relay_factory()
    with client(bob) as b:
        assert [m.id for m in b.inbox()] == [ok.id]


def test_sends_in_one_read_are_each_answered_unavailable_with_their_seq(
    relay: RunningRelay,
) -> None:
    alice, _bob = pair(relay)
    sock = raw(relay)
    send_frames(sock, hello(alice))
    read_frames(sock, 1)
    break_commits(relay)
    send_frames(
        sock,
        b"".join(
            f'{{"type":"send","seq":{n},"to":"bob","body":"b{n}"}}\n'.encode() for n in (1, 2, 3)
        ),
    )
    frames = read_frames(sock, 3)
    assert [(f["type"], f.get("code"), f.get("seq")) for f in frames] == [
        ("error", "unavailable", 1),
        ("error", "unavailable", 2),
        ("error", "unavailable", 3),
    ]


def test_a_send_that_rolled_back_is_not_audited_as_accepted(relay: RunningRelay) -> None:
    alice, _bob = pair(relay)
    break_commits(relay)
    with client(alice) as a, pytest.raises(RelayError, match="unavailable"):
        a.send("bob", "never stored")
    relay.stop()
    assert stored(relay) == ([], {})
    assert [x for x in audit_lines(relay) if x["event"] == "accepted"] == []


# --- (c) approve ------------------------------------------------------------------------


def hold_one(relay: RunningRelay) -> tuple[str, Endpoint]:
    alice, bob = pair(relay, action="hold")
    with client(alice) as a:
        answer = a.send("bob", "deploy to production?")
    assert isinstance(answer, Held)
    return answer.id, bob


def still_there(relay_factory: Callable[..., RunningRelay], held_id: str, bob: Endpoint) -> None:
    """After a restart on the same state: the message is held or queued -- then it
    can be approved and reaches bob."""
    relay = relay_factory()
    held = [h["id"] for h in relay.admin.request("held_list")]
    queued = {a["name"]: a["queued"] for a in relay.admin.request("status")["agents"]}
    assert (held, queued["bob"]) in (([held_id], 0), ([], 1)), (held, queued)
    if held:
        relay.admin.request("approve", id=held_id)
    with client(bob) as b:
        [message] = b.inbox()
    assert (message.id, message.body) == (held_id, "deploy to production?")


def test_approve_while_the_store_fails_is_an_error_and_the_message_is_kept(
    relay_factory: Callable[..., RunningRelay],
) -> None:
    relay = relay_factory()
    held_id, bob = hold_one(relay)
    break_commits(relay)
    with pytest.raises(RelayError) as caught:
        relay.admin.request("approve", id=held_id)
    assert caught.value.code == "unavailable"
    with pytest.raises(RelayError) as caught:  # the committer has stopped: refused at once
        relay.admin.request("approve", id=held_id)
    assert caught.value.code == "unavailable"
    relay.stop()
    assert stored(relay) == ([held_id], {})
    still_there(relay_factory, held_id, bob)


@pytest.mark.parametrize("where", ["insert", "commit"])
@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_a_decision_failing_inside_its_own_transaction_keeps_the_message_held(
    relay_factory: Callable[..., RunningRelay], decision: str, where: str
) -> None:
    """The held row is taken, then the queue insert (the approved message, or the
    sender's notice) or the COMMIT fails: the one transaction rolls back, and the
    message is still held."""
    relay = relay_factory()
    held_id, bob = hold_one(relay)

    def patch() -> None:
        store = relay.daemon.relay.committer._store  # type: ignore[union-attr]
        real_take = store.take_held

        def take_then_fail(message_id: str) -> Any:
            taken = real_take(message_id)
            if where == "insert":
                store.insert_messages = disk_error
            else:
                store.commit = disk_error
            return taken

        store.take_held = take_then_fail

    relay.call(patch)
    with pytest.raises(RelayError) as caught:
        relay.admin.request(decision, id=held_id)
    assert caught.value.code == "unavailable"
    relay.stop()
    assert stored(relay) == ([held_id], {})
    still_there(relay_factory, held_id, bob)


def test_reject_while_the_store_fails_keeps_the_message_held(
    relay_factory: Callable[..., RunningRelay],
) -> None:
    relay = relay_factory()
    held_id, bob = hold_one(relay)
    break_commits(relay)
    with pytest.raises(RelayError) as caught:
        relay.admin.request("reject", id=held_id, reason="no")
    assert caught.value.code == "unavailable"
    relay.stop()
    assert stored(relay) == ([held_id], {})
    still_there(relay_factory, held_id, bob)


# --- (d) logged, and audited where the audit still works ----------------------------------


def test_the_failure_is_logged_loudly(
    relay: RunningRelay, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = pair(relay)
    caplog.set_level(logging.INFO, logger="ccc_relay")
    b = client(bob)
    break_commits(relay)
    with pytest.raises(RelayError, match="unavailable"):
        b.fetch()
    # Once the store has failed, a new session is refused too: it could not be recorded.
    with pytest.raises(RelayError, match="unavailable"), client(alice) as a:
        a.send("bob", "x")
    b.close()
    critical = [r for r in caplog.records if r.levelno >= logging.CRITICAL]
    assert any(DISK in r.getMessage() and "stops accepting" in r.getMessage() for r in critical)
    # The audit goes through the same store: its lines for the unavailable answers
    # cannot be written, and the log says which were lost.
    lost = [r.getMessage() for r in caplog.records if "audit line(s) lost" in r.getMessage()]
    assert any("unavailable" in text for text in lost), lost


def test_a_failed_read_is_answered_and_audited_while_the_store_goes_on(
    relay: RunningRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """A defect in one store operation (not the disk) fails only that job: the
    agent is answered ``internal``, the audit still works and records it, the
    relay goes on."""
    alice, bob = pair(relay)
    with client(alice) as a:
        sent = a.send("bob", "waiting")

    def patch() -> None:
        store = relay.daemon.relay.committer._store  # type: ignore[union-attr]
        real_due = store.due

        def due_once(*args: Any) -> Any:
            store.due = real_due
            raise RuntimeError("a defect in one read")

        store.due = due_once

    relay.call(patch)
    b = client(bob)
    caught, took = timed(b.fetch)
    assert isinstance(caught, RelayError) and caught.code == "internal", caught
    assert took < PROMPT
    assert [m.id for m in b.inbox()] == [sent.id]  # the next fetch works
    b.close()
    assert relay.admin.request("status")["accepting"] is True
    assert any("a defect in one read" in r.getMessage() or r.exc_info for r in caplog.records)

    def audited() -> list[dict[str, Any]]:
        return [x for x in audit_lines(relay) if x["event"] == "internal"]

    wait_for(lambda: bool(audited()))
    [line] = audited()
    assert line["agent"] == "bob" and line["work"] == "FetchRead"


def test_the_relays_own_tasks_outlive_a_failed_store(relay: RunningRelay) -> None:
    """The scheduler and the audit upkeep read and write through the committer too:
    a failed store must not end the task group that runs the relay."""
    alice, _bob = pair(relay)
    break_commits(relay)
    with client(alice) as a, pytest.raises(RelayError):
        a.send("bob", "fails the store")
    shell = relay.daemon.relay
    assert shell is not None
    relay.call(shell._schedule_changed.set)  # the scheduler reads now, and fails
    time.sleep(0.3)
    assert relay.thread.is_alive()
    assert relay.admin.request("status")["accepting"] is False
