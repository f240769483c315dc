"""The blocking client: one request at a time, pushed messages kept aside.

Used by the CLI and the Claude Code hooks. It authenticates on ``connect()``,
numbers its sends (seq 1, 2, 3...), and keeps every pushed ``message`` frame
that arrives while it waits for an answer, so nothing is lost between calls.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from types import TracebackType
from typing import Any, TypeVar

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
    RelayFrame,
    Send,
    Subscribe,
    Welcome,
)

F = TypeVar("F")

READ_CHUNK = 256 * 1024
# Replies are bounded by the relay's own limits; 16 MB body * 6 + envelope.
REPLY_LINE_CAP = 100 * 1024 * 1024


class RelayClient:
    def __init__(self, endpoint: Endpoint, *, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.welcome: Welcome | None = None
        self._sock: socket.socket | None = None
        self._buffer = LineBuffer(REPLY_LINE_CAP)
        self._frames: deque[RelayFrame] = deque()
        self._inbox: deque[Message] = deque()
        self._seen = SeenIds()
        self._seq = 0

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
        try:
            self._write(
                Hello(
                    agent=self.endpoint.agent,
                    credential=self.endpoint.credential.reveal(),
                    signatures=self.endpoint.relay_pubkey is not None,
                )
            )
            frame = self._next_reply()
        except BaseException:
            self.close()
            raise
        if isinstance(frame, Welcome):
            self.welcome = frame
            self._seq = frame.last_seq
            return frame
        self.close()
        raise _unexpected(frame)

    def close(self) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendall(encode(Bye()))
        except OSError:
            pass
        self._sock.close()
        self._sock = None

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
        self._seq += 1
        seq = self._seq
        self._write(
            Send(seq=seq, to=to, body=text, thread=thread, reply_to=reply_to, deliver_at=deliver_at)
        )
        while True:
            frame = self._next_reply()
            if isinstance(frame, Accepted | Held) and frame.seq == seq:
                return frame
            if isinstance(frame, Error) and frame.seq in (seq, None):
                raise RelayError.from_frame(frame)
            if not isinstance(frame, Accepted | Held | Error):
                raise _unexpected(frame)

    def fetch(self, limit: int = 100) -> list[Message]:
        """Messages waiting for this agent (not acknowledged yet)."""
        return self.fetch_page(limit)[0]

    def fetch_page(self, limit: int = 100) -> tuple[list[Message], int]:
        """Like :meth:`fetch`, with how many more messages still wait after these."""
        self._write(Fetch(limit=limit))
        pending = self._expect(Fetched).pending
        return self._take_inbox(), pending

    def ack(self, ids: list[str]) -> int:
        """Tell the relay these messages are processed; returns how many it settled."""
        settled = 0
        for start in range(0, len(ids), 1024):
            self._write(Ack(ids=ids[start : start + 1024]))
            settled += self._expect(Acked).count
        return settled

    def inbox(self, limit: int = 100, *, ack: bool = True) -> list[Message]:
        messages = self.fetch(limit)
        if ack and messages:
            self.ack([m.id for m in messages])
        return messages

    def agents(self) -> list[AgentInfo]:
        self._write(ListAgents())
        return self._expect(AgentList).agents

    def ping(self) -> float:
        started = time.perf_counter()
        self._write(Ping())
        self._expect(Pong)
        return time.perf_counter() - started

    def subscribe(self, window: int = 64) -> None:
        """Ask the relay to push messages as they arrive (see ``wait_for_message``)."""
        self._write(Subscribe(window=window))

    def wait_for_message(self, timeout: float | None) -> Message | None:
        """The next pushed message, or None after ``timeout`` seconds.

        Call ``subscribe()`` first. Raises RelayError when the relay ends the session.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._inbox:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if not self._read_frames(remaining):
                continue
            while self._frames:
                frame = self._frames.popleft()
                if isinstance(frame, Error):
                    raise RelayError.from_frame(frame)
                if isinstance(frame, Goodbye):
                    raise RelayUnavailable(f"the relay closed the session: {frame.reason}")
        return self._inbox.popleft()

    # --- plumbing ---------------------------------------------------------------

    def _take_inbox(self) -> list[Message]:
        messages = list(self._inbox)
        self._inbox.clear()
        return messages

    def _expect(self, kind: type[F]) -> F:
        frame = self._next_reply()
        if isinstance(frame, kind):
            return frame
        raise _unexpected(frame)

    def _write(self, frame: Any) -> None:
        if self._sock is None:
            raise RelayUnavailable("not connected")
        try:
            self._sock.sendall(encode(frame))
        except OSError as exc:
            raise RelayUnavailable(f"the connection to the relay broke: {exc}") from None

    def _next_reply(self) -> RelayFrame:
        """The next frame that is not a pushed message."""
        while True:
            while self._frames:
                frame = self._frames.popleft()
                if not isinstance(frame, Message):
                    return frame
            self._read_frames(self.timeout)

    def _read_frames(self, timeout: float | None) -> bool:
        """Read once; queue complete frames (messages go to the inbox)."""
        assert self._sock is not None
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(READ_CHUNK)
        except TimeoutError:
            if timeout == self.timeout:
                raise RelayUnavailable(
                    f"the relay did not answer within {self.timeout:g}s"
                ) from None
            return False
        except OSError as exc:
            raise RelayUnavailable(f"the connection to the relay broke: {exc}") from None
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout)
        if not data:
            pending = [f for f in self._frames if isinstance(f, Error)]
            if pending:
                return True
            raise RelayUnavailable("the relay closed the connection")
        for line in self._buffer.feed(data):
            frame = decode_relay_frame(line)
            if isinstance(frame, Message):
                if self.endpoint.relay_pubkey is not None:
                    verify_message(self.endpoint.relay_pubkey, frame)
                if self._seen.first_time(frame):
                    self._inbox.append(frame)
            else:
                self._frames.append(frame)
        return True


def _unexpected(frame: RelayFrame) -> RelayError:
    if isinstance(frame, Error):
        return RelayError.from_frame(frame)
    if isinstance(frame, Goodbye):
        return RelayUnavailable(f"the relay closed the session: {frame.reason}")
    return RelayError("invalid", f"unexpected {type(frame).__name__} frame from the relay")
