"""The blocking client: one request at a time, pushed messages kept aside.

Used by the CLI and the Claude Code hooks. It authenticates on ``connect()``
and then writes each request and reads until its answer; what the bytes mean
(numbering, which answer is whose, the inbox, dropping repeated deliveries) is
decided by its ``ClientSession``. Pushed messages that arrive while it waits
stay in the session's inbox, so nothing is lost between calls.

``connect()`` again after ``close()`` starts a new session on the same object;
the ids already taken in are remembered, so the relay's redelivery of a
message not yet acknowledged is dropped.
"""

from __future__ import annotations

import socket
import time
from types import TracebackType
from typing import Any

from ccc_relay.client.base import (
    RelayUnavailable,
    answer,
    check_recipient,
    unexpected,
    unreachable,
)
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.client.signatures import verifier
from ccc_relay.protocol.client_session import ClientSession, Notice, Reply, Request
from ccc_relay.protocol.frames import (
    MAX_ACK_IDS,
    Accepted,
    Acked,
    AgentInfo,
    AgentList,
    Fetched,
    Held,
    Message,
    Pong,
    Welcome,
)

READ_CHUNK = 256 * 1024


class RelayClient:
    def __init__(self, endpoint: Endpoint, *, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.welcome: Welcome | None = None
        self._sock: socket.socket | None = None
        self._session = ClientSession(verify=verifier(endpoint.relay_pubkey))

    # --- lifecycle -----------------------------------------------------------

    def connect(self) -> Welcome:
        """Connect and authenticate. Raises RelayUnavailable or RelayError."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.endpoint.socket_path))
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            sock.close()
            raise unreachable(self.endpoint.socket_path, exc) from None
        self._sock = sock
        self._session.connection_closed()  # nothing of an earlier connection is pending
        try:
            request, data = self._session.hello(
                self.endpoint.agent, self.endpoint.credential.reveal()
            )
            welcome = answer(self._call(request, data), Welcome)
        except BaseException:
            self.close()
            raise
        self.welcome = welcome
        return welcome

    def close(self) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendall(self._session.bye())
        except OSError:
            pass
        self._sock.close()
        self._sock = None
        self._session.connection_closed()

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
    ) -> Accepted | Held:
        """Send one message; return the relay's ``accepted`` (or ``held`` when the
        pair's policy holds messages for the operator). Raises RelayError."""
        check_recipient(to)
        request, data = self._session.send(
            to, text, thread=thread, reply_to=reply_to, deliver_at=deliver_at
        )
        frame = self._call(request, data).frame
        if isinstance(frame, Accepted | Held):
            return frame
        raise unexpected(frame)

    def fetch(self, limit: int = 100) -> list[Message]:
        """Messages waiting for this agent (not acknowledged yet)."""
        return self.fetch_page(limit)[0]

    def fetch_page(self, limit: int = 100) -> tuple[list[Message], int]:
        """Like :meth:`fetch`, with how many more messages still wait after these."""
        reply = self._call(*self._session.fetch(limit))
        return list(reply.messages), answer(reply, Fetched).pending

    def ack(self, ids: list[str]) -> int:
        """Tell the relay these messages are processed; returns how many it settled."""
        settled = 0
        for start in range(0, len(ids), MAX_ACK_IDS):
            reply = self._call(*self._session.ack(ids[start : start + MAX_ACK_IDS]))
            settled += answer(reply, Acked).count
        return settled

    def inbox(self, limit: int = 100, *, ack: bool = True) -> list[Message]:
        messages = self.fetch(limit)
        if ack and messages:
            self.ack([m.id for m in messages])
        return messages

    def agents(self) -> list[AgentInfo]:
        return answer(self._call(*self._session.agents()), AgentList).agents

    def ping(self) -> float:
        started = time.perf_counter()
        answer(self._call(*self._session.ping()), Pong)
        return time.perf_counter() - started

    def subscribe(self, window: int = 64) -> None:
        """Ask the relay to push messages as they arrive (see ``wait_for_message``)."""
        self._write(self._session.subscribe(window))

    def wait_for_message(self, timeout: float | None) -> Message | None:
        """The next pushed message, or None after ``timeout`` seconds.

        Call ``subscribe()`` first. Raises RelayError when the relay ends the session.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self._session.next_event()
            if isinstance(event, Notice):
                raise unexpected(event.frame)
            if event is not None:
                continue  # a late answer; no request of this client waits for it
            message = self._session.next_message()
            if message is not None:
                return message
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._read(remaining)

    # --- plumbing ---------------------------------------------------------------

    def _call(self, request: Request, data: bytes) -> Reply:
        """Write a request and read until its reply; a refusal is raised."""
        try:
            self._write(data)
            while True:
                event = self._session.next_event()
                if event is None:
                    if not self._read(self.timeout):
                        raise RelayUnavailable(f"the relay did not answer within {self.timeout:g}s")
                elif isinstance(event, Notice):
                    raise unexpected(event.frame)
                elif event.request is request:
                    return event
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
            raise RelayUnavailable(f"the connection to the relay broke: {exc}") from None

    def _read(self, timeout: float | None) -> bool:
        """Read once into the session; False when ``timeout`` passed first."""
        assert self._sock is not None
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(READ_CHUNK)
        except TimeoutError:
            return False
        except OSError as exc:
            raise RelayUnavailable(f"the connection to the relay broke: {exc}") from None
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout)
        if not data:
            raise RelayUnavailable("the relay closed the connection")
        self._session.receive_data(data)
        return True
