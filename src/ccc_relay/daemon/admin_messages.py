"""Messages on the admin plane: the held ones, and the operator's own.

A message a ``hold`` rule kept back waits in the store until the operator
approves it (it is delivered as if just sent, keeping its id) or rejects it
(the sender is told, by a notice from the relay). The operator may also send
an agent a message of its own, under the same size limit as any other.

A mixin of ``AdminConnection``: it uses the connection's relay, peer and
``_agent`` lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ccc_relay.daemon.relay import OPERATOR, RELAY
from ccc_relay.protocol import admin as ops
from ccc_relay.protocol.codec import body_size
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.store import AgentRecord

if TYPE_CHECKING:
    from ccc_relay.daemon.relay import Relay


class AdminMessages:
    # Provided by AdminConnection.
    relay: Relay
    peer: tuple[int, int, int]
    _agent: Callable[[str], AgentRecord]

    async def _list_held(self) -> list[dict[str, Any]]:
        held = await self.relay.committer.read(lambda s: s.held())
        return [
            {
                "id": m.id,
                "from": m.sender,
                "to": m.recipient,
                "sent_at": m.sent_at,
                "size": len(m.body.encode()),
                "body": m.body,
                "thread": m.thread,
            }
            for m in held
        ]

    async def _approve(self, message_id: str) -> dict[str, Any]:
        relay = self.relay
        held = await relay.committer.read(lambda s: s.take_held(message_id))
        if held is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no held message {message_id!r}")
        # A new delivery number keeps the recipient's deliveries in order; the id stays.
        fresh = relay.new_message(
            held.sender,
            held.recipient,
            held.body,
            thread=held.thread,
            reply_to=held.reply_to,
            deliver_at=held.deliver_at,
        )
        message = msgspec.structs.replace(fresh, id=held.id, sent_at=held.sent_at)
        await relay.enqueue(message, by_uid=self.peer[1], approved=True)
        relay.audit("approved", id=held.id, by_uid=self.peer[1])
        relay.committed(message)
        return {"id": held.id, "to": held.recipient}

    async def _reject(self, message_id: str, reason: str | None) -> dict[str, Any]:
        relay = self.relay
        held = await relay.committer.read(lambda s: s.take_held(message_id))
        if held is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no held message {message_id!r}")
        relay.audit("rejected", id=held.id, by_uid=self.peer[1], reason=reason)
        notice = relay.new_message(
            RELAY,
            held.sender,
            f"Your message {held.id} to {held.recipient} was rejected by the operator."
            + (f" Reason: {reason}" if reason else ""),
            reply_to=held.id,
        )
        await relay.enqueue(notice, notice_for=held.id)
        relay.committed(notice)
        return {"id": held.id, "to": held.recipient, "notified": held.sender}

    async def _send_as_operator(self, request: ops.SessionSend) -> dict[str, Any]:
        relay = self.relay
        self._agent(request.to)
        size = body_size(request.body)
        if size > relay.limits.max_message_size:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"body is {size} bytes; the limit is {relay.limits.max_message_size}",
            )
        message = relay.new_message(OPERATOR, request.to, request.body)
        await relay.enqueue(message, by_uid=self.peer[1])
        relay.committed(message)
        return {"id": message.id, "to": request.to}
