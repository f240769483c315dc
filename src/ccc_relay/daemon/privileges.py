"""Who the daemon runs as: never root once its sockets exist, and never able to go back.

The rule: a relay started as root binds its sockets, then becomes ``daemon.user``
for good -- real, effective and saved ids, and groups -- and proves it by reading
the ids back and watching ``setuid(0)`` fail. A relay started as anyone else must
already be that user. Either way it ends with ``no_new_privs`` set and core dumps
and ptrace attachment refused.
"""

from __future__ import annotations

import ctypes
import functools
import grp
import os
import pwd
import threading
from pathlib import Path

# prctl(2) options, from <linux/prctl.h>.
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

DEFAULT_SERVICE_USER = "claude-ipc"  # the seed's daemon.user
# Capability sets that would let the process act with privilege; the inheritable
# set alone grants nothing.
_CAPABILITY_FIELDS = (b"CapPrm", b"CapEff", b"CapAmb")


class PrivilegeError(RuntimeError):
    """The daemon cannot run with the identity it was given; the message says how to fix it."""


def root_check(user: str | None, allow_root: bool, *, euid: int | None = None) -> None:
    """Refuse identities the daemon must not run with, before anything is bound.

    ``euid`` is the id the process runs as (``os.geteuid()`` when None).

    Raises PrivilegeError when started as root without ``user`` (unless
    ``allow_root``), when ``user`` does not exist, or when started as a
    non-root user other than ``user``.
    """
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        target = None if user is None else _lookup_user(user)
        if (target is None or target.pw_uid == 0) and not allow_root:
            raise PrivilegeError(
                "refusing to run as root: set daemon.user in the config (e.g. claude-ipc) so "
                "the relay drops to it after binding its sockets, or pass --allow-root"
            )
        return
    if user is None:
        return
    target = _lookup_user(user)
    if target.pw_uid != euid:
        raise PrivilegeError(
            f"daemon.user is {user!r} but the relay was started as {_user_name(euid)!r}: "
            f"start it as root so it can drop to {user!r}, or as {user!r}"
        )


def drop_privileges(user: str, *, group: str | None = None) -> None:
    """Become ``user`` for good, keeping ``group`` (the socket group) as a supplementary group.

    Call it after the sockets are bound and their owner, group and mode set, and
    before any thread starts: ``no_new_privs`` is per thread. As root it sets the
    groups, then gid, then uid (real, effective and saved); as ``user`` already,
    it only checks. Either way it then sets ``no_new_privs`` and makes the process
    non-dumpable.

    Raises PrivilegeError when ``user`` or ``group`` does not exist, when ``user``
    is root, when the process runs as someone else without root, when another
    thread is running, or when any check after the change fails.
    """
    target = _lookup_user(user)
    if target.pw_uid == 0:
        raise PrivilegeError(
            f"daemon.user {user!r} is root; create an unprivileged user for the relay "
            f"({_useradd(DEFAULT_SERVICE_USER)})"
        )
    require_single_thread("drop privileges")
    if os.geteuid() == 0:
        gids = group_ids(target, group)
        os.setgroups(gids)
        # Group before user: once the uid is gone, so is the right to change groups.
        os.setresgid(target.pw_gid, target.pw_gid, target.pw_gid)
        os.setresuid(target.pw_uid, target.pw_uid, target.pw_uid)
        _verify_groups(gids)
        _verify_root_is_gone()
    _verify_ids(target)
    _verify_no_capabilities()
    set_no_new_privs()
    # The relay holds message bodies, session state and credential hashes in
    # memory. Non-dumpable means no core file with them (core_pattern may put it
    # anywhere) and no ptrace or /proc/PID/mem access from other processes that
    # happen to run as the same user. The kernel already clears the flag on a
    # uid change, but not when systemd starts the relay as its user directly.
    _prctl(PR_SET_DUMPABLE, 0)
    if _prctl(PR_GET_DUMPABLE) != 0:
        raise PrivilegeError("the process is still dumpable after PR_SET_DUMPABLE 0")


def describe_missing(user: str | None, group: str | None, *, euid: int | None = None) -> list[str]:
    """Sentences saying how to create whatever of ``user``, ``group`` and membership is missing.

    Empty when the user and group exist and the user belongs to the group. A
    relay started as root (``euid``, default ``os.geteuid()``) needs no
    membership: the drop keeps the group itself. Raises nothing.
    """
    root = (os.geteuid() if euid is None else euid) == 0
    sentences: list[str] = []
    account = _find_user(user) if user is not None else None
    if user is not None and account is None:
        sentences.append(f"user {user!r} does not exist; create it with: {_useradd(user)}")
    if group is None:
        return sentences
    entry = _find_group(group)
    if entry is None:
        sentences.append(
            f"group {group!r} does not exist; create it with: {sudo()}groupadd --system {group}"
        )
    if root:
        return sentences
    if user is not None and (entry is None or account is None or not _is_member(account, entry)):
        sentences.append(
            f"user {user!r} is not in group {group!r}; add it with: "
            f"{sudo()}usermod --append --groups {group} {user}"
        )
    return sentences


