"""What both clients share: the errors they raise and how a relay frame becomes one.

The protocol's client-side rules (numbering, matching answers, the inbox,
duplicate dropping) are not here but in ``ccc_relay.protocol.client_session``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ccc_relay.client.errors import RelayError, RelayUnavailable, unreachable
from ccc_relay.protocol.client_session import Reply
from ccc_relay.protocol.frames import Error, Goodbye, Message, RelayFrame
from ccc_relay.protocol.names import address_problem, agent_name_problem

F = TypeVar("F")

__all__ = [
    "RelayError",
    "RelayUnavailable",
    "answer",
    "check_recipient",
    "message_dict",
    "unexpected",
    "unreachable",
]


def check_recipient(name: str, *, groups: bool = False) -> None:
    """Refuse a malformed agent name or address (``name@host``, an agent of
    another relay) or, with ``groups``, ``@group`` name, before it goes on the
    wire (RelayError "invalid")."""
    if groups and name.startswith("@"):
        problem = agent_name_problem(name[1:])
        if problem:
            problem = problem.replace("an agent name", "a group name")
            raise RelayError("invalid", f"{name!r} is not a group: {problem}")
        return
    problem = address_problem(name)
    if problem:
        what = "an address (name@host)" if "@" in name else "an agent name"
        raise RelayError("invalid", f"{name!r} is not {what}: {problem}")


def unexpected(frame: RelayFrame) -> RelayError:
    """What a client raises for a frame it did not wait for (or a refusal)."""
    if isinstance(frame, Error):
        return RelayError.from_frame(frame)
    if isinstance(frame, Goodbye):
        return RelayUnavailable(f"the relay closed the session: {frame.reason}")
    return RelayError("invalid", f"unexpected {type(frame).__name__} frame from the relay")


def answer(reply: Reply, kind: type[F]) -> F:
    """The frame of ``reply`` when it is a ``kind``; RelayError for a refusal."""
    if isinstance(reply.frame, kind):
        return reply.frame
    raise unexpected(reply.frame)


def message_dict(message: Message) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": message.id,
        "from": message.sender,
        "to": message.to,
        "sent_at": message.sent_at,
        "body": message.body,
        "delivery": message.delivery,
    }
    if message.thread is not None:
        data["thread"] = message.thread
    if message.reply_to is not None:
        data["reply_to"] = message.reply_to
    return data
