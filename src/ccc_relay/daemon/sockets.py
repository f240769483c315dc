"""Creating listening sockets and private directories without being fooled.

The rule: nothing at a socket's path is ever followed or clobbered blindly.

* a symlink at the path is refused (bind() itself never follows the last
  component, and we do not unlink what we did not make);
* a file that is not a socket is refused;
* a socket is replaced only when connecting to it is refused -- a stale socket
  left by a crashed daemon -- and never while a daemon answers on it;
* the socket is bound under a umask that makes it owner-only, and only then
  opened up to the configured mode and group, so there is no window in which
  it is wider than intended.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
from collections.abc import Collection
from pathlib import Path

from ccc_relay.daemon.privileges import sudo

# path -> (device, inode) of every socket this process bound, so shutdown
# removes exactly those and never a file someone else put there since.
_bound: dict[str, tuple[int, int]] = {}

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed sockets start at fd 3
LISTEN_BACKLOG = 512  # bursts of agents reconnecting after a relay restart


class SocketPathError(RuntimeError):
    pass


def ensure_private_dir(
    path: Path, mode: int = 0o700, *, owner: tuple[int, int] | None = None
) -> None:
    """Create ``path`` (and parents) and make sure it is a real dir of ``owner``, mode ``mode``.

    ``owner`` (uid, gid) is the account the daemon will drop to; a directory
    created now is given to it, an existing one must already be its. Without
    ``owner`` the directory must belong to this process's user.

    Raises SocketPathError when it is a symlink, not a directory, or owned by
    another user.
    """
    created = not os.path.lexists(path)
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise SocketPathError(f"{path} is a symlink; refusing to use it as a state directory")
    if not stat.S_ISDIR(info.st_mode):
        raise SocketPathError(f"{path} is not a directory")
    uid = os.geteuid() if owner is None else owner[0]
    if created and owner is not None and info.st_uid != uid:
        os.chown(path, owner[0], owner[1])
    elif info.st_uid != uid:
        raise SocketPathError(
            f"{path} belongs to uid {info.st_uid}, not to uid {uid} that the relay runs as; "
            f"fix it with: {sudo()}chown -R {uid} {path}"
        )
    if not created and info.st_mode & 0o022:
        raise _writable(path, info.st_mode, f"chmod {mode:o} {path}")
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


AGENT_DIR_MODE = 0o711  # a sandbox uid walks to its socket; nobody else lists it


def ensure_agent_socket_dir(path: Path) -> None:
    """Make ``path``, the directory that holds one agent's socket and nothing else.

    Mode 0711 (a sandbox's uid may walk in to the socket), this process's own;
    it is kept when the relay stops, so a sandbox that mounted it sees the
    socket made there at the next start. A set-group-ID bit is kept: a root
    ``ccc run`` sets it with the sandbox's group (``staging.grant_socket``),
    and every socket made in the directory then has that group from birth.

    Raises SocketPathError when it is a symlink, not a directory, another
    user's, or writable by anyone else (something could have been put there).
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=AGENT_DIR_MODE)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise SocketPathError(
            f"{path} is not a directory; the relay keeps an agent's socket in a directory "
            f"of its own there: remove it with: rm {path}"
        )
    if info.st_uid != os.geteuid():
        raise SocketPathError(
            f"{path} belongs to uid {info.st_uid}, not to uid {os.geteuid()} that the relay "
            f"runs as; if you did not put it there, remove it, else: chown {os.geteuid()} {path}"
        )
    if info.st_mode & 0o022:
        raise _writable(path, info.st_mode, f"chmod go-w {path}")
    wanted = AGENT_DIR_MODE | (info.st_mode & stat.S_ISGID)
    if stat.S_IMODE(info.st_mode) != wanted:
        os.chmod(path, wanted)


def remove_agent_socket_dir(path: Path) -> None:
    """Remove a removed agent's (empty) socket directory. Never raises."""
    with contextlib.suppress(OSError):
        path.rmdir()


# What the relay opens by name in its state dir: regular files of its own
# (a root-made one it could not write, another user's it must not trust), the
# keys readable by their owner only. The names are those of store/sqlite.py,
# daemon/signing.py and audit/signing.py (tests/test_state_dir.py checks).
STATE_FILES = ("relay.db", "relay.db-wal", "relay.db-shm", "relay.db-journal", "daemon.pid")
KEY_FILES = ("relay-signing.key", "audit-signing.key")


class StateDirError(SocketPathError):
    """The relay's own files could have been tampered with; the message says how to fix it."""


def check_private_tree(
    root: Path,
    uid: int,
    *,
    own_files: Collection[str] = STATE_FILES,
    key_files: Collection[str] = KEY_FILES,
) -> None:
    """Refuse a private directory in which anybody but ``uid`` (or root) could have changed a thing.

    Everything beneath ``root``, never following a link, must belong to ``uid``
    or root, must not be writable by group or others (sockets aside: their mode
    is who may connect) and must not be a symlink: the relay makes none. Names
    in ``own_files`` and ``key_files`` directly in ``root`` must moreover be
    regular files of ``uid`` itself, and keys neither readable nor writable by
    anyone else. A root-owned directory ``uid`` may not read (credentials/
    made by an administrator) is root's affair and not entered.

    Raises StateDirError naming the path, the problem and the fix.
    """
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except PermissionError:
            if directory != root and os.lstat(directory).st_uid == 0:
                continue
            raise StateDirError(
                f"{directory} cannot be read by uid {os.geteuid()}; "
                f"fix it with: {sudo()}chown -R {uid} {directory}"
            ) from None
        for entry in entries:
            path = Path(entry.path)
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed since the listing: nothing to trust
                continue
            top = directory == root
            key = top and entry.name in key_files
            _check_entry(path, info, uid, own=key or (top and entry.name in own_files), key=key)
            if stat.S_ISDIR(info.st_mode):
                pending.append(path)


