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

With ``reconnect=Backoff()`` a broken connection is replaced in the
background: a recovery task connects again with backoff, resumes the session,
subscribes again, sends again the sends the relay proves it never took, and
lets waiting requests ask again; what is repeated, and what is not, is in
``ccc_relay.client.reconnect``. Requests made meanwhile wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
from ccc_relay.client.reconnect import (
    SESSION_GONE,
    Backoff,
    hello_line,
    outcome_unknown,
    retryable,
)
from ccc_relay.client.signatures import verifier
from ccc_relay.protocol.client_session import (
    REPLY_LINE_CAP,
    ClientSession,
    Event,
    Notice,
    Reply,
    Request,
)
from ccc_relay.protocol.errors import ProtocolError
from ccc_relay.protocol.frames import (
    MAX_ACK_IDS,
    Accepted,
    Acked,
    AgentInfo,
    AgentList,
    Error,
    Fetched,
    GroupAccepted,
    Held,
    Message,
    Welcome,
)

READ_CHUNK = 256 * 1024


@dataclass(slots=True)
class _Send:
    """A send's arguments, kept while it is unanswered so that a reconnecting
    client can send it again when the relay proves it never took it."""

    to: str
    text: str
    options: dict[str, Any]
    future: asyncio.Future[Accepted | Held | GroupAccepted]
    seq: int | None = None  # None: not written on any connection yet


