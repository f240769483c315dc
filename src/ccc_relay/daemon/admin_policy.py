"""The pair rules on the admin plane: allowing, denying, showing.

Rules set here live in the store, next to those of the config file; after
every change the relay's policy is rebuilt from the store. Denying removes
only stored rules, so the answer says when the config file still allows a
pair.

A mixin of ``AdminConnection``: it uses the connection's relay, audited
``_write`` and ``_agent`` lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ccc_relay.protocol import admin as ops
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.store import AgentRecord

if TYPE_CHECKING:
    from ccc_relay.daemon.relay import Relay


class AdminPolicy:
    # Provided by AdminConnection.
    relay: Relay
    _write: Callable[..., Awaitable[Any]]
    _agent: Callable[[str], AgentRecord]

    async def _allow(self, request: ops.Allow) -> dict[str, Any]:
        relay = self.relay
        pairs = _pairs(request.sender, request.recipient, request.both)
        for sender, recipient in pairs:
            self._agent(sender)
            self._agent(recipient)

        def allow(s: Any) -> None:
            for a, b in pairs:
                s.set_rule(a, b, request.action)

        await self._write(
            allow,
            "policy_changed",
            change=request.action,
            pairs=[f"{a} -> {b}" for a, b in pairs],
        )
        relay.reload_policy(await relay.committer.read(lambda s: s.rules()))
        return {"pairs": [[a, b] for a, b in pairs], "action": request.action}

    async def _deny(self, request: ops.Deny) -> dict[str, Any]:
        relay = self.relay
        pairs = _pairs(request.sender, request.recipient, request.both)

        def deny(s: Any) -> int:
            return sum(s.delete_rule(a, b) for a, b in pairs)

        removed = await self._write(
            deny, "policy_changed", change="deny", pairs=[f"{a} -> {b}" for a, b in pairs]
        )
        relay.reload_policy(await relay.committer.read(lambda s: s.rules()))
        configured = [r for r in relay.config.rules if (r.sender, r.recipient) in pairs]
        note = "still allowed by the config file; edit it to deny" if configured else None
        return {"removed": removed, "note": note}

    def _show_policy(self) -> list[dict[str, str]]:
        return self.relay.rules_with_source()


def _pairs(sender: str, recipient: str, both: bool) -> list[tuple[str, str]]:
    if sender == recipient:
        raise ProtocolError(ErrorCode.INVALID, "an agent does not message itself")
    return [(sender, recipient), (recipient, sender)] if both else [(sender, recipient)]
