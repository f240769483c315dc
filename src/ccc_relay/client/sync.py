"""The blocking client: one request at a time, pushed messages kept aside.

Used by the CLI and the Claude Code hooks. It authenticates on ``connect()``
and then writes each request and reads until its answer; what the bytes mean
(numbering, which answer is whose, the inbox, dropping repeated deliveries) is
decided by its ``ClientSession``. Pushed messages that arrive while it waits
stay in the session's inbox, so nothing is lost between calls.

``connect()`` again after ``close()`` starts a new session on the same object;
the ids already taken in are remembered, so the relay's redelivery of a
message not yet acknowledged is dropped.

With ``reconnect=Backoff()`` a broken connection is replaced by itself: the
next call (or the ``wait_for_message`` under way) connects again with backoff,
resumes the session and subscribes again; what is repeated, and what is not,
is in ``ccc_relay.client.reconnect``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from functools import partial
from types import TracebackType
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
from ccc_relay.protocol.client_session import ClientSession, Notice, Reply, Request
from ccc_relay.protocol.frames import (
    MAX_ACK_IDS,
    Accepted,
    Acked,
    AgentInfo,
    AgentList,
    Fetched,
    GroupAccepted,
    Held,
    Message,
    Pong,
    Welcome,
)

READ_CHUNK = 256 * 1024


class _Broken(Exception):
    """The connection ended under a request (as opposed to a refusal answering it)."""

    def __init__(self, cause: RelayError, *, written: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.written = written  # the request's bytes went out before it broke


class RelayClient:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = 30.0,
        reconnect: Backoff | None = None,
        on_reconnect: Callable[[RelayError], None] | None = None,
    ) -> None:
        """``reconnect``: replace a broken connection by itself (see the module
        docstring); ``on_reconnect`` is told each time the connection broke,
        before the client tries again (for a line on stderr)."""
        self.endpoint = endpoint
        self.timeout = timeout
        self.reconnect = reconnect
        self.on_reconnect = on_reconnect
        self.reconnects = 0  # connections replaced since the object was made
        self.welcome: Welcome | None = None
        self._sock: socket.socket | None = None
        self._session = ClientSession(verify=_verifier(endpoint))
        self._live = False  # connect() succeeded and close() was not called since
        self._window: int | None = None  # subscribed with this window

    # --- lifecycle -----------------------------------------------------------

    def connect(self) -> Welcome:
        """Connect and authenticate. Raises RelayUnavailable or RelayError."""
        self._window = None
        welcome = self._open(resume=None)
        self._live = True
        return welcome

    def close(self) -> None:
        self._live = False
        if self._sock is None:
            return
        try:
            self._sock.sendall(self._session.bye())
        except OSError:
            pass
        self._drop()

    def __enter__(self) -> RelayClient:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException], BaseException, TracebackType] | Any
    ) -> None:
        self.close()

    # --- requests ------------------------------------------------------------

    def send(
        self,
        to: str,
        text: str,
        *,
        thread: str | None = None,
        reply_to: str | None = None,
        deliver_at: float | None = None,
    ) -> Accepted | Held | GroupAccepted:
        """Send one message; return the relay's ``accepted`` (or ``held`` when the
        pair's policy holds messages for the operator). When the relay changed the
        body (sanitisation), ``.changes`` says how and ``.delivered`` is the body
        the recipient gets; otherwise ``.delivered`` is None.

        ``to`` may be ``@group``: each member the sender may write to gets its
        own copy, and the answer is ``group_accepted``, whose ``.sent`` lists
        each copy (``to``, ``id``, ``held``) and ``.skipped`` the members left
        out (``to``, ``code``). Raises RelayError."""
        check_recipient(to, groups=True)
        frame = self._call(
            lambda: self._session.send(
                to, text, thread=thread, reply_to=reply_to, deliver_at=deliver_at
            )
        ).frame
        if isinstance(frame, Accepted | Held | GroupAccepted):
            return frame
        raise unexpected(frame)

    def fetch(self, limit: int = 100) -> list[Message]:
        """Messages waiting for this agent (not acknowledged yet)."""
        return self.fetch_page(limit)[0]

    def fetch_page(self, limit: int = 100) -> tuple[list[Message], int]:
        """Like :meth:`fetch`, with how many more messages still wait after these."""
        reply = self._call(lambda: self._session.fetch(limit))
        return list(reply.messages), answer(reply, Fetched).pending

    def ack(self, ids: list[str]) -> int:
        """Tell the relay these messages are processed; returns how many it settled."""
        settled = 0
        for start in range(0, len(ids), MAX_ACK_IDS):
            reply = self._call(partial(self._session.ack, ids[start : start + MAX_ACK_IDS]))
            settled += answer(reply, Acked).count
        return settled

    def inbox(self, limit: int = 100, *, ack: bool = True) -> list[Message]:
        messages = self.fetch(limit)
        if ack and messages:
            self.ack([m.id for m in messages])
        return messages

    def agents(self) -> list[AgentInfo]:
        return answer(self._call(self._session.agents), AgentList).agents

    def ping(self) -> float:
        started = time.perf_counter()
        answer(self._call(self._session.ping), Pong)
        return time.perf_counter() - started

    def subscribe(self, window: int = 64) -> None:
        """Ask the relay to push messages as they arrive (see ``wait_for_message``).
        A reconnecting client subscribes again on every new connection."""
        self._ensure_connected(None)
        self._window = window
        try:
            self._write(self._session.subscribe(window))
        except _Broken as broken:
            self._recover(broken.cause, None)  # subscribes on the new connection

    def wait_for_message(self, timeout: float | None) -> Message | None:
        """The next pushed message, or None after ``timeout`` seconds.

        Call ``subscribe()`` first. Raises RelayError when the relay ends the
        session (a reconnecting client connects again instead, until
        ``timeout``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._session.next_message()
            if message is not None:
                return message
            if not self._ensure_connected(deadline):
                return None
            try:
                event = self._session.next_event()
                if isinstance(event, Notice):
                    raise _Broken(unexpected(event.frame), written=True)
                if event is not None:
                    continue  # a late answer; no request of this client waits for it
                message = self._session.next_message()
                if message is not None:
                    return message
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._read(remaining)
            except _Broken as broken:
                if not self._recover(broken.cause, deadline):
                    return None

    # --- connecting ----------------------------------------------------------------

    def _open(self, resume: str | None) -> Welcome:
        """A new connection and its ``welcome``: resuming ``resume`` when given, a
        new session when the relay no longer knows it."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.endpoint.socket_path))
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            sock.close()
            raise unreachable(self.endpoint.socket_path, exc) from None
        except BaseException:
            sock.close()
            raise
        self._drop()
        self._sock = sock
        try:
            try:
                welcome = self._hello(resume)
            except RelayError as exc:
                if resume is None or exc.code != SESSION_GONE:
                    raise
                welcome = self._hello(None)  # refused, not fatal: the connection stays
        except _Broken as broken:
            self._drop()
            raise broken.cause from None
        except BaseException:
            self._drop()
            raise
        self.welcome = welcome
        return welcome

    def _hello(self, resume: str | None) -> Welcome:
        request, line = self._session.hello(self.endpoint.agent, self.endpoint.credential.reveal())
        if resume is not None:
            line = hello_line(self.endpoint, resume)
        return answer(self._exchange(request, line), Welcome)

    def _drop(self) -> None:
        """Forget the connection (closing its socket); nothing pending survives it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._session.connection_closed()

    def _ensure_connected(self, deadline: float | None) -> bool:
        """A connection to write on: reconnects when the last one broke. False
        when ``deadline`` passed first."""
        if self._sock is not None:
            return True
        if not self._live or self.reconnect is None:
            raise RelayUnavailable("not connected")
        return self._recover(RelayUnavailable("the connection to the relay broke"), deadline)

    def _recover(self, cause: RelayError, deadline: float | None) -> bool:
        """Connect again with backoff after the connection broke with ``cause``;
        resume the session and subscribe again. False when ``deadline`` passed
        first; raises ``cause`` without ``reconnect`` (or for a refusal no wait
        changes), and the last failure after ``give_up_after`` seconds."""
        self._drop()
        policy = self.reconnect
        if policy is None or not self._live or not retryable(cause):
            self._live = False
            raise cause
        if self.on_reconnect is not None:
            self.on_reconnect(cause)
        previous = self.welcome.session if self.welcome is not None else None
        started = time.monotonic()
        failure = cause
        for delay in policy.delays():
            wait = max(delay, failure.retry_after or 0.0)
            if deadline is not None and time.monotonic() + wait >= deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                return False
            if policy.give_up_after is not None and (
                time.monotonic() + wait - started > policy.give_up_after
            ):
                self._live = False
                raise failure
            time.sleep(wait)
            try:
                self._open(resume=previous)
                if self._window is not None:
                    self._write(self._session.subscribe(self._window))
            except _Broken as broken:
                failure = broken.cause
                self._drop()
            except RelayError as exc:
                if not retryable(exc):
                    self._live = False
                    raise
                failure = exc
            except OSError as exc:  # a full listen backlog (EAGAIN), a reset...
                failure = RelayUnavailable(f"could not connect to the relay: {exc}")
            else:
                self.reconnects += 1
                return True
        raise AssertionError("unreachable: delays() never ends")

    # --- plumbing ---------------------------------------------------------------

    def _call(self, make: Callable[[], tuple[Request, bytes]]) -> Reply:
        """Make a request, write it and read until its reply (a refusal is in the
        reply). A reconnecting client asks again after a broken connection,
        except for a send the relay may have taken."""
        while True:
            self._ensure_connected(None)
            session = self.welcome.session if self.welcome is not None else None
            request, data = make()
            try:
                return self._exchange(request, data)
            except _Broken as broken:
                self._recover(broken.cause, None)
                if request.seq is not None and broken.written:
                    welcome = self.welcome
                    assert welcome is not None
                    # Not taken for sure only when the same session's high-water
                    # mark lies below it (a new session knows nothing of it).
                    if welcome.session != session or welcome.last_seq >= request.seq:
                        raise outcome_unknown(request.seq) from None

    def _exchange(self, request: Request, data: bytes) -> Reply:
        """Write ``request`` and read until its reply. Raises _Broken when the
        connection ends first, RelayUnavailable after ``timeout``."""
        written = False
        try:
            self._write(data)
            written = True
            while True:
                event = self._session.next_event()
                if event is None:
                    if not self._read(self.timeout):
                        raise RelayUnavailable(f"the relay did not answer within {self.timeout:g}s")
                elif isinstance(event, Notice):
                    raise _Broken(unexpected(event.frame), written=True)
                elif event.request is request:
                    return event
        except _Broken as broken:
            self._session.abandon(request)
            raise _Broken(broken.cause, written=written) from None
        except BaseException:
            # Its answer may still come; it must not be taken for a later request's.
            self._session.abandon(request)
            raise

    def _write(self, data: bytes) -> None:
        if self._sock is None:
            raise RelayUnavailable("not connected")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise _Broken(
                RelayUnavailable(f"the connection to the relay broke: {exc}"), written=False
            ) from None

    def _read(self, timeout: float | None) -> bool:
        """Read once into the session; False when ``timeout`` passed first."""
        assert self._sock is not None
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(READ_CHUNK)
        except TimeoutError:
            return False
        except OSError as exc:
            raise _Broken(
                RelayUnavailable(f"the connection to the relay broke: {exc}"), written=True
            ) from None
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout)
        if not data:
            raise _Broken(RelayUnavailable("the relay closed the connection"), written=True)
        self._session.receive_data(data)
        return True


def _verifier(endpoint: Endpoint) -> Callable[[Message], None] | None:
    # Loaded only with a relay key: the hooks use this client and must start fast.
    if endpoint.relay_pubkey is None:
        return None
    from ccc_relay.client.signatures import verifier

    return verifier(endpoint.relay_pubkey)