class AsyncRelayClient:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        reconnect: Backoff | None = None,
        on_reconnect: Callable[[RelayError], None] | None = None,
    ) -> None:
        """``reconnect``: replace a broken connection by itself (see the module
        docstring); ``on_reconnect`` is told each time the connection broke,
        before the client tries again."""
        self.endpoint = endpoint
        self.reconnect = reconnect
        self.on_reconnect = on_reconnect
        self.reconnects = 0  # connections replaced since the object was made
        self.welcome: Welcome | None = None
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._session = ClientSession(verify=verifier(endpoint.relay_pubkey))
        # A send's future gets its accepted/held frame; other requests' get the Reply.
        self._waiting: dict[Request, asyncio.Future[Any]] = {}
        self._closed: RelayError | None = None
        self._gone: asyncio.Future[None] | None = None  # done once _closed is set
        # Reconnecting: the sends not answered yet, by request; the ones waiting
        # for the next connection; the recovery under way.
        self._sends: dict[Request, _Send] = {}
        self._parked: list[_Send] = []
        self._recovery: asyncio.Task[None] | None = None
        self._live = False  # connect() succeeded and close() was not called since
        self._established = False  # this connection's hello was answered
        self._window: int | None = None

    async def connect(self) -> Welcome:
        """Connect and authenticate. Raises RelayUnavailable or RelayError."""
        if self._writer is not None or self._task is not None or self._recovery is not None:
            await self.close()  # what is left of an earlier connection
        self._window = None
        self._closed = None
        self._gone = None
        await self._open(resume=None)
        self._live = True
        assert self.welcome is not None
        return self.welcome

    async def close(self) -> None:
        self._live = False
        recovery, self._recovery = self._recovery, None
        if recovery is not None and recovery is not asyncio.current_task():
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery
        await self._disconnect()
        parked, self._parked = self._parked, []
        closed = RelayUnavailable("the client was closed")
        for send in parked:
            if not send.future.done():
                send.future.set_exception(closed)
        if self._closed is None:
            self._set_closed(closed)

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
    ) -> asyncio.Future[Accepted | Held | GroupAccepted]:
        """Queue a send; the future resolves to ``accepted`` (or ``held``; for
        ``to="@group"``, ``group_accepted`` with one id per member reached) or
        raises RelayError.

        As with :meth:`RelayClient.send`, ``.delivered`` is the body the recipient
        gets when the relay changed it (else None).
        """
        self._check_open()
        check_recipient(to, groups=True)
        options = {"thread": thread, "reply_to": reply_to, "deliver_at": deliver_at}
        future: asyncio.Future[Accepted | Held | GroupAccepted] = (
            asyncio.get_running_loop().create_future()
        )
        send = _Send(to, text, options, future)
        if self._recovery is not None:
            self._parked.append(send)  # written once the relay is back
        else:
            self._write_send(send)
        return future

    async def send(self, to: str, text: str, **options: Any) -> Accepted | Held | GroupAccepted:
        return await self.send_nowait(to, text, **options)

    async def fetch(self, limit: int = 100) -> list[Message]:
        """Messages waiting for this agent (not acknowledged yet)."""
        return (await self.fetch_page(limit))[0]

    async def fetch_page(self, limit: int = 100) -> tuple[list[Message], int]:
        """Like :meth:`fetch`, with how many more messages still wait after these."""
        reply = await self._request(lambda: self._session.fetch(limit))
        return list(reply.messages), answer(reply, Fetched).pending

    async def ack(self, ids: list[str]) -> int:
        settled = 0
        for start in range(0, len(ids), MAX_ACK_IDS):
            chunk = ids[start : start + MAX_ACK_IDS]
            reply = await self._request(partial(self._session.ack, chunk))
            settled += answer(reply, Acked).count
        return settled

    async def inbox(self, limit: int = 100, *, ack: bool = True) -> list[Message]:
        messages = await self.fetch(limit)
        if ack and messages:
            await self.ack([m.id for m in messages])
        return messages

    async def agents(self) -> list[AgentInfo]:
        return answer(await self._request(self._session.agents), AgentList).agents

    async def ping(self) -> None:
        await self._request(self._session.ping)

    async def subscribe(self, window: int = 64) -> None:
        """Pushed messages then arrive on ``self.messages`` (a reconnecting
        client subscribes again on every new connection)."""
        self._check_open()
        self._window = window
        if self._recovery is None:
            self._write(self._session.subscribe(window))

    async def wait_for_message(self, timeout: float | None) -> Message | None:  # noqa: ASYNC109
        """The next pushed message, or None when ``timeout`` passes first.

        Raises RelayError when the connection is over for good (a reconnecting
        client waits through a reconnect).
        """
        if not self.messages.empty():
            return self.messages.get_nowait()
        self._check_open()
        getter: asyncio.Future[Any] = asyncio.ensure_future(self.messages.get())
        gone: asyncio.Future[Any] = self._gone_future()
        try:
            done, _ = await asyncio.wait(
                {getter, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
        if getter.done() and not getter.cancelled():
            message: Message = getter.result()
            return message
        if gone in done:
            self._check_open()
        return None

    # --- connecting -------------------------------------------------------------------

    async def _open(self, resume: str | None) -> None:
        """A new connection and its ``welcome``: resuming ``resume`` when given, a
        new session when the relay no longer knows it."""
        await self._disconnect()
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                str(self.endpoint.socket_path), limit=REPLY_LINE_CAP
            )
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise unreachable(self.endpoint.socket_path, exc) from None
        self._session.connection_closed()  # nothing of an earlier connection is pending
        self._established = False
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        try:
            try:
                welcome = await self._hello(resume)
            except RelayError as exc:
                if resume is None or exc.code != SESSION_GONE:
                    raise
                welcome = await self._hello(None)  # refused, not fatal: the connection stays
        except BaseException:
            await self._disconnect()
            raise
        self.welcome = welcome
        self._established = True

    async def _hello(self, resume: str | None) -> Welcome:
        request, line = self._session.hello(self.endpoint.agent, self.endpoint.credential.reveal())
        if resume is not None:
            line = hello_line(self.endpoint, resume)
        return answer(await self._request_once(request, line), Welcome)

    async def _disconnect(self) -> None:
        """Close the connection and stop its reader (which fails what waits on it)."""
        self._established = False
        if self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(self._session.bye())
                self._writer.close()
                await self._writer.wait_closed()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._writer = None
        self._reader = None
        self._task = None

    async def _recover(self, cause: RelayError) -> None:
        """Connect again with backoff; resume, subscribe again, send again the
        sends the relay never took. Gives up on a refusal no wait changes, or
        after ``give_up_after`` seconds; then the client is closed with it."""
        policy = self.reconnect
        assert policy is not None
        if self.on_reconnect is not None:
            self.on_reconnect(cause)
        previous = self.welcome.session if self.welcome is not None else None
        loop = asyncio.get_running_loop()
        started = loop.time()
        failure = cause
        for delay in policy.delays():
            wait = max(delay, failure.retry_after or 0.0)
            if policy.give_up_after is not None and (
                loop.time() + wait - started > policy.give_up_after
            ):
                self._give_up(failure)
                return
            await asyncio.sleep(wait)
            try:
                await self._open(resume=previous)
            except RelayError as exc:
                if not retryable(exc):
                    self._give_up(exc)
                    return
                failure = exc
                continue
            except OSError as exc:  # a full listen backlog (EAGAIN), a reset...
                failure = RelayUnavailable(f"could not connect to the relay: {exc}")
                continue
            break
        self.reconnects += 1
        self._recovery = None
        welcome = self.welcome
        assert welcome is not None
        if self._window is not None:
            self._write(self._session.subscribe(self._window))
        parked, self._parked = self._parked, []
        # In their order: the written ones by seq, then those made meanwhile.
        for send in sorted(parked, key=lambda s: (s.seq is None, s.seq or 0)):
            if send.future.done():
                continue
            taken = send.seq is not None and (
                welcome.session != previous or welcome.last_seq >= send.seq
            )
            if taken:
                assert send.seq is not None
                send.future.set_exception(outcome_unknown(send.seq))
            else:
                self._write_send(send)

    def _give_up(self, reason: RelayError) -> None:
        self._live = False
        self._recovery = None
        parked, self._parked = self._parked, []
        for send in parked:
            if not send.future.done():
                send.future.set_exception(
                    outcome_unknown(send.seq) if send.seq is not None else reason
                )
        self._set_closed(reason)

    # --- plumbing ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    def _set_closed(self, reason: RelayError) -> None:
        self._closed = reason
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    def _gone_future(self) -> asyncio.Future[None]:
        if self._gone is None or (self._gone.done() and self._closed is None):
            self._gone = asyncio.get_running_loop().create_future()
        return self._gone

    def _write(self, data: bytes) -> None:
        if self._writer is None:
            raise RelayUnavailable("not connected")
        self._writer.write(data)

    def _write_send(self, send: _Send) -> None:
        request, data = self._session.send(send.to, send.text, **send.options)
        self._issue(request, data, send.future)  # raises when it cannot be written
        send.seq = request.seq
        self._sends[request] = send
        send.future.add_done_callback(lambda _f: self._sends.pop(request, None))

    async def _request(self, make: Callable[[], tuple[Request, bytes]]) -> Reply:
        """Make a request and wait for its reply; a reconnecting client waits for
        the next connection and asks again when the connection broke under it."""
        while True:
            if self._recovery is not None:
                await asyncio.shield(self._recovery)
            self._check_open()
            request, data = make()
            try:
                return await self._request_once(request, data)
            except RelayUnavailable:
                # The connection broke under it: a reconnecting client asks again.
                if self.reconnect is None or not self._live or self._closed is not None:
                    raise

    async def _request_once(self, request: Request, data: bytes) -> Reply:
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
        assert self._writer is not None
        reader, writer = self._reader, self._writer
        reason: RelayError = RelayUnavailable("the relay closed the connection")
        cancelled = False  # stopped by this client: nothing to recover
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
        except ProtocolError as exc:  # the relay sent a line that is no relay frame
            reason = RelayError(exc.code, exc.message)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            # This connection is over: its socket is closed here, whoever ended
            # it, so no transport is left for the garbage collector to find open.
            writer.close()
            self._connection_lost(reason, may_recover=not cancelled)
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

    def _connection_lost(self, reason: RelayError, *, may_recover: bool) -> None:
        """The connection ended. A reconnecting client whose session was up
        parks its unanswered sends and starts the recovery; what else waits
        is failed (a request asks again once the recovery is done)."""
        recover = (
            may_recover
            and self._established
            and self._live
            and self.reconnect is not None
            and self._recovery is None
            and retryable(reason)
        )
        self._established = False
        self._session.connection_closed()
        waiting, self._waiting = self._waiting, {}
        if recover:
            self._recovery = asyncio.get_running_loop().create_task(self._recover(reason))
        for request, future in waiting.items():
            if future.done():
                continue
            send = self._sends.pop(request, None)
            if recover and send is not None:
                self._parked.append(send)
            else:
                future.set_exception(reason)
        if not recover and self._recovery is None and self._closed is None:
            self._live = False
            self._set_closed(reason)
