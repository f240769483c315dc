"""What both clients share: errors, duplicate suppression, frame building."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ccc_relay.protocol.frames import Error, Message
from ccc_relay.protocol.names import agent_name_problem

SEEN_IDS = 65536  # ids remembered to drop redeliveries; bounded so a long-lived client stays small


class RelayError(Exception):
    """A refusal from the relay: ``code`` is stable, ``message`` is for humans."""

    def __init__(
        self, code: str, message: str, *, retry_after: float | None = None, seq: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.seq = seq

    @classmethod
    def from_frame(cls, frame: Error) -> RelayError:
        return cls(frame.code, frame.message, retry_after=frame.retry_after, seq=frame.seq)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            data["retry_after"] = self.retry_after
        return data


class RelayUnavailable(RelayError):
    """No relay answers at the socket (not running, wrong path, no permission)."""

    def __init__(self, message: str) -> None:
        super().__init__("relay_unavailable", message)


def unreachable(path: object, exc: OSError) -> RelayUnavailable:
    """The sentence for a socket the client could not connect to."""
    if isinstance(exc, PermissionError):
        return RelayUnavailable(
            f"permission denied on {path}; this user is not in the relay socket's group"
        )
    return RelayUnavailable(f"no relay is listening on {path}; is ccc-statusd running?")


def check_recipient(name: str) -> None:
    """Refuse a malformed agent name before it goes on the wire (RelayError "invalid")."""
    problem = agent_name_problem(name)
    if problem:
        raise RelayError("invalid", f"{name!r} is not an agent name: {problem}")


class SeenIds:
    """At-least-once becomes exactly-once for the agent: repeats are dropped."""

    def __init__(self, capacity: int = SEEN_IDS) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def first_time(self, message: Message) -> bool:
        if message.id in self._ids:
            return False
        self._ids[message.id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True


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
