"""The receiving half of an agent connection: pushed messages, fetch and ack.

A subscribed session holds at most ``window`` unacknowledged messages; when
an ack frees room it tops itself up, from the relay's overflow queue while
that is vouched complete, else from the store in delivery order. ``fetch``
reads the store directly. Acks delete only the agent's own messages.

A mixin of ``AgentConnection``: it uses the connection's relay, agent,
session, state and writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from ccc_relay.daemon.committer import Job
from ccc_relay.protocol.errors import ErrorCode
from ccc_relay.protocol.frames import Ack, Acked, Error, Fetch, Fetched, Message
from ccc_relay.store import StoredMessage

if TYPE_CHECKING:
    from ccc_relay.daemon.admission import Session
    from ccc_relay.daemon.connection import AgentConnection
    from ccc_relay.daemon.relay import Relay


class Receiving:
    # Provided by AgentConnection.
    relay: Relay
    agent: str | None
    state: str
    subscribed: bool
    window: int
    backlog: bool
    topping_up: bool
    wants_signatures: bool
    inflight: dict[str, int]
    session: Session | None
    write: Callable[[Any], None]
    _spawn: Callable[[Coroutine[Any, Any, Any]], None]

    @property
    def session_id(self) -> str | None:
        return self.session.id if self.session else None

    def _me(self) -> AgentConnection:
        return cast("AgentConnection", self)

    @property
    def room(self) -> int:
        return self.window - len(self.inflight)

    def deliver(self, message: StoredMessage) -> None:
        self.inflight[message.id] = message.delivery
        frame = Message(
            id=message.id,
            sender=message.sender,
            to=message.recipient,
            sent_at=message.sent_at,
            body=message.body,
            delivery=message.delivery,
            thread=message.thread,
            reply_to=message.reply_to,
        )
        if self.wants_signatures:
            frame.signature = self.relay.signer.sign(frame)
        self.write(frame)

    def top_up(self) -> None:
        if self.subscribed and self.backlog and not self.topping_up and self.room > 0:
            self.topping_up = True
            self._spawn(self._top_up())

    async def _top_up(self) -> None:
        relay = self.relay
        agent = self.agent
        assert agent is not None
        try:
            while self.backlog and self.room > 0 and self.state == "ready":
                self.backlog = False
                room = self.room
                if agent in relay.authoritative:
                    for message in relay.take_overflow(agent, room):
                        relay.push(self._me(), message)
                    if relay.overflow.get(agent):
                        self.backlog = True
                    continue
                exclude = relay.inflight_ids(agent)
                now = relay.clock()
                watermark = relay.last_delivery  # everything up to here is in this read
                # Awaited at once, so the loop variables cannot change under the lambda.
                due = await relay.committer.read(
                    lambda s: s.due(agent, now, room, exclude)  # noqa: B023
                )
                if self.state != "ready":
                    return
                for message in due:
                    if message.id not in relay.inflight.get(agent, {}):
                        relay.push(self._me(), message)
                if len(due) >= room:
                    self.backlog = True
                else:
                    relay.vouch(agent, watermark)  # the store held nothing more that is due
        finally:
            self.topping_up = False

    async def _on_fetch(self, frame: Fetch) -> None:
        relay = self.relay
        agent = self.agent
        assert agent is not None
        exclude = relay.inflight_ids(agent)
        now = relay.clock()
        due, total = await relay.committer.read(
            lambda s: (s.due(agent, now, frame.limit, exclude), s.pending_count(agent))
        )
        count = 0
        for message in due:
            if self.state != "ready":
                return
            if message.id not in relay.inflight.get(agent, {}):
                relay.push(self._me(), message)
                count += 1
        pending = max(0, total - len(relay.inflight.get(agent, {})))
        self.write(Fetched(count=count, pending=pending))

    def _on_ack(self, frame: Ack) -> None:
        agent = self.agent
        assert agent is not None
        relay = self.relay
        ids = list(dict.fromkeys(frame.ids))
        items = [(relay.delivery_of(agent, mid), mid) for mid in ids]
        job = _ack_job(relay, agent, items, self.session_id)
        future = relay.committer.submit(job)
        assert future is not None
        future.add_done_callback(lambda f: self._on_acked(f, agent, ids))

    def _on_acked(self, future: asyncio.Future[Any], agent: str, ids: list[str]) -> None:
        exc = future.exception()
        if exc is not None:
            self.write(
                Error(
                    code=ErrorCode.UNAVAILABLE.value,
                    message=f"the relay cannot record acks right now: {exc}",
                )
            )
            return
        count = future.result()
        self.relay.counters.acked += count
        self.relay.settle(agent, ids)
        self.write(Acked(count=count))
        self.top_up()


def _ack_job(
    relay: Relay, agent: str, items: list[tuple[int | None, str]], session: str | None
) -> Job:
    return Job(
        audit=[relay.record("acked", agent=agent, ids=[mid for _, mid in items], session=session)],
        run=lambda s: s.ack(agent, items),
    )
