"""The sending end of direct mode, and the one decision of when to use it.

The rule: a message goes direct only when that was configured -- an explicit
``--direct``, or ``CCC_FALLBACK=direct`` *and* the relay is unreachable -- and
every direct send first prints a warning on stderr. A relay that answers is
never bypassed, not even when it refuses: a ``forbidden`` stays forbidden.

A send trusts only answers signed with the pair key for exactly its frame,
so whatever else may be bound at the socket path cannot fake a delivery.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import stat
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ccc_relay.client.base import RelayError, RelayUnavailable, check_recipient
from ccc_relay.peer.frames import (
    PeerAccepted,
    PeerReply,
    PeerSend,
    check_body,
    decode_reply,
    sign_send,
    verify_reply,
)
from ccc_relay.peer.inbox import PeerStore
from ccc_relay.peer.keys import PairKey, PeerConfig, PeerConfigError
from ccc_relay.policy.sanitize import sanitize
from ccc_relay.protocol.codec import LineBuffer, encode
from ccc_relay.protocol.errors import ErrorCode, ProtocolError

T = TypeVar("T")

FALLBACK_ENV = "CCC_FALLBACK"
DIRECT = "direct"
_NO_FALLBACK = frozenset({"", "none", "off", "relay"})
REPLY_LINE_CAP = 64 * 1024  # an answer is a code, a sentence and a few change notes
DEFAULT_TIMEOUT = 30.0
_PROC_FD = Path("/proc/self/fd")
_KNOWN_CODES = frozenset(code.value for code in ErrorCode)
_RESYNC = frozenset({ErrorCode.REPLAY.value, ErrorCode.OUT_OF_ORDER.value})


class PeerUnavailable(RelayUnavailable):
    """No direct-mode listener answers for that agent (not running, wrong dir, no permission)."""

    def __init__(self, message: str) -> None:
        RelayError.__init__(self, "peer_unavailable", message)


@dataclass(frozen=True, slots=True)
class DirectReceipt:
    """The listener's signed ``accepted``: shaped like the relay's, plus ``direct``."""

    id: str
    seq: int
    to: str
    changes: list[str] = field(default_factory=list)
    direct: bool = True


def fallback_mode(env: Mapping[str, str] | None = None) -> str | None:
    """``"direct"`` when ``CCC_FALLBACK=direct``; None when unset, empty, ``none`` or ``off``.

    Raises PeerConfigError for any other value: a misspelt setting must not
    silently mean one thing or the other.
    """
    env = os.environ if env is None else env
    value = env.get(FALLBACK_ENV, "").strip().lower()
    if value in _NO_FALLBACK:
        return None
    if value == DIRECT:
        return DIRECT
    raise PeerConfigError(
        f"{FALLBACK_ENV}={env.get(FALLBACK_ENV)!r} is not a fallback mode; "
        f"set it to '{DIRECT}' or unset it"
    )


def direct_warning(to: str, reason: str) -> str:
    return (
        f"warning: {reason}; using DIRECT mode to {to}: "
        "messages are not audited or policy-checked by a relay"
    )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def relay_or_direct(
    send_via_relay: Callable[[], T],
    to: str,
    body: str,
    *,
    direct: bool = False,
    relay_only_options: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    warn: Callable[[str], object] = _stderr,
    config: PeerConfig | None = None,
    me: str | None = None,
    credential_file: str | os.PathLike[str] | None = None,
) -> T | DirectReceipt:
    """Send through the relay; go direct only when ``direct`` or configured and unreachable.

    ``relay_only_options`` names options the caller was given that direct
    mode cannot carry (``--thread``...): going direct with them is refused
    rather than dropping them. Raises whatever ``send_via_relay`` raises
    (RelayUnavailable included, when no fallback is configured),
    PeerConfigError for a bad ``CCC_FALLBACK``, and what ``send_direct`` raises.
    """
    mode = DIRECT if direct else fallback_mode(env)  # validated before anything is sent
    reason = "--direct given"
    if not direct:
        try:
            return send_via_relay()
        except RelayUnavailable as exc:
            if mode != DIRECT:
                raise
            reason = f"relay unavailable ({exc.message})"
    options = sorted(relay_only_options)
    if options:
        raise RelayError(
            "invalid", f"direct mode carries only a body; {', '.join(options)} needs the relay"
        )
    return send_direct(to, body, reason=reason, warn=warn, config=config, env=env, me=me,
                       credential_file=credential_file)  # fmt: skip


def send_direct(
    to: str,
    body: str,
    *,
    reason: str = "direct mode requested",
    warn: Callable[[str], object] = _stderr,
    config: PeerConfig | None = None,
    env: Mapping[str, str] | None = None,
    me: str | None = None,
    credential_file: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    clock: Callable[[], float] = time.time,
) -> DirectReceipt:
    """Warn, then send ``body`` to ``to``'s listener, signed with the pair key.

    Raises RelayError with the listener's code (``replay``, ``too_large``,
    ``rate_limited``...) or ``auth_failed`` when the answer is not signed for
    this frame; PeerUnavailable when no listener answers; PeerConfigError and
    PairKeyError (a CredentialError) when direct mode is not set up.
    """
    check_recipient(to)
    warn(direct_warning(to, reason))  # first, so even a failing direct attempt is loud
    config = config or PeerConfig.resolve(me=me, credential_file=credential_file, env=env)
    if to == config.me:
        raise RelayError("invalid", "direct mode sends to another agent, not to oneself")
    try:
        check_body(body, config.max_message_size)
    except ProtocolError as exc:
        raise RelayError(exc.code.value, exc.message) from None
    key = config.key_for(to)
    try:
        with PeerStore(config.store_path) as store:
            return _deliver(config, store, key, to, body, timeout=timeout, clock=clock)
    except sqlite3.Error as exc:
        raise PeerConfigError(f"the direct-mode store {config.store_path} failed: {exc}") from None


def _deliver(config: PeerConfig, store: PeerStore, key: PairKey, to: str, body: str, *,
             timeout: float, clock: Callable[[], float]) -> DirectReceipt:  # fmt: skip
    path = config.socket_path(to)
    with connect_peer_socket(path, timeout=timeout) as sock:
        seq = store.last_sent(to) + 1
        for attempt in (1, 2):
            frame = sign_send(key.reveal(), sender=config.me, recipient=to, seq=seq,
                              ts=round(clock() * 1000), body=body)  # fmt: skip
            reply = _exchange(sock, frame, path)
            if reply is None:
                # It may have arrived: count the seq as used. If it did not,
                # the listener's signed out_of_order sets the count right.
                store.set_last_sent(to, seq)
                raise PeerUnavailable(
                    f"{to}'s listener at {path} closed the connection without answering; "
                    "the message may or may not have arrived"
                )
            if not verify_reply(key.reveal(), reply, listener=to, request=frame):
                if reply.mac is None and not isinstance(reply, PeerAccepted):
                    # A refusal of a frame that did not prove its sender:
                    # nothing was consumed, the count stays.
                    raise _refused(reply.code, reply.message, reply.retry_after, seq)
                raise RelayError(
                    ErrorCode.AUTH_FAILED.value,
                    f"the answer from {path} is not signed with the pair key of "
                    f"{config.me} and {to}: something other than {to}'s listener may be "
                    "bound there; nothing is known to have been delivered",
                    seq=seq,
                )
            if isinstance(reply, PeerAccepted):
                store.set_last_sent(to, seq)
                return DirectReceipt(id=reply.id, seq=seq, to=to,
                                     changes=[_clean(c) for c in reply.changes])  # fmt: skip
            if reply.next_seq is not None:
                # A signed refusal says which seq the listener expects next.
                store.set_last_sent(to, reply.next_seq - 1)
                if attempt == 1 and reply.code in _RESYNC:
                    # This agent's count was lost or ran ahead: take the
                    # listener's and sign the body anew, once.
                    seq = reply.next_seq
                    continue
            raise _refused(reply.code, reply.message, reply.retry_after, seq)
    raise AssertionError("unreachable: the second attempt returns or raises")


def _clean(text: str) -> str:
    # The listener's sentences reach a terminal: no escapes, no invisible text.
    return sanitize(text).text


def _refused(code: str, message: str, retry_after: float | None, seq: int) -> RelayError:
    code = code if code in _KNOWN_CODES else ErrorCode.INVALID.value
    return RelayError(code, _clean(message), retry_after=retry_after, seq=seq)


def _exchange(sock: socket.socket, frame: PeerSend, path: Path) -> PeerReply | None:
    """Send one frame, read its one answer; None when the connection ends first."""
    buffer = LineBuffer(REPLY_LINE_CAP)
    try:
        sock.sendall(encode(frame))
        while True:
            data = sock.recv(REPLY_LINE_CAP)
            if not data:
                return None
            for line in buffer.feed(data):
                if line.strip():
                    return decode_reply(line)
    except (OSError, TimeoutError):
        return None
    except ProtocolError as exc:
        message = f"the listener at {path}: {exc.message}"
        raise RelayError(ErrorCode.INVALID.value, message) from None


def connect_peer_socket(path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> socket.socket:
    """Connect to the listener socket at ``path`` without following a symlink.

    The dir and the socket are opened with O_PATH|O_NOFOLLOW and the
    connection goes through ``/proc/self/fd``, so what was checked is what is
    connected to -- a symlink swapped in after the check cannot redirect it.
    Raises PeerConfigError for a symlink or a non-socket at ``path`` (or a
    symlinked dir) and PeerUnavailable when nobody listens there.
    """
    try:
        dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PeerUnavailable(f"the shared socket dir {path.parent} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.parent.is_symlink():
            raise PeerConfigError(
                f"{path.parent} is a symlink; refusing to use it as the shared socket dir"
            ) from None
        raise PeerConfigError(f"cannot use {path.parent} as the shared socket dir: "
                              f"{exc.strerror}") from None  # fmt: skip
    try:
        try:
            fd = os.open(path.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            raise PeerUnavailable(_nobody(path)) from None
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                raise PeerConfigError(f"{path} is a symlink; refusing to follow it")
            if not stat.S_ISSOCK(mode):
                raise PeerConfigError(f"{path} is not a socket; refusing to use it")
            # Without /proc (some sandboxes) the path is connected to after the
            # check; the signed answers still expose an impostor.
            target = str(_PROC_FD / str(fd)) if _PROC_FD.is_dir() else str(path)
            return _connect(target, path, timeout)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _connect(target: str, path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        raise PeerUnavailable(_nobody(path)) from None
    except PermissionError:
        sock.close()
        raise PeerUnavailable(
            f"permission denied on {path}; this user is not in the shared socket's group"
        ) from None
    except OSError as exc:
        sock.close()
        raise PeerUnavailable(f"cannot connect to {path}: {exc.strerror}") from None
    return sock


def _nobody(path: Path) -> str:
    agent = path.name.removesuffix(".sock")
    return f"no direct-mode listener at {path}; {agent} must run 'ccc peer listen'"
