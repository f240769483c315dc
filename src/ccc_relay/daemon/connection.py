"""One agent connection: the session state machine and frame handling.

States, in one table (``_ALLOWED``): ``hello`` accepts only a hello;
``ready`` accepts everything an authenticated agent may do; ``closed``
accepts nothing. A refusal that is the peer's fault but harmless (forbidden,
rate limited, replay...) is answered and the connection goes on; a fatal one
(auth failure, oversized frame, expired session) is answered, then the
connection is closed.

Bytes come in through ``data_received`` and are handled synchronously; the
only waits are on the committer, whose futures call back into the connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import msgspec

from ccc_relay.daemon.committer import Job
from ccc_relay.daemon.receiving import Receiving
from ccc_relay.daemon.sockets import peer_credentials
from ccc_relay.policy.acl import HOLD
from ccc_relay.policy.sanitize import Sanitized, sanitize
from ccc_relay.protocol.codec import (
    LineBuffer,
    body_size,
    decode_client_frame,
    encode,
    line_cap_for,
)
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import (
    PROTOCOL_VERSION,
    Accepted,
    Ack,
    AgentInfo,
    AgentList,
    Bye,
    ClientFrame,
    Error,
    Fetch,
    Goodbye,
    Held,
    Hello,
    ListAgents,
    Ping,
    Pong,
    Send,
    Subscribe,
    Welcome,
)
from ccc_relay.store import StoredMessage, StoreFailure

if TYPE_CHECKING:
    from ccc_relay.daemon.relay import Relay, Session

log = logging.getLogger("ccc_relay.daemon")

# Bodies longer than this are sanitised on a worker thread (their frames still
# in order), so one hostile megabyte cannot stall every other agent's frames.
SANITIZE_INLINE_LIMIT = 64 * 1024
# Normalisations that say nothing about intent; the rest count towards the
# "sanitized" anomaly rule.
BENIGN_CHANGES = frozenset({"newline", "nfc"})

# A peer that stops reading is not allowed to grow our write buffer without
# bound: above the high mark we stop reading its frames until it drains.
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024

_ALLOWED: dict[str, tuple[type, ...]] = {
    "hello": (Hello,),
    "ready": (Send, Ack, Fetch, Subscribe, ListAgents, Ping, Bye),
    "closed": (),
}


class AgentConnection(Receiving, asyncio.Protocol):
    def __init__(self, relay: Relay, *, bound_agent: str | None = None) -> None:
        self.relay = relay
        # A per-agent socket can only ever authenticate as its own agent.
        self.bound_agent = bound_agent
        self.state = "hello"
        self.agent: str | None = None
        self.claimed: str | None = None  # the name a hello claimed, before it is proven
        self.session: Session | None = None
        self.peer: tuple[int, int, int] = (0, -1, -1)
        self.subscribed = False
        self.wants_signatures = False
        self.window = 0
        self.backlog = False
        self.topping_up = False
        self.inflight: dict[str, int] = {}  # message id -> delivery number
        self.connected_at = relay.clock()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._input_held = False  # a frame is being finished off the loop; later ones wait
        self._queued_lines: list[bytes] = []
        self._flush_scheduled = False
        self._buffer = LineBuffer(line_cap_for(relay.limits.max_message_size))
        self._hello_timer: asyncio.TimerHandle | None = None
        self._counted_unauthenticated = False

    # --- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.peer = peer_credentials(sock)
        relay = self.relay
        relay.connections += 1
        if relay.connections > relay.limits.max_connections:
            self._refuse_early("too many connections to the relay; try again later")
            return
        if relay.unauthenticated >= relay.limits.max_unauthenticated:
            self._refuse_early("too many connections are waiting to authenticate; try again later")
            return
        relay.unauthenticated += 1
        self._counted_unauthenticated = True
        loop = asyncio.get_running_loop()
        self._hello_timer = loop.call_later(relay.limits.hello_timeout, self._hello_timed_out)

    def _refuse_early(self, sentence: str) -> None:
        self.fail(ProtocolError(ErrorCode.BUSY, sentence, fatal=True, retry_after=1.0))

    def data_received(self, data: bytes) -> None:
        if self.state == "closed":
            return
        try:
            lines = self._buffer.feed(data)
        except ProtocolError as exc:
            self.fail(exc)
            return
        for line in lines:
            if self.state == "closed":
                return
            if self._input_held:
                self._queued_lines.append(line)
                continue
            self._handle_line(line)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._close_state()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and self.state != "closed":
            self._transport.resume_reading()

    # --- framing ------------------------------------------------------------

    def _handle_line(self, line: bytes) -> None:
        if not line.strip():
            return  # blank keep-alive lines are harmless
        seq: int | None = None
        try:
            frame = decode_client_frame(line)
            seq = frame.seq if isinstance(frame, Send) else None
            if not isinstance(frame, _ALLOWED[self.state]):
                if self.state == "hello":
                    raise ProtocolError(
                        ErrorCode.AUTH_REQUIRED, "say hello before anything else", fatal=True
                    )
                raise ProtocolError(ErrorCode.INVALID, "already authenticated")
            if self.session is not None:
                self.check_expiry(self.relay.clock())
                if self.state == "closed":
                    return
            self._dispatch(frame)
        except ProtocolError as exc:
            if seq is None and exc.code is ErrorCode.INVALID:
                seq = salvage_seq(line)
            self.refuse(exc, seq=seq)
        except StoreFailure as exc:
            self.refuse(ProtocolError(ErrorCode.UNAVAILABLE, str(exc)), seq=seq)

    def _dispatch(self, frame: ClientFrame) -> None:
        if isinstance(frame, Send):
            self._on_send(frame)
        elif isinstance(frame, Ack):
            self._on_ack(frame)
        elif isinstance(frame, Fetch):
            self._spawn(self._on_fetch(frame))
        elif isinstance(frame, Subscribe):
            self.subscribed = True
            self.window = frame.window
            self.backlog = True
            self.top_up()
        elif isinstance(frame, ListAgents):
            self._on_agents()
        elif isinstance(frame, Ping):
            self.write(Pong(data=frame.data))
        elif isinstance(frame, Hello):
            self._on_hello(frame)
        elif isinstance(frame, Bye):
            self.write(Goodbye())
            self.close()

    def write(self, frame: Any) -> None:
        """Queue a frame; all frames queued in one loop turn go out in one write.

        A burst of sends answered by a burst of ``accepted`` frames (or a top-up
        of pushed messages) then costs one syscall instead of one per frame.
        """
        if self._transport is None or self.state == "closed":
            return
        self._out.append(encode(frame))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self._transport.is_closing():
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._transport.write(data)
        self._out.clear()

    def refuse(self, exc: ProtocolError, *, seq: int | None = None) -> None:
        """Answer a refusal, audit it, and close when it is fatal."""
        self.relay.refuse(
            self.agent,
            exc,
            claimed=self.claimed or self.bound_agent,
            session=self.session_id,
            peer_pid=self.peer[0],
            peer_uid=self.peer[1],
            peer_gid=self.peer[2],
            **({"send_seq": seq} if seq is not None else {}),
        )
        self.write(
            Error(code=exc.code.value, message=exc.message, seq=seq, retry_after=exc.retry_after)
        )
        if exc.fatal:
            self.close()

    def fail(self, exc: ProtocolError) -> None:
        self.refuse(exc)
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._flush()  # the last frames (an error, a bye) go out before the close
            self._transport.close()
        self._close_state()

    def _close_state(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        relay = self.relay
        relay.connections -= 1
        if self._counted_unauthenticated:
            relay.unauthenticated -= 1
            self._counted_unauthenticated = False
        relay.detach(self)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(_log_task_error)

    # --- hello ----------------------------------------------------------------

    def _hello_timed_out(self) -> None:
        if self.state == "hello":
            self.fail(
                ProtocolError(
                    ErrorCode.HELLO_TIMEOUT,
                    "no hello in time; the connection is closed",
                    fatal=True,
                )
            )

    def _on_hello(self, hello: Hello) -> None:
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {hello.version} is not supported; this relay speaks "
                f"{PROTOCOL_VERSION}",
                fatal=True,
            )
        relay = self.relay
        self.claimed = hello.agent
        if self.bound_agent is not None and hello.agent != self.bound_agent:
            # Same answer as a wrong credential; the audit line says which.
            relay.audit(
                "auth_refused",
                agent=hello.agent,
                socket_agent=self.bound_agent,
                reason="agent does not match this per-agent socket",
                peer_pid=self.peer[0],
                peer_uid=self.peer[1],
                peer_gid=self.peer[2],
            )
            raise ProtocolError(
                ErrorCode.AUTH_FAILED,
                "authentication failed: unknown agent, wrong credential, or wrong peer",
                fatal=True,
            )
        session = relay.authenticate(hello.agent, hello.credential, self.peer, hello.resume)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self.state = "ready"
        self.agent = hello.agent
        self.wants_signatures = hello.signatures
        self.session = session
        if self._counted_unauthenticated:
            relay.unauthenticated -= 1
            self._counted_unauthenticated = False
        relay.attach(self)
        relay.audit(
            "authenticated",
            agent=hello.agent,
            session=session.id,
            resumed=hello.resume is not None,
            peer_pid=self.peer[0],
            peer_uid=self.peer[1],
            peer_gid=self.peer[2],
        )
        self.write(
            Welcome(
                session=session.id,
                agent=hello.agent,
                expires_at=session.expires,
                last_seq=session.last_seq,
                max_message_size=relay.limits.max_message_size,
                rate_limit_per_minute=relay.limits.rate_per_minute,
            )
        )

    def check_expiry(self, now: float) -> None:
        if self.session is not None and self.session.expires <= now and self.state == "ready":
            self.fail(
                ProtocolError(
                    ErrorCode.SESSION_EXPIRED,
                    "the session expired (session_timeout); authenticate again",
                    fatal=True,
                )
            )

    # --- send -------------------------------------------------------------------

    def _on_send(self, frame: Send) -> None:
        session = self.session
        assert session is not None
        assert self.agent is not None
        relay = self.relay
        if frame.seq <= session.last_seq:
            raise ProtocolError(
                ErrorCode.REPLAY,
                f"seq {frame.seq} was already used in this session (last was {session.last_seq})",
            )
        if frame.seq != session.last_seq + 1:
            raise ProtocolError(
                ErrorCode.OUT_OF_ORDER,
                f"seq {frame.seq} skips ahead; the next seq is {session.last_seq + 1}",
            )
        # The seq is consumed whatever happens next, so the client's next frame
        # is always last+1; the high-water mark is made durable with it.
        session.last_seq = frame.seq
        seq_update = (session.id, frame.seq)
        try:
            size = body_size(frame.body)
            limit = relay.limits.max_message_size
            if size > limit:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"body is {size} bytes; the limit is {limit} bytes; the connection is closed",
                    fatal=True,
                )
            action = relay.check_send(self.agent, session, frame.to, frame.deliver_at)
        except ProtocolError:
            relay.committer.submit(_seq_only(seq_update), want_result=False)
            raise
        options = relay.limits.sanitize
        if options.enabled and len(frame.body) > SANITIZE_INLINE_LIMIT:
            self._hold_input()
            work = asyncio.get_running_loop().run_in_executor(None, sanitize, frame.body, options)
            work.add_done_callback(lambda f: self._after_sanitize(f, frame, action, seq_update))
            return
        cleaned = sanitize(frame.body, options) if options.enabled else None
        self._finish_send(frame, action, seq_update, cleaned)

    def _after_sanitize(
        self,
        future: asyncio.Future[Sanitized],
        frame: Send,
        action: str,
        seq_update: tuple[str, int],
    ) -> None:
        try:
            if self.state != "closed":
                try:
                    self._finish_send(frame, action, seq_update, future.result())
                except StoreFailure as exc:
                    self.refuse(ProtocolError(ErrorCode.UNAVAILABLE, str(exc)), seq=frame.seq)
        finally:
            self._release_input()

    def _hold_input(self) -> None:
        self._input_held = True
        if self._transport is not None:
            self._transport.pause_reading()

    def _release_input(self) -> None:
        self._input_held = False
        while self._queued_lines and not self._input_held and self.state != "closed":
            self._handle_line(self._queued_lines.pop(0))
        if not self._input_held and self._transport is not None and self.state != "closed":
            self._transport.resume_reading()

    def _finish_send(
        self, frame: Send, action: str, seq_update: tuple[str, int], cleaned: Sanitized | None
    ) -> None:
        relay = self.relay
        session = self.session
        assert session is not None
        assert self.agent is not None
        body = frame.body if cleaned is None else cleaned.text
        changes = cleaned.describe() if cleaned is not None and cleaned.changes else []
        extra: dict[str, Any] = {}
        if cleaned is not None and cleaned.changes:
            extra["sanitized"] = dict(cleaned.changes)
            findings = sum(n for kind, n in cleaned.changes.items() if kind not in BENIGN_CHANGES)
            if findings:
                relay.alert(relay.anomaly.sanitized(self.agent, findings, relay.clock()))
        message = relay.new_message(
            self.agent,
            frame.to,
            body,
            thread=frame.thread,
            reply_to=frame.reply_to,
            deliver_at=frame.deliver_at,
        )
        hold = action == HOLD
        future = relay.enqueue(
            message,
            seq_update=seq_update,
            hold=hold,
            send_seq=frame.seq,
            session=session.id,
            **extra,
        )
        future.add_done_callback(lambda f: self._on_committed(f, frame.seq, message, hold, changes))

    def _on_committed(
        self,
        future: asyncio.Future[Any],
        seq: int,
        message: StoredMessage,
        hold: bool,
        changes: list[str],
    ) -> None:
        exc = future.exception()
        if exc is not None:
            self.write(
                Error(
                    code=ErrorCode.UNAVAILABLE.value,
                    seq=seq,
                    message=f"the relay cannot store messages right now: {exc}",
                )
            )
            return
        if hold:
            self.relay.counters.held += 1
            self.write(Held(seq=seq, id=message.id, changes=changes))
            return
        self.write(Accepted(seq=seq, id=message.id, changes=changes))
        self.relay.committed(message)

    def _on_agents(self) -> None:
        relay = self.relay
        assert self.agent is not None
        self.write(
            AgentList(
                agents=[
                    AgentInfo(
                        name=name, online=name in relay.online, may_send=send, may_receive=recv
                    )
                    for name, send, recv in relay.policy.peers_of(self.agent, relay.known)
                ]
            )
        )


def salvage_seq(line: bytes) -> int | None:
    """The ``seq`` of an invalid ``send`` frame, when one can be read, so the
    client can match the error to its request. Never raises."""
    try:
        data = msgspec.json.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    seq = data.get("seq") if isinstance(data, dict) and data.get("type") == "send" else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 else None


def _seq_only(seq_update: tuple[str, int]) -> Job:
    return Job(seq_update=seq_update)


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if isinstance(exc, StoreFailure):
            return
        log.error("connection task failed", exc_info=exc)
