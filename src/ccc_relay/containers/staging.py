"""What the launcher lays out on the host before a sandbox starts.

The credential is opened for bubblewrap or copied for a container engine, and
podman gets an empty root skeleton, all inside a directory private to the
launcher. The rule this module owns: the launcher may run as root, so it
follows no symlink and trusts no directory that anyone else could have
planted something in.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from ccc_relay.containers.spec import (
    ETC_FILES,
    SANDBOX_CCC,
    SANDBOX_CCC_DIR,
    SANDBOX_CREDENTIAL,
    SANDBOX_DIR_SOCKET,
    SANDBOX_SOCKET,
    SANDBOX_SOCKET_DIR,
    SANDBOX_WORKSPACE,
    USR_LINKS,
)
from ccc_relay.credentials import MAX_CREDENTIAL_FILE


class LaunchError(RuntimeError):
    """The host is not ready for this sandbox; the message says what to do."""


def open_credential(path: Path) -> int:
    """Open the credential for bubblewrap to copy in; returns a descriptor.

    Refuses a symlink and anything but a regular file: the launcher may run as
    root, and must not be talked into copying another file into the sandbox.
    Raises LaunchError.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise LaunchError(f"cannot open credential file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LaunchError(f"credential file {path} is not a regular file")
    return fd


def private_dir(path: Path) -> Path:
    """Make ``path`` (if missing) and insist it is a directory only this uid can enter.

    The launcher may run as root and lays out what every sandbox will see;
    nobody else -- not the relay's user, not an agent -- may plant anything
    there (a stray etc/ld.so.preload in the podman root would run in every
    container). Raises LaunchError.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise LaunchError(f"cannot make {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise LaunchError(
            f"{path} must be a directory owned by uid {os.geteuid()} with mode 0700 "
            f"(it is {stat.filemode(info.st_mode)} owned by {info.st_uid})"
        )
    return path


def prepare_podman_rootfs(rootfs_dir: Path, *, etc_files: Sequence[str] = ETC_FILES) -> Path:
    """Create (idempotently) the empty root that podman's binds are laid over.

    It holds only directories, the /usr links, mount points and the link
    /run/ccc.sock -> ccc-relay/relay.sock; no host data.
    Its parent must be private (see ``private_dir``). Its /tmp is 1777 because
    podman copies the mode of the directory under a tmpfs onto the tmpfs.
    Raises LaunchError when it cannot be made.
    """
    private_dir(rootfs_dir.parent)
    try:
        rootfs_dir.mkdir(mode=0o755, exist_ok=True)
        if rootfs_dir.is_symlink() or not rootfs_dir.is_dir():
            raise LaunchError(f"{rootfs_dir} is not a directory")
        for name in (
            "usr",
            "etc",
            "etc/ssl",
            "proc",
            "dev",
            "sys",
            "run",
            "run/ccc",
            SANDBOX_CCC_DIR.lstrip("/"),
            SANDBOX_WORKSPACE.lstrip("/"),
        ):
            (rootfs_dir / name).mkdir(mode=0o755, exist_ok=True)
        tmp = rootfs_dir / "tmp"
        tmp.mkdir(exist_ok=True)
        tmp.chmod(0o1777)
        for target, link in USR_LINKS:
            link_path = rootfs_dir / link.lstrip("/")
            if not link_path.is_symlink():
                link_path.symlink_to(target)
        for path in etc_files:
            point = rootfs_dir / path.lstrip("/")
            if Path(path).is_dir():
                point.mkdir(parents=True, exist_ok=True)
            else:
                point.parent.mkdir(parents=True, exist_ok=True)
                point.touch(exist_ok=True)
        (rootfs_dir / SANDBOX_SOCKET_DIR.lstrip("/")).mkdir(mode=0o755, exist_ok=True)
        for path in (SANDBOX_DIR_SOCKET, SANDBOX_CREDENTIAL, SANDBOX_CCC):
            (rootfs_dir / path.lstrip("/")).touch(exist_ok=True)
        _socket_link(rootfs_dir / SANDBOX_SOCKET.lstrip("/"))
    except OSError as exc:
        raise LaunchError(f"cannot prepare the podman root {rootfs_dir}: {exc}") from None
    return rootfs_dir


def _socket_link(link: Path) -> None:
    # /run/ccc.sock leads to whatever is mounted at /run/ccc-relay/relay.sock:
    # the agent's socket directory or the shared socket file. Relative, so
    # that on the host it stays inside the skeleton.
    target = os.path.relpath(SANDBOX_DIR_SOCKET, os.path.dirname(SANDBOX_SOCKET))
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.exists() or link.is_symlink():
        link.unlink()  # an older skeleton's mount point
    link.symlink_to(target)


# In a staging directory: the pid of the launcher whose sandbox uses the copy.
# A directory with a pid file of a process that is gone is a crashed run's;
# one without (ccc run --print's, kept for the printed command) is left alone.
LAUNCHER_PID_FILE = "launcher.pid"


def stage_credential(
    source: Path, staging_dir: Path, uid: int, gid: int, *, launcher_pid: int | None = None
) -> Path:
    """Copy the credential to a file only ``uid`` can read, for podman/docker to mount.

    The relay keeps credentials 0600 to itself; a container engine mounts the
    inode, so the container's uid needs a copy it owns. ``staging_dir`` must be
    private (see ``private_dir``); the engine, as root, need not walk into it.
    With ``launcher_pid`` the copy belongs to that process's run: remove it with
    ``remove_staged`` when the sandbox ends, or ``sweep_staged`` removes it once
    that process is gone. Raises LaunchError.
    """
    fd = open_credential(source)
    try:
        data = os.read(fd, MAX_CREDENTIAL_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CREDENTIAL_FILE:
        raise LaunchError(f"{source} is too large to be a credential file")
    private_dir(staging_dir)
    target = staging_dir / "credential"
    temp = staging_dir / f".credential.{secrets.token_hex(4)}.tmp"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(temp, flags, 0o400)
        try:
            os.write(out, data)
            os.fchown(out, uid, gid)
            os.fchmod(out, 0o400)
        finally:
            os.close(out)
        os.replace(temp, target)
        if launcher_pid is not None:
            _write_private(staging_dir / LAUNCHER_PID_FILE, f"{launcher_pid}\n".encode())
    except OSError as exc:
        raise LaunchError(f"cannot stage the credential in {staging_dir}: {exc}") from None
    return target


def _write_private(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(temp, flags, 0o600)
    try:
        os.write(out, data)
    finally:
        os.close(out)
    os.replace(temp, path)


def remove_staged(staging_dir: Path, *, launcher_pid: int) -> None:
    """Remove ``staging_dir`` when it is still ``launcher_pid``'s (a later run of the
    same agent may have staged its own copy there meanwhile). Raises nothing."""
    if _launcher_pid(staging_dir) == launcher_pid:
        shutil.rmtree(staging_dir, ignore_errors=True)


def sweep_staged(credentials_dir: Path) -> list[Path]:
    """Remove the staging directories under ``credentials_dir`` whose launcher is gone
    (a ``ccc run`` that was killed or crashed); returns them. Raises nothing."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in credentials_dir.iterdir():
            if entry.is_symlink() or not entry.is_dir():
                continue
            pid = _launcher_pid(entry)
            if pid is not None and not _alive(pid):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _launcher_pid(staging_dir: Path) -> int | None:
    try:
        fd = os.open(staging_dir / LAUNCHER_PID_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 32).decode(errors="replace").strip()
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def grant_socket(path: Path, gid: int) -> None:
    """Give an agent's own socket ``path`` to group ``gid``, so that agent's sandbox may connect.

    Only for a per-agent socket, which authenticates nobody but its agent and
    still asks for the agent's credential: a root launcher that mounts it for
    that agent's sandbox lets the sandbox's group connect, whatever group the
    relay made it with (root's, with no ``daemon.socket_group``). Its
    directory, which holds nothing else, gets the group too and the
    set-group-ID bit, so the socket the relay makes there after a restart is
    born with that group and the running sandbox can still connect. A symlink
    or anything but a socket (a directory) is refused, and neither inode may
    change while it is changed. Raises LaunchError.
    """
    try:
        _grant_dir(path.parent, gid)
        before = os.lstat(path)
        if not stat.S_ISSOCK(before.st_mode):
            raise LaunchError(f"{path} is not a socket; is the relay's config right?")
        os.chown(path, -1, gid, follow_symlinks=False)
        after = os.lstat(path)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise LaunchError(f"{path} changed while it was given to the sandbox; try again")
        if after.st_mode & 0o060 != 0o060:
            raise LaunchError(
                f"{path} is mode {stat.S_IMODE(after.st_mode):04o}, so no group may connect: "
                "set daemon.socket_mode: 0660 in the relay's config"
            )
    except OSError as exc:
        raise LaunchError(
            f"cannot let the sandbox's group {gid} use {path}: {exc.strerror}"
        ) from None


def _grant_dir(directory: Path, gid: int) -> None:
    # Opened without following a link, then changed through the descriptor:
    # what is checked is what is changed.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if info.st_mode & 0o022:
            raise LaunchError(
                f"{directory} is writable by others than the relay; restart the relay, "
                "which refuses or repairs it"
            )
        if info.st_gid != gid:
            os.fchown(fd, -1, gid)
        if not info.st_mode & stat.S_ISGID:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) | stat.S_ISGID)
    finally:
        os.close(fd)
