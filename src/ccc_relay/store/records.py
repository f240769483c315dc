"""The typed rows the store hands out and takes in, and how a message row becomes one.

These are plain frozen values: nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class StoredMessage(msgspec.Struct, frozen=True):
    id: str
    sender: str
    recipient: str
    body: str
    sent_at: float
    thread: str | None = None
    reply_to: str | None = None
    deliver_at: float | None = None
    delivery: int = 0  # per-recipient order; assigned by the relay in commit order


class OutboxEntry(msgspec.Struct, frozen=True):
    """An envelope bound for another relay, kept until the stream acknowledged it."""

    stream_id: str  # its outbox key: the message id, or refused:<id>
    to_host: str
    sender: str  # who it counts against: the local sender, or "relay" for a notice
    recipient: str  # the address it goes to (name@host)
    size: int  # body bytes, as the queue caps count them
    payload: bytes  # the signed envelope, as published
    created: float
    seq: int = 0  # its place in the outbox, assigned by the store

    @property
    def message_id(self) -> str | None:
        """The id of the message it carries; None for a refusal notice (whose
        stream id is ``refused:<id>``, and a message id has no colon)."""
        return None if self.stream_id.startswith("refused:") else self.stream_id


class AgentRecord(msgspec.Struct, frozen=True):
    name: str
    cred_hash: str
    created: float
    uid: int | None = None
    gid: int | None = None
    quarantined: str | None = None  # why, while the agent is quarantined


class SessionRecord(msgspec.Struct, frozen=True):
    id: str
    agent: str
    created: float
    expires: float
    last_seq: int


# The column order ``message_from_row`` unpacks; the held table has no
# delivery number, so its queries select a literal 0 in that place.
MESSAGE_COLUMNS = "delivery, id, sender, recipient, body, thread, reply_to, sent_at, deliver_at"


def message_from_row(row: Sequence[object]) -> StoredMessage:
    delivery, mid, sender, recipient, body, thread, reply_to, sent_at, deliver_at = row
    return StoredMessage(
        id=str(mid),
        sender=str(sender),
        recipient=str(recipient),
        body=str(body),
        sent_at=float(sent_at),  # type: ignore[arg-type]
        thread=thread,  # type: ignore[arg-type]
        reply_to=reply_to,  # type: ignore[arg-type]
        deliver_at=deliver_at,  # type: ignore[arg-type]
        delivery=int(delivery),  # type: ignore[call-overload]
    )
