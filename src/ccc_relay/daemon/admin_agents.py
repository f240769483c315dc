"""Agents on the admin plane: adding, rotating, removing, listing, releasing.

An agent is a name, a credential hash and an optional bound uid/gid. Rotating
a credential or removing an agent ends every session it has, so an old
credential stops working at once rather than at session expiry; removing it
also drops its pair rules. Releasing lifts a quarantine the anomaly rules put
on an agent.

A mixin of ``AdminConnection``: it uses the connection's relay, peer,
audited ``_write`` and ``_agent`` lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ccc_relay.daemon.committer import Job
from ccc_relay.protocol import admin as ops
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.names import agent_name_problem
from ccc_relay.store import AgentRecord

if TYPE_CHECKING:
    from ccc_relay.daemon.relay import Relay


class AdminAgents:
    # Provided by AdminConnection.
    relay: Relay
    peer: tuple[int, int, int]
    _write: Callable[..., Awaitable[Any]]
    _agent: Callable[[str], AgentRecord]

    async def _add_agent(self, request: ops.AgentAdd) -> dict[str, Any]:
        relay = self.relay
        _check_name(request.name)
        if request.name in relay.agents:
            raise ProtocolError(ErrorCode.CONFLICT, f"agent {request.name!r} already exists")
        record = AgentRecord(
            request.name, request.cred_hash, relay.clock(), request.uid, request.gid
        )
        await self._write(
            lambda s: s.add_agent(record),
            "agent_added",
            agent=request.name,
            uid=request.uid,
            gid=request.gid,
        )
        relay.agents[request.name] = record
        if relay.on_agent_added is not None:
            await relay.on_agent_added(request.name)
        return {"name": request.name}

    async def _rotate_agent(self, request: ops.AgentRotate) -> dict[str, Any]:
        relay = self.relay
        record = self._agent(request.name)
        await self._write(
            lambda s: s.set_credential(request.name, request.cred_hash),
            "agent_rotated",
            agent=request.name,
        )
        relay.agents[request.name] = msgspec.structs.replace(record, cred_hash=request.cred_hash)
        self._end_sessions(request.name, "the agent's credential was rotated")
        return {"name": request.name}

    async def _remove_agent(self, request: ops.AgentRemove) -> dict[str, Any]:
        relay = self.relay
        self._agent(request.name)
        await self._write(
            lambda s: s.remove_agent(request.name), "agent_removed", agent=request.name
        )
        del relay.agents[request.name]
        self._end_sessions(request.name, "the agent was removed")
        if relay.on_agent_removed is not None:
            relay.on_agent_removed(request.name)
        relay.reload_policy(await relay.committer.read(lambda s: s.rules()))
        return {"name": request.name}

    async def _list_agents(self) -> list[dict[str, Any]]:
        relay = self.relay
        depths = await relay.committer.read(lambda s: s.queue_depths())
        return [
            {
                "name": a.name,
                "created": a.created,
                "uid": a.uid,
                "gid": a.gid,
                "online": len(relay.online.get(a.name, ())),
                "queued": depths.get(a.name, 0),
            }
            for a in relay.agents.values()
        ]

    async def _release_agent(self, request: ops.AgentRelease) -> dict[str, Any]:
        relay = self.relay
        record = self._agent(request.name)
        if not record.quarantined:
            raise ProtocolError(ErrorCode.CONFLICT, f"agent {request.name!r} is not quarantined")
        await self._write(
            lambda s: s.set_quarantine(request.name, None), "released", agent=request.name
        )
        relay.agents[request.name] = msgspec.structs.replace(record, quarantined=None)
        relay.anomaly.forget(request.name)
        return {"name": request.name}

    def _end_sessions(self, agent: str, why: str) -> None:
        relay = self.relay
        for sid in [sid for sid, s in relay.sessions.items() if s.agent == agent]:
            del relay.sessions[sid]
        relay.committer.submit(Job(run=lambda s: s.delete_sessions_of(agent)), want_result=False)
        relay.close_agent(agent, ErrorCode.AUTH_FAILED, why)


def _check_name(name: str) -> None:
    problem = agent_name_problem(name)
    if problem:
        raise ProtocolError(ErrorCode.INVALID, problem)
