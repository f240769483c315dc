"""One agent connection's transport: bytes to the shell, frames to the socket.

Decisions are not made here: every byte read goes to ``RelayShell.received``
(and from there to the core), and the shell writes back through ``write`` and
``close``. What stays here is what only a transport can do: the hello
deadline's timer, one write per loop turn for all the frames queued in it, and
back-pressure -- a peer that stops reading stops being read (write buffer above
``WRITE_HIGH_WATER``), and a connection whose big body is being sanitised is
not read until it is done.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import msgspec

from ccc_relay.daemon.sockets import peer_credentials
from ccc_relay.protocol.codec import encode

if TYPE_CHECKING:
    from ccc_relay.daemon.shell import RelayShell

# A peer that stops reading is not allowed to grow our write buffer without
# bound: above the high mark we stop reading its frames until it drains.
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024
# A peer that has not drained its buffer for this long is not reading at all:
# it is disconnected (loudly) rather than holding its 4 MiB for ever.
WRITE_STALL_LIMIT = 30.0


class AgentConnection(asyncio.Protocol):
    def __init__(self, shell: RelayShell, *, bound_agent: str | None = None) -> None:
        self.shell = shell
        self.bound_agent = bound_agent  # a per-agent socket's agent
        self.id = 0
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._hello_timer: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._input_held = False

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        peer = peer_credentials(sock) if sock is not None else (0, -1, -1)
        shell = self.shell
        self._hello_timer = asyncio.get_running_loop().call_later(
            shell.core.limits.hello_timeout, self._hello_due
        )
        self.id = shell.connected(self, peer, self.bound_agent)

    def data_received(self, data: bytes) -> None:
        self.shell.received(self.id, data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self._transport = None
        self.shell.disconnected(self.id)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()
        self._stall_timer = asyncio.get_running_loop().call_later(
            WRITE_STALL_LIMIT, self.shell.stalled, self.id
        )

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._update_reading()

    def _hello_due(self) -> None:
        self._hello_timer = None
        self.shell.hello_timed_out(self.id)

    # --- what the shell does with it ----------------------------------------------------

    def write(self, frame: msgspec.Struct) -> None:
        """Queue a frame; all frames queued in one loop turn go out in one write.

        A burst of sends answered by a burst of ``accepted`` frames (or a top-up
        of pushed messages) then costs one syscall instead of one per frame.
        """
        if self._transport is None:
            return
        self._out.append(encode(frame))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self._transport
        if self._out and transport is not None and not transport.is_closing():
            transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
        self._out.clear()

    def close(self) -> None:
        """Close once the frames queued so far have gone out."""
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def hold_input(self) -> None:
        """Stop reading (a big body is being sanitised; later frames wait)."""
        self._input_held = True
        self._update_reading()

    def release_input(self) -> None:
        self._input_held = False
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._input_held or self._writing_paused:
            transport.pause_reading()
        else:
            transport.resume_reading()
