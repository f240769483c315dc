"""The store's operations as typed values: what the committer may be asked to do.

Every durable effect and every read the relay makes is one of these. Each names
what it does, carries only plain values, and knows its result type
(``StoreOp[T]``), so the committer's door has no ``Any`` and a reader can list
the relay's whole use of SQLite here. Nothing in this module touches the
database until the committer calls ``apply`` inside its transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from ccc_relay.store.records import AgentRecord, OutboxEntry, SessionRecord, StoredMessage

if TYPE_CHECKING:
    from ccc_relay.store.sqlite import Store

T_co = TypeVar("T_co", covariant=True)


class StoreOp(Generic[T_co]):
    """One operation; ``apply`` runs inside the committer's transaction."""

    __slots__ = ()
    # An operation that may be refused by the data (a duplicate name, say) runs
    # in a savepoint, so its failure cannot undo the rest of a batch.
    may_fail = False

    def apply(self, store: Store) -> T_co:
        raise NotImplementedError


# --- the message path ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckMessages(StoreOp[list[tuple[str, int]]]):
    """Delete the recipient's own acknowledged rows; the (sender, body bytes) of each."""

    agent: str
    known: Sequence[tuple[int, str, int]]  # in flight: (delivery number, sender, body bytes)
    by_id: Sequence[str] = ()  # ids the relay has no record of

    def apply(self, store: Store) -> list[tuple[str, int]]:
        return store.ack(self.agent, self.known, self.by_id)


@dataclass(frozen=True, slots=True)
class HoldMessages(StoreOp[None]):
    """Keep messages of a ``hold`` pair for the operator's decision."""

    messages: Sequence[StoredMessage]

    def apply(self, store: Store) -> None:
        for message in self.messages:
            store.hold(message)


@dataclass(frozen=True, slots=True)
class ApproveHeld(StoreOp[StoredMessage | None]):
    """Take a held message and queue it, in one transaction: it is never in
    neither table. ``delivery`` is its new delivery number (the id stays)."""

    message_id: str
    delivery: int

    def apply(self, store: Store) -> StoredMessage | None:
        held = store.take_held(self.message_id)
        if held is None:
            return None
        queued = StoredMessage(
            id=held.id,
            sender=held.sender,
            recipient=held.recipient,
            body=held.body,
            sent_at=held.sent_at,
            thread=held.thread,
            reply_to=held.reply_to,
            deliver_at=held.deliver_at,
            delivery=self.delivery,
        )
        store.insert_messages([queued])
        return queued


@dataclass(frozen=True, slots=True)
class RejectHeld(StoreOp[StoredMessage | None]):
    """Drop a held message and queue the sender's notice, in one transaction: a
    message for a local sender, or a signed ``refused`` envelope in the outbox
    for a sender on another relay. Either is stored only if the message was held."""

    message_id: str
    notice: StoredMessage | None
    outbox: OutboxEntry | None = None

    def apply(self, store: Store) -> StoredMessage | None:
        held = store.take_held(self.message_id)
        if held is not None:
            if self.notice is not None:
                store.insert_messages([self.notice])
            if self.outbox is not None:
                store.queue_remote([self.outbox])
        return held


@dataclass(frozen=True, slots=True)
class ReadDue(StoreOp[list[StoredMessage]]):
    """Due messages of ``agent`` in delivery order, skipping those in flight."""

    agent: str
    now: float
    limit: int
    exclude: frozenset[str]

    def apply(self, store: Store) -> list[StoredMessage]:
        return store.due(self.agent, self.now, self.limit, set(self.exclude))


@dataclass(frozen=True, slots=True)
class ReadDueAndPending(StoreOp[tuple[list[StoredMessage], int]]):
    """``ReadDue`` plus how many messages wait for ``agent`` in all (a fetch)."""

    agent: str
    now: float
    limit: int
    exclude: frozenset[str]

    def apply(self, store: Store) -> tuple[list[StoredMessage], int]:
        due = store.due(self.agent, self.now, self.limit, set(self.exclude))
        return due, store.pending_count(self.agent)


@dataclass(frozen=True, slots=True)
class ReadSchedule(StoreOp[tuple[list[str], float | None]]):
    """Recipients with messages that fell due in (since, now], and the next due time."""

    now: float
    since: float

    def apply(self, store: Store) -> tuple[list[str], float | None]:
        return store.recipients_due(self.now, self.since), store.next_scheduled(self.now)


