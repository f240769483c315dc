"""The admin plane's frames: requests on the owner-only admin socket.

These types are decoded only by the admin listener. The agents' socket uses
``ClientFrame`` and has no way to name an admin operation, so an agent cannot
reach administration whatever it sends.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ccc_relay.protocol.frames import Address, AgentName
from ccc_relay.protocol.names import MAX_GROUP_MEMBERS

CredentialHash = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
Id = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Members = Annotated[list[AgentName], msgspec.Meta(min_length=1, max_length=MAX_GROUP_MEMBERS)]


class _Admin(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, omit_defaults=True):
    pass


class AgentAdd(_Admin, tag="agent_add"):
    name: AgentName
    cred_hash: CredentialHash
    uid: Id | None = None
    gid: Id | None = None


class AgentRemove(_Admin, tag="agent_remove"):
    name: AgentName


class AgentRotate(_Admin, tag="agent_rotate"):
    name: AgentName
    cred_hash: CredentialHash


class ListRegisteredAgents(_Admin, tag="agent_list"):
    pass


class Allow(_Admin, tag="allow"):
    sender: Address  # either side may be another relay's agent (name@host)
    recipient: Address
    both: bool = False
    action: Literal["allow", "hold"] = "allow"


class Deny(_Admin, tag="deny"):
    sender: Address
    recipient: Address
    both: bool = False


class GroupAdd(_Admin, tag="group_add"):
    """Add agents to a group kept in relay.db (created with its first members)."""

    name: AgentName  # the group's name, without its "@"
    members: Members


class GroupRemove(_Admin, tag="group_remove"):
    """Remove agents from a group kept in relay.db; without members, the whole group."""

    name: AgentName
    members: Members | None = None


class GroupList(_Admin, tag="group_list"):
    pass


class PolicyShow(_Admin, tag="policy_show"):
    pass


class Status(_Admin, tag="status"):
    pass


class FederationStatus(_Admin, tag="federation_status"):
    """The link to other relays: connection, stream, inbound lag, queues per host."""


class SessionList(_Admin, tag="session_list"):
    pass


class SessionSend(_Admin, tag="session_send"):
    """The operator writes to an agent; delivered as from ``operator``."""

    to: AgentName
    body: str


class Shutdown(_Admin, tag="shutdown"):
    pass


class Reload(_Admin, tag="reload"):
    """Re-read the config file the relay was started with."""


class HeldList(_Admin, tag="held_list"):
    pass


class Approve(_Admin, tag="approve"):
    id: Annotated[str, msgspec.Meta(max_length=80)]


class Reject(_Admin, tag="reject"):
    id: Annotated[str, msgspec.Meta(max_length=80)]
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


class AgentRelease(_Admin, tag="agent_release"):
    name: AgentName


class AuditAcknowledge(_Admin, tag="audit_acknowledge"):
    """The operator has looked into the audit's tamper alarm at ``seq``."""

    seq: Annotated[int, msgspec.Meta(ge=1)]
    note: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


AdminRequest = (
    AgentAdd
    | AgentRemove
    | AgentRotate
    | ListRegisteredAgents
    | Allow
    | Deny
    | GroupAdd
    | GroupRemove
    | GroupList
    | PolicyShow
    | Status
    | FederationStatus
    | SessionList
    | SessionSend
    | Shutdown
    | HeldList
    | Approve
    | Reject
    | AgentRelease
    | Reload
    | AuditAcknowledge
)


class Result(msgspec.Struct, tag="result", tag_field="type", forbid_unknown_fields=True):
    data: Any = None


_decoder = msgspec.json.Decoder(AdminRequest)


def decode_admin_request(line: bytes) -> AdminRequest:
    """Raises msgspec.ValidationError / DecodeError / UnicodeDecodeError."""
    request: AdminRequest = _decoder.decode(line)
    return request
