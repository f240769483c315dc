"""The ceiling for this design: a relay with no checks and no storage.

Rule: this is the least a relay over newline-delimited JSON on a Unix socket can
do and still be a relay -- uvloop, msgspec, one asyncio.Protocol per
connection, a name in ``hello`` taken on trust, every ``send`` answered with
``ok`` and forwarded at once (or kept in memory while the recipient is away).
Nothing is validated beyond what parsing needs, nothing is written to disk,
nothing is rate limited. What ccc-relay does on top of this costs whatever the
two differ by.

With ``--durable FILE`` it is the durable floor instead (``baseline_store.py``):
every message is in a SQLite file, fsynced, before its ``ok`` and before it is
forwarded, and the recipient acks ids so their rows are deleted -- ccc-relay's
durability and nothing else of what it does. ``--sanitize`` and ``--audit DIR``
add ccc-relay's own sanitiser and audit log to that floor (``ladder.py``).

Run as its own process: ``python -m benchmarks.baseline_relay --socket PATH
[--durable FILE [--sanitize] [--audit DIR]]``. ``BaselineClient`` is the
matching client the benchmark drives it with.
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
from typing import TYPE_CHECKING, cast

import msgspec

from benchmarks.baseline_store import Batch, DurableQueue
from benchmarks.cases import ACK_AFTER, ACK_BATCH, Pipe, Sink, run_loop

if TYPE_CHECKING:  # loaded only when asked for: the plain relay stays free of ccc-relay
    from ccc_relay.policy.sanitize import SanitizeOptions

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


class Msg(msgspec.Struct, tag="msg", omit_defaults=True):
    sender: str
    body: str
    id: int = 0  # durable mode: what the recipient acks; 0 (and left out) otherwise


class Ack(msgspec.Struct, tag="ack"):
    ids: list[int]


_decode_in = msgspec.json.Decoder(Hello | Send | Ack).decode
_decode_out = msgspec.json.Decoder(Ok | Msg).decode
_encode = msgspec.json.Encoder().encode


def split_lines(carry: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines in ``carry + data`` and the incomplete rest."""
    lines = (carry + data).split(b"\n") if carry else data.split(b"\n")
    return lines, lines.pop()


class _Relay:
    def __init__(self, durable: Path | None = None, *, audit_dir: Path | None = None,
                 sanitizing: SanitizeOptions | None = None) -> None:  # fmt: skip
        self.online: dict[str, _Conn] = {}
        self.queued: dict[str, deque[bytes]] = {}
        audit = None
        if audit_dir is not None:
            from ccc_relay.audit.log import AuditLog

            audit = AuditLog(audit_dir)
        self.store = None if durable is None else DurableQueue(durable, self.committed,
                                                                audit=audit)  # fmt: skip
        self.clean: Callable[[str], str] | None = None  # ccc-relay's sanitiser, when asked for
        if sanitizing is not None:
            from ccc_relay.policy.sanitize import sanitize

            self.clean = lambda body: sanitize(body, sanitizing).text

    def deliver(self, recipient: str, line: bytes) -> None:
        peer = self.online.get(recipient)
        if peer is not None and peer.transport is not None:
            peer.transport.write(line)
            return
        queue = self.queued.setdefault(recipient, deque())
        if len(queue) < MAX_QUEUE:
            queue.append(line)

    def committed(self, batch: Batch) -> None:
        """A durable batch: answer its senders, then forward its messages (one write each)."""
        answers: dict[_Conn, list[bytes]] = {}
        forwards: dict[str, list[bytes]] = {}
        for (message_id, recipient, sender, body), (conn, seq) in batch:
            answers.setdefault(conn, []).append(_encode(Ok(seq)) + b"\n")
            line = _encode(Msg(sender, body, message_id)) + b"\n"
            forwards.setdefault(recipient, []).append(line)
        for conn, lines in answers.items():
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.write(b"".join(lines))
        for recipient, lines in forwards.items():
            self.deliver(recipient, b"".join(lines))


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
        store = self.relay.store
        for line in lines:
            frame = _decode_in(line)
            if isinstance(frame, Send):
                if store is None:
                    line = _encode(Msg(self.agent or "", frame.body)) + b"\n"
                    self.relay.deliver(frame.to, line)
                    out.append(_encode(Ok(frame.seq)) + b"\n")
                else:  # answered and forwarded by ``_Relay.committed``, once durable
                    clean = self.relay.clean
                    body = frame.body if clean is None else clean(frame.body)
                    store.add(self.agent or "", frame.to, body, (self, frame.seq))
            elif isinstance(frame, Ack):
                if store is not None:
                    store.ack(frame.ids)
            else:
                self._hello(frame)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _hello(self, hello: Hello) -> None:
        agent = self.agent = hello.agent
        if not hello.receive:
            return
        self.relay.online[agent] = self
        queue = self.relay.queued.pop(agent, None)
        if queue and self.transport is not None:
            self.transport.writelines(queue)


