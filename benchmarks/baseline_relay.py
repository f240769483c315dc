"""The ceiling for this design: a relay with no checks and no storage.

Rule: this is the least a relay over newline-delimited JSON on a Unix socket can
do and still be a relay -- uvloop, msgspec, one asyncio.Protocol per
connection, a name in ``hello`` taken on trust, every ``send`` answered with
``ok`` and forwarded at once (or kept in memory while the recipient is away).
Nothing is validated beyond what parsing needs, nothing is written to disk,
nothing is rate limited. What ccc-relay does on top of this costs whatever the
two differ by.

Run as its own process: ``python -m benchmarks.baseline_relay --socket PATH``.
``BaselineClient`` is the matching client the benchmark drives it with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import cast

import msgspec

from benchmarks.cases import Pipe, Sink, run_loop

MAX_QUEUE = 1_000_000  # messages kept for one absent recipient: the run is bounded anyway
BACKLOG = 1024  # pending connections; the idle case connects 50 at a time


class Hello(msgspec.Struct, tag="hello"):
    agent: str
    receive: bool = True  # a send-only connection is not where the agent's messages go


class Send(msgspec.Struct, tag="send"):
    seq: int
    to: str
    body: str


class Ok(msgspec.Struct, tag="ok"):
    seq: int


class Msg(msgspec.Struct, tag="msg"):
    sender: str
    body: str


_decode_in = msgspec.json.Decoder(Hello | Send).decode
_decode_out = msgspec.json.Decoder(Ok | Msg).decode
_encode = msgspec.json.Encoder().encode


def split_lines(carry: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines in ``carry + data`` and the incomplete rest."""
    lines = (carry + data).split(b"\n") if carry else data.split(b"\n")
    return lines, lines.pop()


class _Relay:
    def __init__(self) -> None:
        self.online: dict[str, _Conn] = {}
        self.queued: dict[str, deque[bytes]] = {}


class _Conn(asyncio.Protocol):
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.agent: str | None = None
        self.transport: asyncio.Transport | None = None
        self.carry = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.agent is not None and self.relay.online.get(self.agent) is self:
            del self.relay.online[self.agent]

    def data_received(self, data: bytes) -> None:
        lines, self.carry = split_lines(self.carry, data)
        out: list[bytes] = []
        for line in lines:
            frame = _decode_in(line)
            if isinstance(frame, Send):
                self._forward(frame)
                out.append(_encode(Ok(frame.seq)) + b"\n")
            else:
                self._hello(frame)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _forward(self, frame: Send) -> None:
        line = _encode(Msg(self.agent or "", frame.body)) + b"\n"
        peer = self.relay.online.get(frame.to)
        if peer is not None and peer.transport is not None:
            peer.transport.write(line)
            return
        queue = self.relay.queued.setdefault(frame.to, deque())
        if len(queue) < MAX_QUEUE:
            queue.append(line)

    def _hello(self, hello: Hello) -> None:
        agent = self.agent = hello.agent
        if not hello.receive:
            return
        self.relay.online[agent] = self
        queue = self.relay.queued.pop(agent, None)
        if queue and self.transport is not None:
            self.transport.writelines(queue)


async def serve(socket_path: Path, ready: Callable[[], None] | None = None) -> None:
    """Serve on ``socket_path`` (mode 0600) until SIGTERM or SIGINT."""
    relay = _Relay()
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: _Conn(relay), str(socket_path), backlog=BACKLOG)
    os.chmod(socket_path, 0o600)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready()
    try:
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)


class BaselineClient(asyncio.Protocol):
    """One agent's connection: ``send`` with a window, received bodies to ``on_body``."""

    def __init__(self, on_body: Callable[[str], None] | None = None) -> None:
        self.on_body = on_body
        self.transport: asyncio.Transport | None = None
        self.carry = b""
        self.seq = 0
        self.acked = 0
        self._waiter: asyncio.Future[None] | None = None
        self._wait_for = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(cls, socket_path: str, agent: str,
                      on_body: Callable[[str], None] | None = None) -> BaselineClient:  # fmt: skip
        loop = asyncio.get_running_loop()
        _, client = await loop.create_unix_connection(lambda: cls(on_body), socket_path)
        client.write_frame(Hello(agent, receive=on_body is not None))
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("the baseline relay closed"))

    def write_frame(self, frame: object) -> None:
        assert self.transport is not None
        self.transport.write(_encode(frame) + b"\n")

    def send(self, to: str, body: str) -> None:
        self.seq += 1
        self.write_frame(Send(self.seq, to, body))

    async def wait_acked(self, upto: int) -> None:
        """Wait until every send up to ``upto`` was answered."""
        if self.acked >= upto:
            return
        self._wait_for = upto
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    def data_received(self, data: bytes) -> None:
        lines, self.carry = split_lines(self.carry, data)
        for line in lines:
            frame = _decode_out(line)
            if isinstance(frame, Ok):
                self.acked = frame.seq
            elif self.on_body is not None:
                self.on_body(frame.body)
        waiter = self._waiter
        if waiter is not None and self.acked >= self._wait_for and not waiter.done():
            waiter.set_result(None)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            await self.closed


# --- the benchmark's sender and receiver ------------------------------------------


class BaselinePipe(Pipe):
    async def open(self) -> None:
        self.client = await BaselineClient.connect(self.access.address, self.agent)

    async def submit(self, to: str, body: str) -> None:
        self.client.send(to, body)

    async def wait_below(self, limit: int) -> None:
        await self.client.wait_acked(self.client.seq - max(1, limit) + 1)

    @property
    def outstanding(self) -> int:
        return self.client.seq - self.client.acked

    def reap(self) -> None:
        self.result.accepted = self.client.acked

    async def close(self) -> None:
        self.result.accepted = self.client.acked
        await self.client.close()


class BaselineSink(Sink):
    async def open(self) -> None:
        self.client = await BaselineClient.connect(self.access.address, self.agent,
                                                   self.tally.seen)  # fmt: skip

    async def run(self) -> None:
        await self.tally.finished.wait()

    async def close(self) -> None:
        await self.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--ready-file", type=Path, help="created once the socket listens")
    args = parser.parse_args()
    ready_file: Path | None = args.ready_file

    def ready() -> None:
        if ready_file is not None:
            ready_file.write_text(str(os.getpid()))

    run_loop(serve(args.socket, ready))


if __name__ == "__main__":
    main()