def _check_entry(path: Path, info: os.stat_result, uid: int, *, own: bool, key: bool) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise StateDirError(
            f"{path} is a symlink, which the relay never makes in its own directories "
            f"(it could point it at any file); remove it with: rm {path}"
        )
    if info.st_uid not in (uid, 0) or (own and info.st_uid != uid):
        owners = f"uid {uid}" if own else f"uid {uid} or root"
        raise StateDirError(
            f"{path} belongs to uid {info.st_uid}, not to {owners} (the relay's); if you did "
            f"not put it there, remove it, else fix it with: {sudo()}chown {uid} {path}"
        )
    if own and not stat.S_ISREG(info.st_mode):
        raise StateDirError(
            f"{path} is not a regular file; the relay keeps only its own files under that "
            f"name: remove it with: rm -r {path}"
        )
    if key and info.st_mode & 0o077:
        raise StateDirError(
            f"{path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}), "
            f"so the key may be known to them: if it never left your hands fix it with: "
            f"chmod 600 {path}; else remove it (rm {path}) and the relay makes a new one"
        )
    if info.st_mode & 0o022 and not stat.S_ISSOCK(info.st_mode):
        raise _writable(path, info.st_mode, f"chmod go-w {path}")


def private_roots(*dirs: Path) -> list[Path]:
    """``dirs`` without repeats and without any that lies inside another. Raises nothing."""
    unique = sorted(set(dirs))
    return [d for d in unique if not any(o != d and o in d.parents for o in unique)]


def _writable(path: Path, mode: int, fix: str) -> StateDirError:
    """The refusal of ``path``, writable by group or others, with the command ``fix``."""
    who = " and ".join(w for w, bit in (("its group", 0o020), ("others", 0o002)) if mode & bit)
    check = (
        ", so anything in it may have been planted; check what it holds"
        if stat.S_ISDIR(mode)
        else "; check it"
    )
    return StateDirError(
        f"{path} is writable by {who} (mode {stat.S_IMODE(mode):04o}){check}, "
        f"then fix it with: {fix}"
    )


def clear_stale_socket(path: Path) -> None:
    """Unlink the socket at ``path`` when nobody answers on it; nothing there is fine.

    Raises SocketPathError for a symlink, a non-socket or a live daemon.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise SocketPathError(f"{path} is a symlink; refusing to follow or replace it")
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except ConnectionRefusedError:
        pass  # nobody listens: stale
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketPathError(f"{path}: cannot tell whether a daemon answers: {exc}") from None
    else:
        raise SocketPathError(f"a daemon is already listening on {path}")
    finally:
        probe.close()
    # Re-check right before unlinking: it must still be the socket we probed.
    again = os.lstat(path)
    if (again.st_ino, again.st_dev) != (info.st_ino, info.st_dev):
        raise SocketPathError(f"{path} changed while it was checked; refusing to replace it")
    os.unlink(path)


def group_id(name: str) -> int:
    """Raises SocketPathError (with how to create it) for an unknown group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise SocketPathError(
            f"group {name!r} does not exist; create it with: {sudo()}groupadd --system {name}"
        ) from None


def bind_unix_socket(
    path: Path, *, mode: int, group: str | None = None, gid: int | None = None
) -> socket.socket:
    """A listening AF_UNIX stream socket at ``path`` with ``mode`` and ``group`` (or ``gid``).

    A confined relay passes ``gid``, looked up before Landlock hid /etc/group.
    Raises SocketPathError for anything unsafe at the path, OSError otherwise.
    """
    if gid is None and group is not None:
        gid = group_id(group)
    clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
        info = os.lstat(path)
        _bound[str(path)] = (info.st_dev, info.st_ino)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        raise
    return sock


def remove_socket(path: Path, sock: socket.socket) -> None:
    """Unlink ``path`` only if it is still the socket this process bound there.

    (The listening socket itself may already be closed by its server, so the
    check is against the inode recorded at bind time.) Never raises.
    """
    identity = _bound.pop(str(path), None)
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == identity:
            os.unlink(path)


def remove_bound_sockets() -> list[Path]:
    """Unlink every socket this process bound that is still at its path (a start
    that failed half-way); returns those it may not remove. Never raises."""
    left = []
    for path in list(_bound):
        identity = _bound.pop(path)
        try:
            info = os.lstat(path)
            if stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == identity:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            left.append(Path(path))
    return left


def inherited_socket(expected_path: Path) -> socket.socket | None:
    """The listening socket systemd passed (socket activation), or None.

    Honoured only when ``LISTEN_PID`` is this process; the socket must be a
    listening AF_UNIX stream socket bound to ``expected_path``. The
    ``LISTEN_*`` variables are removed so no child inherits them.

    Raises SocketPathError when the passed socket is not what the config says.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise SocketPathError("the socket passed by systemd is not a listening AF_UNIX stream")
    if sock.getsockname() != str(expected_path):
        name = sock.getsockname()
        sock.detach()
        raise SocketPathError(
            f"systemd passed a socket bound to {name!r} but daemon.socket_path is "
            f"{str(expected_path)!r}; make ListenStream= and the config agree"
        )
    os.set_inheritable(SD_LISTEN_FDS_START, False)
    sock.setblocking(False)
    return sock


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from SO_PEERCRED."""
    import struct

    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid
