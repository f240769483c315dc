"""A hook's one short exchange with the relay, on the standard library alone.

Claude Code waits for a hook twice per turn. The client library speaks the
protocol through msgspec, whose import alone costs a hook more than twice the
start of Python itself; a hook needs only ``hello``, ``fetch``, ``ack`` and
``bye``, one at a time, each answered before the next is sent. So it speaks
them here with ``json``, checking every answer it takes: the same frames, the
same order, nothing pipelined, no pushes (it never subscribes). A relay that
asks for signed deliveries (``CCC_RELAY_PUBKEY``) is read with the full client
instead, which verifies them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ccc_relay.client.errors import RelayError, RelayUnavailable, unreachable

READ_CHUNK = 256 * 1024
# The relay's longest line: a body of 16 MB (the ceiling) escaped six times over.
LINE_CAP = 100 * 1024 * 1024
MAX_ACK_IDS = 1024  # ids per ack frame (the protocol's bound)
_TEXT = ("id", "from", "to", "body")
_OPTIONAL_TEXT = ("thread", "reply_to")


class HookLink:
    """One authenticated connection, used for a few requests and closed."""

    def __init__(self, socket_path: Path, agent: str, credential: str, timeout: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path))
        except OSError as exc:
            sock.close()
            raise unreachable(socket_path, exc) from None
        self._sock = sock
        self._buffer = b""
        try:
            self._write({"type": "hello", "agent": agent, "credential": credential})
            self._expect("welcome")
        except BaseException:
            self.close()
            raise

    def fetch(self, limit: int) -> tuple[list[Mapping[str, Any]], int]:
        """The waiting messages (not acknowledged) and how many more wait."""
        self._write({"type": "fetch", "limit": limit})
        messages: list[Mapping[str, Any]] = []
        while True:
            frame = self._frame()
            if frame["type"] == "message":
                messages.append(_message(frame))
                continue
            fetched = _answer(frame, "fetched")
            pending = fetched.get("pending")
            if not isinstance(pending, int) or isinstance(pending, bool):
                raise RelayError("invalid", "a fetched frame without a count of what waits")
            return messages, pending

    def ack(self, ids: list[str]) -> int:
        settled = 0
        for start in range(0, len(ids), MAX_ACK_IDS):
            self._write({"type": "ack", "ids": ids[start : start + MAX_ACK_IDS]})
            count = self._expect("acked").get("count")
            settled += count if isinstance(count, int) else 0
        return settled

    def close(self) -> None:
        try:
            self._sock.sendall(b'{"type":"bye"}\n')
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> HookLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------

    def _write(self, frame: dict[str, Any]) -> None:
        try:
            self._sock.sendall(json.dumps(frame).encode() + b"\n")
        except OSError as exc:
            raise RelayUnavailable(f"the connection to the relay broke: {exc}") from None

    def _expect(self, kind: str) -> dict[str, Any]:
        return _answer(self._frame(), kind)

    def _frame(self) -> dict[str, Any]:
        """The next line, decoded. Raises RelayUnavailable, or RelayError "invalid"."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > LINE_CAP:
                raise RelayError("invalid", "a line from the relay is too long")
            try:
                data = self._sock.recv(READ_CHUNK)
            except TimeoutError:
                raise RelayUnavailable("the relay did not answer in time") from None
            except OSError as exc:
                raise RelayUnavailable(f"the connection to the relay broke: {exc}") from None
            if not data:
                raise RelayUnavailable("the relay closed the connection")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            frame = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise RelayError("invalid", "the relay sent a line that is not JSON") from None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise RelayError("invalid", "the relay sent a line that is not a frame")
        return frame


def _answer(frame: dict[str, Any], kind: str) -> dict[str, Any]:
    if frame["type"] == kind:
        return frame
    if frame["type"] == "error":
        retry = frame.get("retry_after")
        raise RelayError(
            str(frame.get("code", "invalid")),
            str(frame.get("message", "")),
            retry_after=retry if isinstance(retry, int | float) else None,
        )
    if frame["type"] == "bye":
        raise RelayUnavailable(f"the relay closed the session: {frame.get('reason')}")
    raise RelayError("invalid", f"unexpected {frame['type']!r} frame from the relay")


def _message(frame: dict[str, Any]) -> dict[str, Any]:
    """A delivered message as the fence takes it, its fields' types checked."""
    fields = {key: frame.get(key) for key in (*_TEXT, "sent_at", *_OPTIONAL_TEXT)}
    sent_at = fields["sent_at"]
    if (
        any(not isinstance(fields[key], str) for key in _TEXT)
        or isinstance(sent_at, bool)
        or not isinstance(sent_at, int | float)
        or any(
            fields[key] is not None and not isinstance(fields[key], str) for key in _OPTIONAL_TEXT
        )
    ):
        raise RelayError("invalid", "the relay sent a message frame with fields of the wrong type")
    return {key: value for key, value in fields.items() if value is not None}