async def serve(socket_path: Path, ready: Callable[[], None] | None = None, *,
                durable: Path | None = None, audit_dir: Path | None = None,
                sanitizing: SanitizeOptions | None = None) -> None:  # fmt: skip
    """Serve on ``socket_path`` (mode 0600) until SIGTERM or SIGINT."""
    relay = _Relay(durable, audit_dir=audit_dir, sanitizing=sanitizing)
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
        if relay.store is not None:
            relay.store.close()


class BaselineClient(asyncio.Protocol):
    """One agent's connection: ``send`` with a window, received bodies to ``on_body``.

    Messages that carry an id (the durable floor's) are acked the way the ccc
    receiver acks: ``ACK_BATCH`` ids at a time, or whatever came within ``ACK_AFTER``.
    """

    def __init__(self, on_body: Callable[[str], None] | None = None) -> None:
        self.on_body = on_body
        self.transport: asyncio.Transport | None = None
        self.carry = b""
        self.seq = 0
        self.acked = 0
        self._waiter: asyncio.Future[None] | None = None
        self._wait_for = 0
        self._unacked: list[int] = []
        self._ack_timer: asyncio.TimerHandle | None = None
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
                if frame.id:
                    self._unacked.append(frame.id)
        if len(self._unacked) >= ACK_BATCH:
            self.flush_acks()
        elif self._unacked and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_AFTER, self.flush_acks)
        waiter = self._waiter
        if waiter is not None and self.acked >= self._wait_for and not waiter.done():
            waiter.set_result(None)

    def flush_acks(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._unacked and self.transport is not None and not self.transport.is_closing():
            self.write_frame(Ack(self._unacked))
        self._unacked = []

    async def close(self) -> None:
        if self.transport is not None:
            self.flush_acks()
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
    parser.add_argument(
        "--durable", type=Path, metavar="FILE",
        help="the durable floor: store every message in this SQLite file before answering it",
    )  # fmt: skip
    parser.add_argument(
        "--audit",
        type=Path,
        metavar="DIR",
        help="with --durable: ccc-relay's audit log in DIR, a line per message",
    )
    parser.add_argument(
        "--sanitize",
        action="store_true",
        help="with --durable: ccc-relay's sanitiser on every body",
    )
    args = parser.parse_args()
    if (args.audit or args.sanitize) and args.durable is None:
        parser.error("--audit and --sanitize need --durable")
    ready_file: Path | None = args.ready_file

    def ready() -> None:
        if ready_file is not None:
            ready_file.write_text(str(os.getpid()))

    sanitizing = None
    if args.sanitize:
        from ccc_relay.policy.sanitize import SanitizeOptions

        sanitizing = SanitizeOptions(paths="escape")  # as the benchmark's ccc config has it
    run_loop(serve(args.socket, ready, durable=args.durable, audit_dir=args.audit,
                   sanitizing=sanitizing))  # fmt: skip


if __name__ == "__main__":
    main()
