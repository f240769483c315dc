"""The asyncio client: many requests in flight, pushed messages on a queue.

A reader task feeds what it reads to the ``ClientSession``, which decides what
each frame answers; the task only resolves that request's future. Pushed
messages (after duplicate dropping) go from the session's inbox to
``messages``, except while a fetch is outstanding: those are its answer's.
Sends may be pipelined: ``send()`` returns once the relay accepted,
``send_nowait()`` returns the future at once (benchmarks keep a window of them).

``connect()`` again after ``close()`` (or after the relay closed the
connection) starts a new session on the same object; the ids already taken in
are remembered, so the relay's redelivery of a message not yet acknowledged is
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ccc_relay.client.base import (
    RelayError,
    RelayUnavailable,
    answer,
    check_recipient,
    unexpected,
    unreachable,
)
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.client.signatures import verifier
from ccc_relay.protocol.client_session import (
    REPLY_LINE_CAP,
    ClientSession,
    Event,
    Notice,
    Reply,
    Request,
)
from ccc_relay.protocol.frames import (
    MAX_ACK_IDS,
    Accepted,
    Acked,
    AgentInfo,
    AgentList,
    Error,
    Fetched,
    Held,
    Message,
    Welcome,
)

READ_CHUNK = 256 * 1024


class AsyncRelayClient:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.welcome: Welcome | None = None
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._session = ClientSession(verify=verifier(endpoint.relay_pubkey))
        # A send's future gets its accepted/held frame; other requests' get the Reply.
        self._waiting: dict[Request, asyncio.Future[Any]] = {}
        self._closed: RelayError | None = None

    async def connect(self) -> Welcome:
        """Connect and authenticate. Raises RelayUnavailable or RelayError."""
        if self._writer is not None or self._task is not None:
            await self.close()  # what is left of an earlier connection
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                str(self.endpoint.socket_path), limit=REPLY_LINE_CAP
            )
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise unreachable(self.endpoint.socket_path, exc) from None
        self._session.connection_closed()  # nothing of an earlier connection is pending
        self._closed = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        try:
            request, data = self._session.hello(
                self.endpoint.agent, self.endpoint.credential.reveal()
            )
            welcome = answer(await self._request(request, data), Welcome)
        except BaseException:
            await self.close()
            raise
        self.welcome = welcome
        return welcome

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(self._session.bye())
                self._writer.close()
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._writer = None
        self._task = None

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
        request, data = self._session.send(
            to, text, thread=thread, reply_to=reply_to, deliver_at=deliver_at
        )
        future: asyncio.Future[Accepted | Held] = asyncio.get_running_loop().create_future()
        self._issue(request, data, future)
        return future

    async def send(self, to: str, text: str, **options: Any) -> Accepted | Held:
        return await self.send_nowait(to, text, **options)

    async def fetch(self, limit: int = 100) -> list[Message]:
        """Messages waiting for this agent (not acknowledged yet)."""
        return (await self.fetch_page(limit))[0]

    async def fetch_page(self, limit: int = 100) -> tuple[list[Message], int]:
        """Like :meth:`fetch`, with how many more messages still wait after these."""
        reply = await self._request(*self._ready().fetch(limit))
        return list(reply.messages), answer(reply, Fetched).pending

    async def ack(self, ids: list[str]) -> int:
        settled = 0
        for start in range(0, len(ids), MAX_ACK_IDS):
            reply = await self._request(*self._ready().ack(ids[start : start + MAX_ACK_IDS]))
            settled += answer(reply, Acked).count
        return settled

    async def inbox(self, limit: int = 100, *, ack: bool = True) -> list[Message]:
        messages = await self.fetch(limit)
        if ack and messages:
            await self.ack([m.id for m in messages])
        return messages

    async def agents(self) -> list[AgentInfo]:
        return answer(await self._request(*self._ready().agents()), AgentList).agents

    async def ping(self) -> None:
        await self._request(*self._ready().ping())

    async def subscribe(self, window: int = 64) -> None:
        """Pushed messages then arrive on ``self.messages``."""
        self._write(self._session.subscribe(window))

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

    def _ready(self) -> ClientSession:
        """The session, once the connection is known to be usable: a request is
        only entered in it when it can be written."""
        self._check_open()
        return self._session

    def _write(self, data: bytes) -> None:
        if self._writer is None:
            raise RelayUnavailable("not connected")
        self._writer.write(data)

    async def _request(self, request: Request, data: bytes) -> Reply:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._issue(request, data, future)
        try:
            return await future
        except BaseException:
            self._forget(request)
            raise

    def _issue(self, request: Request, data: bytes, future: asyncio.Future[Any]) -> None:
        self._waiting[request] = future
        try:
            self._write(data)
        except BaseException:
            self._forget(request)
            raise

    def _forget(self, request: Request) -> None:
        """Nobody waits for ``request`` any more (cancelled, or never written): its
        answer, when it comes, is dropped, and an abandoned fetch's messages stay
        in the inbox, for ``messages``."""
        self._waiting.pop(request, None)
        self._session.abandon(request)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        reason: RelayError = RelayUnavailable("the relay closed the connection")
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                self._session.receive_data(data)
                while (event := self._session.next_event()) is not None:
                    closing = self._resolve(event)
                    if closing is not None:
                        reason = closing
                self._hand_out()
        except (OSError, RelayError) as exc:
            reason = exc if isinstance(exc, RelayError) else RelayUnavailable(str(exc))
        finally:
            self._fail_all(reason)
            self._hand_out()

    def _resolve(self, event: Event) -> RelayError | None:
        """Settle the future ``event`` answers; a notice is returned, as the
        reason the connection will end with."""
        if isinstance(event, Notice):
            return unexpected(event.frame)
        future = self._waiting.pop(event.request, None)
        if future is None or future.done():
            return None
        if isinstance(event.frame, Error):
            future.set_exception(RelayError.from_frame(event.frame))
        elif event.request.seq is not None:
            future.set_result(event.frame)  # send_nowait's future holds the frame itself
        else:
            future.set_result(event)
        return None

    def _hand_out(self) -> None:
        """Inbox to ``messages``, unless an outstanding fetch will take them."""
        if not self._session.fetching:
            for message in self._session.take_messages():
                self.messages.put_nowait(message)

    def _fail_all(self, reason: RelayError) -> None:
        self._closed = reason
        self._session.connection_closed()
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(reason)