# --- federation ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoldAndForward(StoreOp[None]):
    """A batch's held messages and its envelopes for other relays (the outbox)."""

    held: Sequence[StoredMessage]
    outbox: Sequence[OutboxEntry]

    def apply(self, store: Store) -> None:
        for message in self.held:
            store.hold(message)
        store.queue_remote(self.outbox)


@dataclass(frozen=True, slots=True)
class ReadOutbox(StoreOp[list[OutboxEntry]]):
    """Envelopes the stream has not acknowledged, oldest first, past ``after``."""

    limit: int
    after: int = 0

    def apply(self, store: Store) -> list[OutboxEntry]:
        return store.outbox(self.limit, self.after)


@dataclass(frozen=True, slots=True)
class DeleteForwarded(StoreOp[list[tuple[str, str, int]]]):
    """The stream holds these envelopes: out of the outbox; (sender, recipient, size) each.
    ``unsent_to``: they were dropped unpublished, for this host (no refusal can come)."""

    stream_ids: tuple[str, ...]
    unsent_to: str | None = None

    def apply(self, store: Store) -> list[tuple[str, str, int]]:
        if self.unsent_to is not None:
            store.unsent(self.stream_ids, self.unsent_to)
        return store.forwarded(self.stream_ids)


@dataclass(frozen=True, slots=True)
class ReadArrivalState(StoreOp[tuple[set[str], set[str], dict[str, str]]]):
    """Of envelopes just fetched: the keys stored here before, the message ids
    already taken by another message, and of the refusals' (id, host) the
    messages sent to that host and not refused yet (``host/id`` -> sender)."""

    keys: tuple[str, ...]
    ids: tuple[str, ...]
    refused: tuple[tuple[str, str], ...] = ()

    def apply(self, store: Store) -> tuple[set[str], set[str], dict[str, str]]:
        return store.seen_of(self.keys), store.ids_in_use(self.ids), store.sent_of(self.refused)


@dataclass(frozen=True, slots=True)
class StoreArrivals(StoreOp[None]):
    """Envelopes from other relays, in one transaction: their messages queued or
    held, their keys remembered, and the refusals to send back."""

    messages: Sequence[StoredMessage]
    held: Sequence[StoredMessage]
    seen: tuple[str, ...]
    outbox: Sequence[OutboxEntry]
    at: float
    bounced: Sequence[tuple[str, str]] = ()  # (id, host) of sent messages refused now
    # A message id another message took meanwhile fails only this work, not the
    # batch it rides in: the envelopes are not acked and come again.
    may_fail = True

    def apply(self, store: Store) -> None:
        store.insert_messages(self.messages)
        for message in self.held:
            store.hold(message)
        store.remember_seen(self.seen, self.at)
        store.queue_remote(self.outbox)
        store.bounced(self.bounced)


@dataclass(frozen=True, slots=True)
class ForgetSeen(StoreOp[int]):
    """Forget the keys of envelopes stored, and the ids of messages sent, before
    ``before`` (kept ``SEEN_KEPT``)."""

    before: float

    def apply(self, store: Store) -> int:
        return store.forget_seen(self.before)


# --- sessions and agents -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateSession(StoreOp[None]):
    """A new session, and the agent's oldest idle ones it replaces (``forget``)."""

    record: SessionRecord
    forget: tuple[str, ...] = ()

    def apply(self, store: Store) -> None:
        if self.forget:
            store.delete_sessions(self.forget)
        store.create_session(self.record)


@dataclass(frozen=True, slots=True)
class DeleteSessionsOf(StoreOp[None]):
    agent: str

    def apply(self, store: Store) -> None:
        store.delete_sessions_of(self.agent)


@dataclass(frozen=True, slots=True)
class DeleteExpiredSessions(StoreOp[int]):
    now: float

    def apply(self, store: Store) -> int:
        return store.delete_expired_sessions(self.now)


@dataclass(frozen=True, slots=True)
class SetQuarantine(StoreOp[bool]):
    agent: str
    reason: str | None  # None lifts it

    def apply(self, store: Store) -> bool:
        return store.set_quarantine(self.agent, self.reason)


