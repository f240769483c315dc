"""A real relay delivers a message twice; both client libraries hand it out once.

Delivery is at least once: a message delivered but not acknowledged goes back
in the queue when the session it was in flight on ends, and the relay sends
it again on the agent's next session (docs/protocol.md, "Delivery"). A client
object that connects again remembers the ids it took in, so that second
delivery must not reach the agent. Each test checks the relay's audit log to
prove the second delivery really happened, and goes only through the public
API: ``connect``/``close``, ``fetch_page``, ``subscribe``, ``wait_for_message``,
``ack``.
"""

from __future__ import annotations

import asyncio
import json
import time

from ccc_relay.client import AsyncRelayClient, Endpoint, RelayClient
from tests.support import RunningRelay


def deliveries(relay: RunningRelay, message_id: str) -> int:
    """How many times the relay's audit log says it delivered ``message_id``."""
    count = 0
    for path in sorted(relay.config.audit.log_path.iterdir()):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line still being written
            if record.get("event") == "delivered" and message_id in record.get("ids", ()):
                count += 1
    return count


def delivered_twice(relay: RunningRelay, message_id: str) -> None:
    deadline = time.monotonic() + 5
    while deliveries(relay, message_id) < 2:
        assert time.monotonic() < deadline, "the relay did not deliver the message again"
        time.sleep(0.02)
    assert deliveries(relay, message_id) == 2


def one_message_for_bob(relay: RunningRelay) -> tuple[str, Endpoint, Endpoint]:
    """Alice and bob exist, alice may write to bob, and one message waits for him."""
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        return a.send("bob", "say this once").id, alice, bob


def send_as(relay: RunningRelay, sender: Endpoint, text: str) -> str:
    with relay.client(sender) as client:
        return client.send("bob", text).id


# --- the blocking client -------------------------------------------------------


def test_sync_fetch_after_a_reconnect_drops_the_relays_second_delivery(
    relay: RunningRelay,
) -> None:
    sent, _, endpoint = one_message_for_bob(relay)
    bob = RelayClient(endpoint, timeout=10)
    bob.connect()
    try:
        assert [m.id for m in bob.fetch()] == [sent]  # delivered, not acknowledged
        bob.close()  # it was in flight on that session: the relay will send it again
        bob.connect()
        assert bob.fetch_page() == ([], 0)
        delivered_twice(relay, sent)
        assert bob.ack([sent]) == 1  # it was still queued: dropped here, not lost there
    finally:
        bob.close()


def test_sync_subscriber_after_a_reconnect_drops_the_relays_second_push(
    relay: RunningRelay,
) -> None:
    sent, alice, endpoint = one_message_for_bob(relay)
    bob = RelayClient(endpoint, timeout=10)
    bob.connect()
    try:
        bob.subscribe()
        first = bob.wait_for_message(5)
        assert first is not None and first.id == sent
        bob.close()
        bob.connect()
        bob.subscribe()
        delivered_twice(relay, sent)
        assert bob.wait_for_message(0.3) is None
        later = send_as(relay, alice, "something new")
        got = bob.wait_for_message(5)  # what is new still gets through
        assert got is not None and got.id == later
        assert bob.ack([sent, later]) == 2
    finally:
        bob.close()


# --- the asyncio client -----------------------------------------------------------


def test_async_fetch_after_a_reconnect_drops_the_relays_second_delivery(
    relay: RunningRelay,
) -> None:
    sent, _, endpoint = one_message_for_bob(relay)

    async def scenario() -> None:
        bob = AsyncRelayClient(endpoint)
        await bob.connect()
        try:
            assert [m.id for m in await bob.fetch()] == [sent]  # delivered, not acknowledged
            await bob.close()
            await bob.connect()
            assert await bob.fetch_page() == ([], 0)
            await asyncio.to_thread(delivered_twice, relay, sent)
            assert bob.messages.empty()
            assert await bob.ack([sent]) == 1
        finally:
            await bob.close()

    asyncio.run(scenario())


def test_async_subscriber_after_a_reconnect_drops_the_relays_second_push(
    relay: RunningRelay,
) -> None:
    sent, alice, endpoint = one_message_for_bob(relay)

    async def scenario() -> None:
        bob = AsyncRelayClient(endpoint)
        await bob.connect()
        try:
            await bob.subscribe()
            first = await bob.wait_for_message(5)
            assert first is not None and first.id == sent
            await bob.close()
            await bob.connect()
            await bob.subscribe()
            await asyncio.to_thread(delivered_twice, relay, sent)
            assert await bob.wait_for_message(0.3) is None
            later = await asyncio.to_thread(send_as, relay, alice, "something new")
            got = await bob.wait_for_message(5)  # what is new still gets through
            assert got is not None and got.id == later
            assert await bob.ack([sent, later]) == 2
        finally:
            await bob.close()

    asyncio.run(scenario())
