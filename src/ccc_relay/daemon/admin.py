"""The admin plane: agent and policy administration on the owner-only socket.

Only the daemon's own user (or root) may speak here: the socket is 0600 and
every connection's SO_PEERCRED uid is checked as well, so a wrong mode on a
shared filesystem cannot open administration to anyone else. Each request is
one line, each answer one ``result`` or ``error`` line; every change is
audited.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import msgspec

from ccc_relay.daemon.committer import Job
from ccc_relay.daemon.relay import OPERATOR, RELAY
from ccc_relay.daemon.sockets import peer_credentials
from ccc_relay.protocol import admin as ops
from ccc_relay.protocol.codec import LineBuffer, body_size, encode
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import Error
from ccc_relay.protocol.names import agent_name_problem
from ccc_relay.store import AgentRecord, StoreFailure

if TYPE_CHECKING:
    from ccc_relay.daemon.relay import Relay

log = logging.getLogger("ccc_relay.daemon")

ADMIN_LINE_CAP = 64 * 1024 * 1024  # operator messages are capped by max_message_size anyway


class AdminConnection(asyncio.Protocol):
    def __init__(
        self, relay: Relay, shutdown: asyncio.Event, sandbox: dict[str, Any] | None = None
    ) -> None:
        self.relay = relay
        self.shutdown = shutdown
        self.sandbox = sandbox or {}
        self.reload: Callable[[], dict[str, Any]] | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = LineBuffer(ADMIN_LINE_CAP)
        self._lock = asyncio.Lock()  # answer requests in order
        self.peer = (0, -1, -1)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        self.peer = peer_credentials(sock) if sock is not None else (0, -1, -1)
        if self.peer[1] not in (0, os.geteuid()):
            self.relay.audit(
                "admin_refused", peer_pid=self.peer[0], peer_uid=self.peer[1], peer_gid=self.peer[2]
            )
            self._reply(
                Error(
                    code=ErrorCode.FORBIDDEN.value,
                    message="only the relay's own user may administer it",
                )
            )
            transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            lines = self._buffer.feed(data)
        except ProtocolError as exc:
            self._refuse(exc)
            if self._transport is not None:
                self._transport.close()
            return
        for line in lines:
            if line.strip():
                task = asyncio.get_running_loop().create_task(self._serve(line))
                task.add_done_callback(_log_error)

    def _reply(self, frame: Any) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode(frame))

    async def _serve(self, line: bytes) -> None:
        async with self._lock:
            try:
                request = ops.decode_admin_request(line)
                data = await self._handle(request)
                self._reply(ops.Result(data=data))
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
                self._refuse(ProtocolError(ErrorCode.INVALID, f"invalid request: {exc}"))
            except ProtocolError as exc:
                self._refuse(exc)
            except StoreFailure as exc:
                self._refuse(ProtocolError(ErrorCode.UNAVAILABLE, str(exc)))

    def _refuse(self, exc: ProtocolError) -> None:
        """Every refusal on the admin plane: a code, a sentence, an audit line."""
        self.relay.audit("admin_refused", code=exc.code.value, reason=exc.message,
                         by_uid=self.peer[1])  # fmt: skip
        self._reply(Error(code=exc.code.value, message=exc.message))

    async def _write(self, fn: Any, event: str, **fields: Any) -> Any:
        relay = self.relay
        job = Job(run=fn, may_fail=True, audit=[relay.record(event, by_uid=self.peer[1], **fields)])
        future = relay.committer.submit(job)
        assert future is not None
        result = await future
        if isinstance(result, sqlite3.IntegrityError):
            raise ProtocolError(ErrorCode.CONFLICT, f"conflict: {fields}")
        if isinstance(result, BaseException):
            raise ProtocolError(ErrorCode.INTERNAL, f"admin operation failed: {result}")
        return result

    async def _handle(self, request: ops.AdminRequest) -> Any:
        relay = self.relay
        if isinstance(request, ops.AgentAdd):
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
        if isinstance(request, ops.AgentRotate):
            record = self._agent(request.name)
            await self._write(
                lambda s: s.set_credential(request.name, request.cred_hash),
                "agent_rotated",
                agent=request.name,
            )
            relay.agents[request.name] = msgspec.structs.replace(
                record, cred_hash=request.cred_hash
            )
            self._end_sessions(request.name, "the agent's credential was rotated")
            return {"name": request.name}
        if isinstance(request, ops.AgentRemove):
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
        if isinstance(request, ops.AgentList):
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
        if isinstance(request, ops.Allow):
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
        if isinstance(request, ops.Deny):
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
        if isinstance(request, ops.PolicyShow):
            return relay.rules_with_source()
        if isinstance(request, ops.Status):
            return await self._status()
        if isinstance(request, ops.SessionList):
            return [
                {
                    "session": c.session_id,
                    "agent": c.agent,
                    "peer_pid": c.peer[0],
                    "peer_uid": c.peer[1],
                    "peer_gid": c.peer[2],
                    "connected_at": c.connected_at,
                    "expires_at": c.session.expires if c.session else None,
                    "last_seq": c.session.last_seq if c.session else 0,
                    "subscribed": c.subscribed,
                    "inflight": len(c.inflight),
                }
                for conns in relay.online.values()
                for c in conns
            ]
        if isinstance(request, ops.SessionSend):
            return await self._operator_send(request)
        if isinstance(request, ops.HeldList):
            held = await relay.committer.read(lambda s: s.held())
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
        if isinstance(request, ops.Approve):
            return await self._approve(request.id)
        if isinstance(request, ops.Reject):
            return await self._reject(request.id, request.reason)
        if isinstance(request, ops.AgentRelease):
            record = self._agent(request.name)
            if not record.quarantined:
                raise ProtocolError(
                    ErrorCode.CONFLICT, f"agent {request.name!r} is not quarantined"
                )
            await self._write(
                lambda s: s.set_quarantine(request.name, None), "released", agent=request.name
            )
            relay.agents[request.name] = msgspec.structs.replace(record, quarantined=None)
            relay.anomaly.forget(request.name)
            return {"name": request.name}
        if isinstance(request, ops.Reload):
            if self.reload is None:
                raise ProtocolError(ErrorCode.INVALID, "this relay cannot reload")
            return self.reload()
        if isinstance(request, ops.Shutdown):
            relay.audit("admin_shutdown", by_uid=self.peer[1])
            self.shutdown.set()
            return {"stopping": True}
        raise ProtocolError(ErrorCode.INVALID, "unknown operation")  # pragma: no cover

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

    def _agent(self, name: str) -> AgentRecord:
        record = self.relay.agents.get(name)
        if record is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no agent named {name!r}")
        return record

    def _end_sessions(self, agent: str, why: str) -> None:
        relay = self.relay
        for sid in [sid for sid, s in relay.sessions.items() if s.agent == agent]:
            del relay.sessions[sid]
        relay.committer.submit(Job(run=lambda s: s.delete_sessions_of(agent)), want_result=False)
        relay.close_agent(agent, ErrorCode.AUTH_FAILED, why)

    async def _status(self) -> dict[str, Any]:
        relay = self.relay
        try:
            depths, held = await relay.committer.read(lambda s: (s.queue_depths(), s.held_count()))
        except StoreFailure:
            depths, held = {}, None  # status must still answer when the store has failed
        return {
            "pid": os.getpid(),
            "uptime": round(relay.clock() - relay.started_at, 3),
            "socket": str(relay.config.socket_path),
            "state_dir": str(relay.config.state_dir),
            "accepting": relay.committer.failure is None,
            "uid": os.getuid(),
            "sandbox": self.sandbox,
            "failure": relay.committer.failure,
            "connections": relay.connections,
            "held": held,
            "anomalies": relay.counters.anomalies,
            "alerts": list(relay.counters.alerts)[-20:],
            "agents": [
                {
                    "name": name,
                    "online": len(relay.online.get(name, ())),
                    "queued": depths.get(name, 0),
                    "quarantined": relay.agents[name].quarantined,
                    **{
                        k: relay.activity[name][k] if name in relay.activity else 0
                        for k in ("sent", "delivered", "refused")
                    },
                    "sessions": [c.session_id for c in relay.online.get(name, ())],
                }
                for name in sorted(relay.agents)
            ],
            "counters": {
                "accepted": relay.counters.accepted,
                "delivered": relay.counters.delivered,
                "acked": relay.counters.acked,
                "held": relay.counters.held,
                "refused": dict(relay.counters.refused),
                "commits": relay.committer.batches,
            },
        }

    async def _operator_send(self, request: ops.SessionSend) -> dict[str, Any]:
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


def _check_name(name: str) -> None:
    problem = agent_name_problem(name)
    if problem:
        raise ProtocolError(ErrorCode.INVALID, problem)


def _pairs(sender: str, recipient: str, both: bool) -> list[tuple[str, str]]:
    if sender == recipient:
        raise ProtocolError(ErrorCode.INVALID, "an agent does not message itself")
    return [(sender, recipient), (recipient, sender)] if both else [(sender, recipient)]


def _log_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("admin request failed", exc_info=task.exception())