def group_ids(target: pwd.struct_passwd, group: str | None) -> list[int]:
    """The groups ``target`` holds once the relay has dropped to it: its own, and
    ``group`` (the socket group), sorted.

    Raises PrivilegeError when ``group`` does not exist or root's group is among them.
    """
    gids = set(os.getgrouplist(target.pw_name, target.pw_gid))
    if group is not None:
        entry = _find_group(group)
        if entry is None:
            raise PrivilegeError(
                f"group {group!r} does not exist; create it with: {sudo()}groupadd --system {group}"
            )
        # Kept so the relay can give sockets it creates later to the agents' group.
        gids.add(entry.gr_gid)
    if 0 in gids:
        raise PrivilegeError(
            f"user {target.pw_name!r} belongs to group root (0); the relay must not keep it"
        )
    return sorted(gids)


def set_no_new_privs() -> None:
    """Set ``no_new_privs`` for the calling thread and the threads and children it starts.

    After this, exec can never raise privileges (setuid bits and file
    capabilities are ignored), and an unprivileged process may install seccomp
    and Landlock filters.

    Raises PrivilegeError when the kernel refuses or the flag does not read back.
    """
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if _prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise PrivilegeError("no_new_privs did not stick after PR_SET_NO_NEW_PRIVS")


def require_single_thread(action: str) -> None:
    """Raises PrivilegeError when the process runs more than one thread.

    Per-thread settings (``no_new_privs``, Landlock before ABI 8) would leave the
    other threads unconfined.
    """
    count = count_threads()
    if count > 1:
        raise PrivilegeError(
            f"cannot {action} with {count} threads running: it would confine only this one; "
            "do it before the event loop or any executor starts a thread"
        )


def count_threads() -> int:
    """Threads in this process, native ones included where /proc shows them. Raises nothing."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


# Whether whoever started this process is root, read once at import, before any
# drop: a relay that became daemon.user still reports to the root who started it.
_STARTED_AS_ROOT = os.geteuid() == 0


def sudo() -> str:
    """``"sudo "`` to put before a printed fix that needs root, or nothing when root
    started this process (and has no sudo to type). Raises nothing."""
    return "" if _STARTED_AS_ROOT or os.geteuid() == 0 else "sudo "


# --- internals ----------------------------------------------------------------


def _useradd(user: str) -> str:
    return f"{sudo()}useradd --system --no-create-home --shell /usr/sbin/nologin {user}"


def _find_user(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        pass
    if user.isdigit():
        try:
            return pwd.getpwuid(int(user))
        except KeyError:
            return None
    return None


def _find_group(group: str) -> grp.struct_group | None:
    try:
        return grp.getgrnam(group)
    except KeyError:
        pass
    if group.isdigit():
        try:
            return grp.getgrgid(int(group))
        except KeyError:
            return None
    return None


def _lookup_user(user: str) -> pwd.struct_passwd:
    account = _find_user(user)
    if account is None:
        raise PrivilegeError(f"user {user!r} does not exist; create it with: {_useradd(user)}")
    return account


def _is_member(account: pwd.struct_passwd, entry: grp.struct_group) -> bool:
    return account.pw_gid == entry.gr_gid or account.pw_name in entry.gr_mem


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _verify_ids(target: pwd.struct_passwd) -> None:
    uids = os.getresuid()
    gids = os.getresgid()
    if uids != (target.pw_uid,) * 3:
        raise PrivilegeError(
            f"real/effective/saved uids are {uids}, expected {target.pw_uid} for "
            f"{target.pw_name!r}: start the relay as root so it can drop to "
            f"{target.pw_name!r}, or as {target.pw_name!r}"
        )
    if gids != (target.pw_gid,) * 3:
        raise PrivilegeError(
            f"real/effective/saved gids are {gids}, expected {target.pw_gid} "
            f"(the primary group of {target.pw_name!r})"
        )


def _verify_groups(expected: list[int]) -> None:
    actual = sorted(set(os.getgroups()))
    if actual != expected:
        raise PrivilegeError(f"supplementary groups are {actual} after setgroups({expected})")


def _verify_root_is_gone() -> None:
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("setuid(0) succeeded after dropping privileges; refusing to continue")


def _verify_no_capabilities() -> None:
    try:
        # Bytes, not text: a text read looks up a codec, and after the drop the
        # interpreter's own files may no longer be readable to import one.
        lines = Path("/proc/self/status").read_bytes().splitlines()
    except OSError:
        return  # no /proc: the uid checks above still hold
    for line in lines:
        name, _, value = line.partition(b":")
        if name in _CAPABILITY_FIELDS and int(value.strip(), 16) != 0:
            raise PrivilegeError(
                f"the relay still holds capabilities ({name.decode()} {value.strip().decode()}); "
                "start it without ambient or file capabilities "
                "(systemd: CapabilityBoundingSet= empty)"
            )


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.restype = ctypes.c_int
    return libc


def _prctl(option: int, arg: int = 0) -> int:
    # prctl is variadic: every argument is passed with its C width spelled out.
    result: int = _libc().prctl(
        ctypes.c_int(option),
        ctypes.c_ulong(arg),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    if result < 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"prctl({option}) failed: {os.strerror(err)}")
    return result