@dataclass(frozen=True, slots=True)
class AddAgent(StoreOp[None]):
    record: AgentRecord
    may_fail = True

    def apply(self, store: Store) -> None:
        store.add_agent(self.record)


@dataclass(frozen=True, slots=True)
class SetCredential(StoreOp[bool]):
    agent: str
    cred_hash: str
    may_fail = True

    def apply(self, store: Store) -> bool:
        return store.set_credential(self.agent, self.cred_hash)


@dataclass(frozen=True, slots=True)
class RemoveAgent(StoreOp[list[tuple[str, str, str]]]):
    """Remove an agent, its sessions and its rules; the rules that remain."""

    agent: str
    may_fail = True

    def apply(self, store: Store) -> list[tuple[str, str, str]]:
        store.remove_agent(self.agent)
        return store.rules()


@dataclass(frozen=True, slots=True)
class SetRules(StoreOp[list[tuple[str, str, str]]]):
    """Set (or, with ``action`` None, delete) pair rules; the rules that remain and
    how many were deleted."""

    pairs: tuple[tuple[str, str], ...]
    action: str
    may_fail = True

    def apply(self, store: Store) -> list[tuple[str, str, str]]:
        for sender, recipient in self.pairs:
            store.set_rule(sender, recipient, self.action)
        return store.rules()


@dataclass(frozen=True, slots=True)
class DeleteRules(StoreOp[tuple[int, list[tuple[str, str, str]]]]):
    pairs: tuple[tuple[str, str], ...]
    may_fail = True

    def apply(self, store: Store) -> tuple[int, list[tuple[str, str, str]]]:
        removed = sum(store.delete_rule(sender, recipient) for sender, recipient in self.pairs)
        return removed, store.rules()


@dataclass(frozen=True, slots=True)
class AddGroupMembers(StoreOp[list[tuple[str, str]]]):
    """Add members to a run-time group (creating it); every (group, member) row after."""

    group: str
    members: tuple[str, ...]
    may_fail = True

    def apply(self, store: Store) -> list[tuple[str, str]]:
        store.add_group_members(self.group, self.members)
        return store.group_members()


@dataclass(frozen=True, slots=True)
class RemoveGroupMembers(StoreOp[tuple[int, list[tuple[str, str]]]]):
    """Remove members of a run-time group (None: all of them); how many rows went
    and every (group, member) row after."""

    group: str
    members: tuple[str, ...] | None
    may_fail = True

    def apply(self, store: Store) -> tuple[int, list[tuple[str, str]]]:
        removed = store.remove_group_members(self.group, self.members)
        return removed, store.group_members()


@dataclass(frozen=True, slots=True)
class ReadGroupMembers(StoreOp[list[tuple[str, str]]]):
    def apply(self, store: Store) -> list[tuple[str, str]]:
        return store.group_members()


# --- what the operator reads ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadQueueDepths(StoreOp[tuple[dict[str, int], dict[str, int]]]):
    """Per recipient: the messages due by ``now``, and those scheduled for later."""

    now: float

    def apply(self, store: Store) -> tuple[dict[str, int], dict[str, int]]:
        return store.queue_depths(self.now), store.scheduled_depths(self.now)


@dataclass(frozen=True, slots=True)
class ReadStatus(StoreOp[tuple[dict[str, int], dict[str, int], int]]):
    """Queue depths (due, scheduled) and the number of held messages."""

    now: float

    def apply(self, store: Store) -> tuple[dict[str, int], dict[str, int], int]:
        return store.queue_depths(self.now), store.scheduled_depths(self.now), store.held_count()


@dataclass(frozen=True, slots=True)
class ReadHeldMessage(StoreOp[StoredMessage | None]):
    message_id: str

    def apply(self, store: Store) -> StoredMessage | None:
        return store.held_message(self.message_id)


@dataclass(frozen=True, slots=True)
class ReadHeld(StoreOp[list[StoredMessage]]):
    def apply(self, store: Store) -> list[StoredMessage]:
        return store.held()


@dataclass(frozen=True, slots=True)
class Nothing(StoreOp[None]):
    """No store work: a job that only carries audit lines or a seq update."""

    def apply(self, store: Store) -> None:
        return None
