"""What the relay core asks its shell to do, as plain values.

The core decides; it never writes a socket, touches the store or reads a
clock. Each of its entry points returns a list of these effects, in order, and
the shell (``ccc_relay.daemon.shell``) carries them out:

* ``Reply``: write a frame to a connection (all frames of one loop turn go out
  in one write);
* ``Close``: close a connection once what was written before has gone out;
* ``Persist``: run store work and its audit lines in the next group commit.
  With ``then``, the shell hands the result back to the core
  (``RelayCore.persisted``) or, if the store failed, the failure
  (``RelayCore.persist_failed``); without it nobody waits, and the work rides
  with the next commit;
* ``Sanitize``: clean a big body off the event loop and hand it back
  (``RelayCore.sanitized``); the connection's later frames wait meanwhile;
* ``Log``: a line for the operator's log (the audit is a ``Persist``);
* ``ScheduleChanged``: a message with ``deliver_at`` was committed, so the
  scheduler should look again;
* ``Forward``: an envelope for another relay is in the outbox: publish it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Effects are plain slotted records, not frozen ones: two or three are made per
# message, and a frozen dataclass costs twice as much to make. Nothing changes
# an effect once the core returned it.
from typing import Any

from ccc_relay.audit.records import AuditRecord
from ccc_relay.protocol.frames import RelayFrame, Send
from ccc_relay.store.ops import Nothing, StoreOp
from ccc_relay.store.records import OutboxEntry, StoredMessage

# --- continuations: what to do once the store answered ------------------------------


@dataclass(slots=True)
class SendOutcome:
    """One admitted send, answered once its batch is durable."""

    seq: int
    message: StoredMessage
    held: bool
    changes: list[str]
    size: int  # the stored body's bytes, as the queue caps count them
    body_changed: bool = False  # sanitising changed the body: the answer shows it
    forward: OutboxEntry | None = None  # for another relay: answered once published


@dataclass(slots=True)
class SendsDurable:
    conn: int
    outcomes: list[SendOutcome]


@dataclass(slots=True)
class GroupDurable:
    """One send to a group, answered once all its copies are durable."""

    conn: int
    seq: int
    group: str  # as the sender wrote it, with its "@"
    copies: list[SendOutcome]
    skipped: list[str]  # members the sender may not write to
    changes: list[str]


@dataclass(slots=True)
class AckDurable:
    conn: int
    agent: str
    ids: list[str]


@dataclass(slots=True)
class FetchRead:
    conn: int


@dataclass(slots=True)
class TopUpRead:
    conn: int
    room: int
    watermark: int  # every message up to this delivery number was in the read


Then = SendsDurable | GroupDurable | AckDurable | FetchRead | TopUpRead


# --- effects ------------------------------------------------------------------------


@dataclass(slots=True)
class Reply:
    conn: int
    frame: RelayFrame


@dataclass(slots=True)
class Close:
    conn: int


@dataclass(slots=True)
class Persist:
    op: StoreOp[Any] = field(default_factory=Nothing)
    messages: list[StoredMessage] = field(default_factory=list)  # one bulk insert
    audit: list[AuditRecord] = field(default_factory=list)
    seqs: dict[str, int] = field(default_factory=dict)  # session id -> seq high-water mark
    then: Then | None = None


@dataclass(slots=True)
class Sanitize:
    conn: int
    frame: Send
    action: str


@dataclass(slots=True)
class Log:
    level: int  # a ``logging`` level number
    text: str


@dataclass(slots=True)
class ScheduleChanged:
    pass


@dataclass(slots=True)
class Forward:
    """Publish a committed envelope to the federation stream; for a send
    (``outcome``), answer it with ``RelayCore.forward_answered`` once the stream
    acked it or ``publish_timeout`` passed."""

    entry: OutboxEntry
    conn: int | None = None
    outcome: SendOutcome | None = None


Effect = Reply | Close | Persist | Sanitize | Log | ScheduleChanged | Forward
