"""The listening end of direct mode: the one order in which a frame is judged.

``Receiver.handle_line`` applies the relay's checks, cheapest and
least-trusting first: line cap (while the bytes arrive), schema, version,
body size, recipient, signature, seq, rate, then sanitisation and the durable
commit. Nothing the frame says is believed before its signature verifies, and
nothing is answered ``accepted`` before it is committed. Every refusal is
logged and answered with the relay's stable code and a sentence; refusals
after the signature verified are signed, so the sender can trust them.

``PeerListener.serve`` is the thin asyncio shell: it binds ``<dir>/<me>.sock``
(0660) in the shared dir (0770) symlink-safely, and feeds each connection's
bytes to the receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sqlite3
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ccc_relay.daemon.sockets import SocketPathError, bind_unix_socket, group_id, remove_socket
from ccc_relay.peer.frames import (
    PeerError,
    PeerReply,
    PeerSend,
    bad_signature,
    check_body,
    check_seq,
    check_version,
    decode_send,
    sign_accepted,
    sign_error,
    unsigned_error,
    verify_send,
)
from ccc_relay.peer.inbox import PeerStore, Received
from ccc_relay.peer.keys import PairKey
from ccc_relay.policy.config import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_RATE_PER_MINUTE
from ccc_relay.policy.limits import WindowLimiter
from ccc_relay.policy.sanitize import SanitizeOptions, sanitize
from ccc_relay.protocol.codec import LineBuffer, encode, line_cap_for
from ccc_relay.protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger("ccc_relay.peer")

SOCKET_MODE = 0o660  # the seed's srw-rw----: the two containers' users share a group
DIR_MODE = 0o770
READ_CHUNK = 256 * 1024
MAX_CONNECTIONS = 64  # a handful of peers; more at once is a flood, not a conversation
MAX_REFUSALS = 8  # per connection: a peer that keeps sending bad frames is cut off
IDLE_TIMEOUT = 60.0  # a connection that says nothing for this long is closed
RATE_WINDOW = 60.0


class Receiver:
    """Judges frames addressed to ``me`` and commits the accepted ones to ``store``."""

    def __init__(
        self,
        me: str,
        keys: Mapping[str, PairKey],
        store: PeerStore,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        rate_per_minute: float = DEFAULT_RATE_PER_MINUTE,
        sanitize_options: SanitizeOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.me = me
        self.keys = dict(keys)
        self.store = store
        self.max_message_size = max_message_size
        self.sanitize_options = sanitize_options or SanitizeOptions()
        self.clock = clock
        # One limiter per sender that holds a key: memory bounded by the pairs.
        self._limiters = {peer: WindowLimiter(rate_per_minute, RATE_WINDOW) for peer in self.keys}

    @property
    def line_cap(self) -> int:
        return line_cap_for(self.max_message_size)

    def handle_line(self, line: bytes) -> tuple[PeerReply, bool]:
        """Judge one line; return the answer and whether to close the connection.

        Never raises: every failure becomes an answer with a stable code.
        """
        frame: PeerSend | None = None
        key: PairKey | None = None
        try:
            frame = decode_send(line)
            check_version(frame)
            check_body(frame.body, self.max_message_size)
            if frame.recipient != self.me:
                raise ProtocolError(
                    ErrorCode.FORBIDDEN,
                    f"this listener receives for {self.me}, not for {frame.recipient}",
                )
            candidate = self.keys.get(frame.sender)
            if candidate is None:
                raise bad_signature()
            verify_send(candidate.reveal(), frame)
            key = candidate  # from here on the frame has proven its sender
            return self._accept(frame, key), False
        except ProtocolError as exc:
            return self.refuse(exc, frame, key), exc.fatal
        except sqlite3.Error as exc:
            log.error("direct mode: the inbox %s failed: %s", self.store.path, exc)
            error = ProtocolError(
                ErrorCode.UNAVAILABLE,
                "the listener's inbox cannot store messages right now; nothing was accepted",
                fatal=True,
            )
            return self.refuse(error, frame, key), True

    def _accept(self, frame: PeerSend, key: PairKey) -> PeerReply:
        # Checked here to spare a replay the work below; checked again, durably,
        # inside the commit.
        check_seq(self.store.last_received(frame.sender), frame.seq)
        now = self.clock()
        limiter = self._limiters[frame.sender]
        wait = limiter.retry_after(now)
        if wait:
            # The seq is consumed as the relay consumes it, so the sender's
            # next frame is seq + 1 whatever it does about the wait.
            self.store.commit_received(frame.sender, frame.seq)
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"more than {limiter.limit:g} messages from {frame.sender} in "
                f"{RATE_WINDOW:g} seconds",
                retry_after=wait,
            )
        clean = sanitize(frame.body, self.sanitize_options)
        changes = clean.describe()
        message = Received(
            id="d_" + secrets.token_urlsafe(12), sender=frame.sender, recipient=self.me,
            seq=frame.seq, sent_at=frame.ts / 1000, received_at=now, body=clean.text,
            changes=changes,
        )  # fmt: skip
        self.store.commit_received(frame.sender, frame.seq, message)
        limiter.record(now)
        log.info("direct mode: accepted %s from %s seq %d", message.id, frame.sender, frame.seq)
        return sign_accepted(key.reveal(), listener=self.me, request=frame, id=message.id,
                             changes=changes)  # fmt: skip

    def refuse(self, error: ProtocolError, frame: PeerSend | None = None,
               key: PairKey | None = None) -> PeerError:  # fmt: skip
        """Log a refusal and build its answer.

        ``key`` is given only once the frame proved its sender; only then is
        the answer signed (an unproven frame has no pair to sign for).
        """
        sender = "?" if frame is None else frame.sender + ("" if key else " (unproven)")
        seq = frame.seq if frame is not None else None
        log.warning("direct mode: refused %s from %s seq %s: %s", error.code.value, sender,
                    seq, error.message)  # fmt: skip
        if frame is None or key is None:
            return unsigned_error(error, seq=seq)
        # Every signed refusal says which seq comes next, so the sender's count
        # follows the listener's whether this frame consumed its seq or not.
        next_seq = None
        with contextlib.suppress(sqlite3.Error):  # the refusal goes out regardless
            next_seq = self.store.last_received(frame.sender) + 1
        return sign_error(key.reveal(), listener=self.me, request=frame, error=error,
                          next_seq=next_seq)  # fmt: skip


def prepare_shared_dir(path: Path, *, group: str | None = None) -> None:
    """Make ``path`` the shared socket dir: a real directory, mode 0770.

    A directory this user owns is created or set to 0770 (and given to
    ``group``); one owned by someone else (the operator, on a mount) must at
    least not be open to every user. Raises SocketPathError for a symlink, a
    non-directory, or a directory anyone may enter.
    """
    if not os.path.lexists(path):
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise SocketPathError(f"{path} is a symlink; refusing to use it as the shared socket dir")
    if not stat.S_ISDIR(info.st_mode):
        raise SocketPathError(f"{path} is not a directory")
    if info.st_uid == os.geteuid():
        if group is not None:
            os.chown(path, -1, group_id(group))
        os.chmod(path, DIR_MODE)
    elif info.st_mode & 0o007:
        raise SocketPathError(
            f"{path} is open to every user (mode {stat.S_IMODE(info.st_mode):04o}); its owner "
            f"should run: chmod 770 {path}"
        )


class PeerListener:
    """Serves ``receiver`` on ``socket_path`` until cancelled."""

    def __init__(self, receiver: Receiver, socket_path: Path, *, group: str | None = None) -> None:
        self.receiver = receiver
        self.socket_path = socket_path
        self.group = group
        self._connections = 0

    async def serve(self, *, started: Callable[[Path], object] | None = None) -> None:
        """Bind, call ``started(path)``, and serve until cancelled; unbinds on the way out.

        Raises SocketPathError for anything unsafe at the dir or socket path.
        """
        prepare_shared_dir(self.socket_path.parent, group=self.group)
        sock = bind_unix_socket(self.socket_path, mode=SOCKET_MODE, group=self.group)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tasks:
                if started is not None:
                    started(self.socket_path)
                while True:
                    conn, _ = await loop.sock_accept(sock)
                    tasks.create_task(self._serve_connection(conn))
        finally:
            remove_socket(self.socket_path, sock)
            sock.close()

    async def _serve_connection(self, conn: socket.socket) -> None:
        self._connections += 1
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn)
        except OSError:
            self._connections -= 1
            conn.close()
            return
        try:
            if self._connections > MAX_CONNECTIONS:
                busy = ProtocolError(ErrorCode.BUSY, "too many connections to this listener; "
                                     "try again later", retry_after=1.0)  # fmt: skip
                writer.write(encode(self.receiver.refuse(busy)))
                return
            await self._converse(reader, writer)
        except (OSError, TimeoutError):
            pass  # the peer went away or fell silent; nothing was half-committed
        except Exception:  # a bug must not take the other connections down with it
            log.exception("direct mode: connection failed")
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        receiver = self.receiver
        buffer = LineBuffer(receiver.line_cap)
        refusals = 0
        while True:
            async with asyncio.timeout(IDLE_TIMEOUT):
                data = await reader.read(READ_CHUNK)
            if not data:
                return
            try:
                lines = buffer.feed(data)
            except ProtocolError as exc:  # the line cap, crossed before the line ended
                writer.write(encode(receiver.refuse(exc)))
                await writer.drain()
                return
            for raw in lines:
                if not raw.strip():
                    continue  # blank keep-alive lines are harmless
                reply, close = receiver.handle_line(raw)
                writer.write(encode(reply))
                if isinstance(reply, PeerError):
                    refusals += 1
                if close or refusals >= MAX_REFUSALS:
                    await writer.drain()
                    return
            await writer.drain()
