"""The asyncio client: many requests in flight, pushed messages on a queue.

A reader task routes each frame: ``accepted``/``error`` with a seq to that
send's future; other answers to the oldest waiting request of their kind;
``message`` frames (after duplicate suppression) to ``messages``. Sends may
be pipelined: ``send()`` returns once the relay accepted, ``send_nowait()``
returns the future at once (benchmarks keep a window of them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from ccc_relay.client.base import (
    RelayError,
    RelayUnavailable,
    SeenIds,
    check_recipient,
    unreachable,
)
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.client.signatures import verify_message
from ccc_relay.protocol.codec import LineBuffer, decode_relay_frame, encode
from ccc_relay.protocol.frames import (
    Accepted,
    Ack,
    Acked,
    AgentInfo,
    AgentList,
    Bye,
    Error,
    Fetch,
    Fetched,
    Goodbye,
    Held,
    Hello,
    ListAgents,
    Message,
    Ping,
    Pong,
    Send,
    Subscribe,
    Welcome,
)

READ_CHUNK = 256 * 1024
REPLY_LINE_CAP = 100 * 1024 * 1024
_ANSWERS = (Welcome, Fetched, Acked, AgentList, Pong)


class AsyncRelayClient:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.welcome: Welcome | None = None
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._sends: dict[int, asyncio.Future[Accepted | Held]] = {}
        self._waiting: dict[type, deque[asyncio.Future[Any]]] = {k: deque() for k in _ANSWERS}
        self._fetched: list[Message] | None = None
        self._seen = SeenIds()
        self._seq = 0
        self._closed: RelayError | None = None

    async def connect(self) -> Welcome:
        """Connect and authenticate. Raises RelayUnavailable or RelayError."""
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                str(self.endpoint.socket_path), limit=REPLY_LINE_CAP
            )
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise unreachable(self.endpoint.socket_path, exc) from None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        try:
            welcome: Welcome = await self._request(
                Hello(
                    agent=self.endpoint.agent,
                    credential=self.endpoint.credential.reveal(),
                    signatures=self.endpoint.relay_pubkey is not None,
                ),
                Welcome,
            )
        except BaseException:
            await self.close()
            raise
        self.welcome = welcome
        self._seq = welcome.last_seq
        return welcome

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(encode(Bye()))
                self._writer.close()
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._writer = None

    async def __aenter__(self) -> AsyncRelayClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- requests ---------------------------------------------------------------

    def send_nowait(
        self,
        to: str,
        text: str,
        *,
        thread: str | None = None,
        reply_to: str | None = None,
        deliver_at: float | None = None,
    ) -> asyncio.Future[Accepted | Held]:
        """Queue a send; the future resolves to ``accepted`` (or ``held``) or raises RelayError."""
        self._check_open()
        check_recipient(to)
        self._seq += 1
        future: asyncio.Future[Accepted | Held] = asyncio.get_running_loop().create_future()
        self._sends[self._seq] = future
        self._write(
            Send(
                seq=self._seq,
                to=to,
                body=text,
                thread=thread,
                reply_to=reply_to,
                deliver_at=deliver_at,
            )
        )
        return future

    async def send(self, to: str, text: str, **options: Any) -> Accepted | Held:
        return await self.send_nowait(to, text, **options)

    async def fetch(self, limit: int = 100) -> list[Message]:
        self._fetched = []
        await self._request(Fetch(limit=limit), Fetched)
        messages, self._fetched = self._fetched, None
        return messages

    async def ack(self, ids: list[str]) -> int:
        settled = 0
        for start in range(0, len(ids), 1024):
            answer: Acked = await self._request(Ack(ids=ids[start : start + 1024]), Acked)
            settled += answer.count
        return settled

    async def inbox(self, limit: int = 100, *, ack: bool = True) -> list[Message]:
        messages = await self.fetch(limit)
        if ack and messages:
            await self.ack([m.id for m in messages])
        return messages

    async def agents(self) -> list[AgentInfo]:
        answer: AgentList = await self._request(ListAgents(), AgentList)
        return answer.agents

    async def ping(self) -> None:
        await self._request(Ping(), Pong)

    async def subscribe(self, window: int = 64) -> None:
        """Pushed messages then arrive on ``self.messages``."""
        self._write(Subscribe(window=window))

    async def wait_for_message(self, timeout: float | None) -> Message | None:  # noqa: ASYNC109
        """The next pushed message, or None when ``timeout`` passes first."""
        self._check_open()
        try:
            return await asyncio.wait_for(self.messages.get(), timeout)
        except TimeoutError:
            return None

    # --- plumbing ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    def _write(self, frame: Any) -> None:
        if self._writer is None:
            raise RelayUnavailable("not connected")
        self._writer.write(encode(frame))

    async def _request(self, frame: Any, answer: type) -> Any:
        self._check_open()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[answer].append(future)
        self._write(frame)
        return await future

    async def _read_loop(self) -> None:
        assert self._reader is not None
        buffer = LineBuffer(REPLY_LINE_CAP)
        reason: RelayError = RelayUnavailable("the relay closed the connection")
        try:
            while True:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    break
                for line in buffer.feed(data):
                    frame = decode_relay_frame(line)
                    closing = self._route(frame)
                    if closing is not None:
                        reason = closing
        except (OSError, RelayError) as exc:
            reason = exc if isinstance(exc, RelayError) else RelayUnavailable(str(exc))
        finally:
            self._fail_all(reason)

    def _route(self, frame: Any) -> RelayError | None:
        if isinstance(frame, Message):
            if self.endpoint.relay_pubkey is not None:
                verify_message(self.endpoint.relay_pubkey, frame)  # a failure ends the session
            if self._seen.first_time(frame):
                if self._fetched is not None:
                    self._fetched.append(frame)
                else:
                    self.messages.put_nowait(frame)
            return None
        if isinstance(frame, Accepted | Held):
            future = self._sends.pop(frame.seq, None)
            if future is not None and not future.done():
                future.set_result(frame)
            return None
        if isinstance(frame, Error):
            error = RelayError.from_frame(frame)
            if frame.seq is not None and frame.seq in self._sends:
                future = self._sends.pop(frame.seq)
                if not future.done():
                    future.set_exception(error)
                return None
            # An error without seq answers the oldest waiting request.
            for waiters in self._waiting.values():
                if waiters:
                    waiters.popleft().set_exception(error)
                    return None
            return error
        if isinstance(frame, Goodbye):
            return RelayUnavailable(f"the relay closed the session: {frame.reason}")
        queue = self._waiting.get(type(frame))
        if queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(frame)
        return None

    def _fail_all(self, reason: RelayError) -> None:
        self._closed = reason
        for future in self._sends.values():
            if not future.done():
                future.set_exception(reason)
        self._sends.clear()
        for waiters in self._waiting.values():
            while waiters:
                future = waiters.popleft()
                if not future.done():
                    future.set_exception(reason)
