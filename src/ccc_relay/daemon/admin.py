"""The admin plane: agent and policy administration on the owner-only socket.

Only the daemon's own user (or root) may speak here: the socket is 0600 and
every connection's SO_PEERCRED uid is checked as well, so a wrong mode on a
shared filesystem cannot open administration to anyone else. Each request is
one line, each answer one ``result`` or ``error`` line; every change is
audited.

Here: the connection, its framing, the one dispatch of every operation,
refusals and audited writes. The handlers live in mixins: agents, their
credentials and quarantine (``admin_agents.py``), the pair rules
(``admin_policy.py``), held and operator messages (``admin_messages.py``),
status, sessions, reload and shutdown (``admin_status.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import msgspec

from ccc_relay.daemon.admin_agents import AdminAgents
from ccc_relay.daemon.admin_messages import AdminMessages
from ccc_relay.daemon.admin_policy import AdminPolicy
from ccc_relay.daemon.admin_status import AdminStatus
from ccc_relay.daemon.committer import Job
from ccc_relay.daemon.sockets import peer_credentials
from ccc_relay.protocol import admin as ops
from ccc_relay.protocol.codec import LineBuffer, encode
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import Error
from ccc_relay.store import AgentRecord, StoreFailure

if TYPE_CHECKING:
    from ccc_relay.daemon.relay import Relay

log = logging.getLogger("ccc_relay.daemon")

ADMIN_LINE_CAP = 64 * 1024 * 1024  # operator messages are capped by max_message_size anyway


class AdminConnection(AdminAgents, AdminPolicy, AdminMessages, AdminStatus, asyncio.Protocol):
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
        # Every operation is routed here and only here, so the plane's whole
        # vocabulary can be read in one place.
        if isinstance(request, ops.AgentAdd):
            return await self._add_agent(request)
        if isinstance(request, ops.AgentRotate):
            return await self._rotate_agent(request)
        if isinstance(request, ops.AgentRemove):
            return await self._remove_agent(request)
        if isinstance(request, ops.AgentList):
            return await self._list_agents()
        if isinstance(request, ops.Allow):
            return await self._allow(request)
        if isinstance(request, ops.Deny):
            return await self._deny(request)
        if isinstance(request, ops.PolicyShow):
            return self._show_policy()
        if isinstance(request, ops.Status):
            return await self._report_status()
        if isinstance(request, ops.SessionList):
            return self._list_sessions()
        if isinstance(request, ops.SessionSend):
            return await self._send_as_operator(request)
        if isinstance(request, ops.HeldList):
            return await self._list_held()
        if isinstance(request, ops.Approve):
            return await self._approve(request.id)
        if isinstance(request, ops.Reject):
            return await self._reject(request.id, request.reason)
        if isinstance(request, ops.AgentRelease):
            return await self._release_agent(request)
        if isinstance(request, ops.Reload):
            return self._reload_config()
        if isinstance(request, ops.Shutdown):
            return self._shut_down()
        raise ProtocolError(ErrorCode.INVALID, "unknown operation")  # pragma: no cover

    def _agent(self, name: str) -> AgentRecord:
        record = self.relay.agents.get(name)
        if record is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no agent named {name!r}")
        return record


def _log_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("admin request failed", exc_info=task.exception())
