"""One agent connection: the session state machine and frame handling.

States, in one table (``_ALLOWED``): ``hello`` accepts only a hello;
``ready`` accepts everything an authenticated agent may do; ``closed``
accepts nothing. A refusal that is the peer's fault but harmless (forbidden,
rate limited, replay...) is answered and the connection goes on; a fatal one
(auth failure, oversized frame, expired session) is answered, then the
connection is closed.

Bytes come in through ``data_received`` and are handled synchronously; the
only waits are on the committer, whose futures call back into the connection.
The hello is handled in ``authenticating.py``, sends in ``sending.py``,
pushes, fetches and acks in ``receiving.py``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import msgspec

from ccc_relay.daemon.authenticating import Authenticating
from ccc_relay.daemon.receiving import Receiving
from ccc_relay.daemon.sending import Sending
from ccc_relay.daemon.sockets import peer_credentials
from ccc_relay.protocol.codec import LineBuffer, decode_client_frame, encode, line_cap_for
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import (
    Ack,
    AgentInfo,
    AgentList,
    Bye,
    ClientFrame,
    Error,
    Fetch,
    Goodbye,
    Hello,
    ListAgents,
    Ping,
    Pong,
    Send,
    Subscribe,
)
from ccc_relay.store import StoreFailure

if TYPE_CHECKING:
    from ccc_relay.daemon.admission import Session
    from ccc_relay.daemon.relay import Relay

log = logging.getLogger("ccc_relay.daemon")

# A peer that stops reading is not allowed to grow our write buffer without
# bound: above the high mark we stop reading its frames until it drains.
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024

_ALLOWED: dict[str, tuple[type, ...]] = {
    "hello": (Hello,),
    "ready": (Send, Ack, Fetch, Subscribe, ListAgents, Ping, Bye),
    "closed": (),
}


class AgentConnection(Authenticating, Receiving, Sending, asyncio.Protocol):
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

    # --- peers ----------------------------------------------------------------

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


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if isinstance(exc, StoreFailure):
            return
        log.error("connection task failed", exc_info=exc)
