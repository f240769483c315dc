"""Every frame of protocol v1, as strict msgspec structs.

Frames are JSON objects tagged by ``type``. Unknown fields, wrong types and
missing fields are refused by the decoder; bounds that do not depend on
configuration (name lengths, seq range, batch sizes) are declared here so the
decoder enforces them before any other code sees the frame.

Client -> relay: hello, send, ack, fetch, subscribe, agents, ping, bye.
Relay -> client: welcome, accepted, held, group_accepted, error, message,
fetched, acked, agents, pong, bye.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from ccc_relay.protocol.names import (
    ADDRESS_PATTERN,
    AGENT_NAME_PATTERN,
    MAX_ADDRESS,
    MAX_AGENT_NAME,
    MAX_RECIPIENT,
    RECIPIENT_PATTERN,
)

PROTOCOL_VERSION = 1

MAX_CREDENTIAL_CHARS = 128  # credentials are 48 characters; room for a future format
MAX_THREAD_CHARS = 128
MAX_ACK_IDS = 1024  # one ack frame may settle a whole fetched batch
MAX_FETCH = 1000  # messages per fetch: bounds one reply's size
MAX_WINDOW = 1024  # pushed-but-unacked messages per subscribed session
MAX_PING_CHARS = 256
MAX_SEQ = 2**63 - 1  # fits SQLite's INTEGER

AgentName = Annotated[str, msgspec.Meta(pattern=AGENT_NAME_PATTERN, max_length=MAX_AGENT_NAME)]
# An agent here or another relay's ("name@host").
Address = Annotated[str, msgspec.Meta(pattern=ADDRESS_PATTERN, max_length=MAX_ADDRESS)]
# An address, or "@" and a group's name: one send reaches each member it may.
Recipient = Annotated[str, msgspec.Meta(pattern=RECIPIENT_PATTERN, max_length=MAX_RECIPIENT)]
MessageId = Annotated[str, msgspec.Meta(pattern=r"^m_[A-Za-z0-9_-]{8,64}\Z")]
SessionId = Annotated[str, msgspec.Meta(pattern=r"^s_[A-Za-z0-9_-]{8,64}\Z")]
Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)]
Thread = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_THREAD_CHARS)]
# Unix seconds; bounded so arithmetic on it can never overflow or go negative.
Timestamp = Annotated[float, msgspec.Meta(ge=0, le=4102444800)]  # up to 2100-01-01


class _Frame(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    pass


# --- client -> relay -------------------------------------------------------


class Hello(_Frame, tag="hello"):
    agent: AgentName
    credential: Annotated[str, msgspec.Meta(max_length=MAX_CREDENTIAL_CHARS)]
    version: int = PROTOCOL_VERSION
    # Resume a session (after a reconnect or a relay restart) to keep its seq.
    resume: SessionId | None = None
    # Ask the relay to sign every delivered message (the client verifies them).
    signatures: bool = False
    # Ask for the body as delivered in accepted/held when the relay changed it
    # (asked for, so a client that predates the field never receives it).
    show_delivered: bool = False

    def __repr__(self) -> str:  # the credential never reaches a log through repr
        return f"Hello(agent={self.agent!r}, credential='***', version={self.version})"


class Send(_Frame, tag="send"):
    seq: Seq
    to: Recipient
    body: str
    thread: Thread | None = None
    reply_to: MessageId | None = None
    deliver_at: Timestamp | None = None


class Ack(_Frame, tag="ack"):
    ids: Annotated[list[MessageId], msgspec.Meta(min_length=1, max_length=MAX_ACK_IDS)]


class Fetch(_Frame, tag="fetch"):
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_FETCH)] = 100


class Subscribe(_Frame, tag="subscribe"):
    window: Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW)] = 64


class ListAgents(_Frame, tag="agents"):
    pass


class Ping(_Frame, tag="ping"):
    data: Annotated[str, msgspec.Meta(max_length=MAX_PING_CHARS)] | None = None


class Bye(_Frame, tag="bye"):
    pass


ClientFrame = Hello | Send | Ack | Fetch | Subscribe | ListAgents | Ping | Bye


# --- relay -> client -------------------------------------------------------


class Welcome(_Frame, tag="welcome"):
    session: str
    agent: str
    expires_at: float
    last_seq: int
    max_message_size: int
    rate_limit_per_minute: float
    version: int = PROTOCOL_VERSION


class Accepted(_Frame, tag="accepted"):
    seq: int
    id: str
    # What sanitisation changed in the body (kinds and counts, never content).
    changes: list[str] = msgspec.field(default_factory=list)
    # The body as stored and delivered, when it is not what was sent and the
    # hello asked (show_delivered).
    delivered: str | None = None
    # Only on a send to another relay's agent: true once the federation stream
    # holds it, false when it is stored here and goes out when the link returns.
    forwarded: bool | None = None


class Held(_Frame, tag="held"):
    """The pair's policy is ``hold``: the message waits for an operator's approval."""

    seq: int
    id: str
    changes: list[str] = msgspec.field(default_factory=list)
    delivered: str | None = None  # as in Accepted


class Copy(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One member's copy of a send to a group: its own message id."""

    to: str
    id: str
    held: bool = False  # the pair's policy is hold: it waits for the operator


class Skipped(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A member that got no copy, and the code a direct send to it would get."""

    to: str
    code: str


class GroupAccepted(_Frame, tag="group_accepted"):
    """A send to a group is durable: one copy per member the sender may write to."""

    seq: int
    group: str
    sent: list[Copy]
    skipped: list[Skipped] = msgspec.field(default_factory=list)
    changes: list[str] = msgspec.field(default_factory=list)
    delivered: str | None = None  # as in Accepted: the one body every copy holds


class Error(_Frame, tag="error"):
    code: str
    message: str
    seq: int | None = None
    retry_after: float | None = None


class Message(_Frame, tag="message"):
    id: str
    sender: str = msgspec.field(name="from")  # always the authenticated identity
    to: str
    sent_at: float
    body: str
    delivery: int  # per-recipient, strictly increasing
    thread: str | None = None
    reply_to: str | None = None
    signature: str | None = None


class Fetched(_Frame, tag="fetched"):
    count: int
    pending: int


class Acked(_Frame, tag="acked"):
    count: int


class AgentInfo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: str
    online: bool
    may_send: bool  # the asking agent may send to this one
    may_receive: bool = False  # this one may send to the asking agent


class AgentList(_Frame, tag="agents"):
    agents: list[AgentInfo]


class Pong(_Frame, tag="pong"):
    data: str | None = None


class Goodbye(_Frame, tag="bye"):
    reason: str = "bye"


RelayFrame = (
    Welcome
    | Accepted
    | Held
    | GroupAccepted
    | Error
    | Message
    | Fetched
    | Acked
    | AgentList
    | Pong
    | Goodbye
)
