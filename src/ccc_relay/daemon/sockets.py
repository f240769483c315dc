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
from pathlib import Path

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
            f"fix it with: sudo chown -R {uid} {path}"
        )
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def _clear_stale(path: Path) -> None:
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
            f"group {name!r} does not exist; create it with: sudo groupadd --system {name}"
        ) from None


def bind_unix_socket(path: Path, *, mode: int, group: str | None = None) -> socket.socket:
    """A listening AF_UNIX stream socket at ``path`` with ``mode`` and ``group``.

    Raises SocketPathError for anything unsafe at the path, OSError otherwise.
    """
    gid = group_id(group) if group is not None else None
    _clear_stale(path)
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
