"""The admin plane's connection: the peer check, framing, answering in order.

Only the daemon's own user (or root) may speak here: the socket is 0600 and
every connection's SO_PEERCRED uid is checked as well, so a wrong mode on a
shared filesystem cannot open administration to anyone else. Each request is
one line, each answer one ``result`` or ``error`` line, in request order. What
a request does is in ``operator.py``; every refusal here is answered with its
code and audited.

Each connection's requests are served by one task that the daemon's task group
owns; it never lets an exception escape (a defect is logged and answered
``internal``), so an operator's request can never take the relay down.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, cast

import msgspec

from ccc_relay.core.effects import Persist
from ccc_relay.daemon.operator import Operator
from ccc_relay.daemon.sockets import peer_credentials
from ccc_relay.protocol import admin as ops
from ccc_relay.protocol.codec import LineBuffer, encode
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import Error
from ccc_relay.protocol.plain import plain_words
from ccc_relay.store import StoreFailure

log = logging.getLogger("ccc_relay.daemon")

ADMIN_LINE_CAP = 64 * 1024 * 1024  # operator messages are capped by max_message_size anyway

Spawn = Callable[[Coroutine[Any, Any, None]], object]


class AdminConnection(asyncio.Protocol):
    def __init__(self, make_operator: Callable[[int], Operator], spawn: Spawn) -> None:
        self._make_operator = make_operator
        self._spawn = spawn
        self._transport: asyncio.Transport | None = None
        self._buffer = LineBuffer(ADMIN_LINE_CAP)
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.peer = (0, -1, -1)
        self.operator: Operator | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        self.peer = peer_credentials(sock) if sock is not None else (0, -1, -1)
        self.operator = operator = self._make_operator(self.peer[1])
        if self.peer[1] not in (0, os.geteuid()):
            pid, uid, gid = self.peer
            record = operator.core.record(
                operator.shell.clock(), "admin_refused", peer_pid=pid, peer_uid=uid, peer_gid=gid
            )
            operator.shell.run([Persist(audit=[record])])
            self._reply(
                Error(
                    code=ErrorCode.FORBIDDEN.value,
                    message="only the relay's own user may administer it",
                )
            )
            transport.close()
            return
        self._spawn(self._serve(operator))

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
                self._lines.put_nowait(line)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._lines.put_nowait(None)

    def _reply(self, frame: Any) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode(frame))

    async def _serve(self, operator: Operator) -> None:
        """Answer this connection's requests, one at a time, until it closes."""
        while (line := await self._lines.get()) is not None:
            try:
                request = ops.decode_admin_request(line)
                data = await operator.handle(request)
                self._reply(ops.Result(data=data))
            except msgspec.ValidationError as exc:
                self._refuse(
                    ProtocolError(ErrorCode.INVALID, f"invalid request: {plain_words(str(exc))}")
                )
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                self._refuse(ProtocolError(ErrorCode.INVALID, f"invalid request: {exc}"))
            except ProtocolError as exc:
                self._refuse(exc)
            except StoreFailure as exc:
                self._refuse(ProtocolError(ErrorCode.UNAVAILABLE, str(exc)))
            except Exception as exc:
                log.error("admin request failed", exc_info=exc)
                self._refuse(
                    ProtocolError(ErrorCode.INTERNAL, f"the relay hit an internal error: {exc}")
                )

    def _refuse(self, exc: ProtocolError) -> None:
        """Every refusal on the admin plane: a code, a sentence, an audit line."""
        operator = self.operator
        if operator is not None:
            record = operator.core.record(
                operator.shell.clock(),
                "admin_refused",
                code=exc.code.value,
                reason=exc.message,
                by_uid=self.peer[1],
            )
            operator.shell.run([Persist(audit=[record])])
        self._reply(Error(code=exc.code.value, message=exc.message))
