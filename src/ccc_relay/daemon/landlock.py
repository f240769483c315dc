"""Landlock self-confinement: once started, the daemon touches only its own directories.

The rule: after ``restrict_to`` the process may read and write beneath the
directories it was given, read (never execute) what the running Python needs
to keep importing, bind no TCP port and connect over TCP only to the ports it
was given (none unless the relay federates: its NATS servers' ports), reach no
abstract Unix socket and signal no process outside itself -- for the rest of
its life. Every access right
the kernel's Landlock ABI knows is handled, none it does not. Where Landlock is
missing the answer is a status that says why, for the caller to log; anything
else that goes wrong is an error.

Landlock does not mediate connecting to a Unix socket by path: file modes and
the socket's group remain the control there.

The kernel side -- syscall numbers, rights, structures, the calls themselves --
is ``landlock_abi``; its names stay importable from here.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccc_relay.daemon.landlock_abi import (
    FS_EXECUTE,
    FS_FILE_RIGHTS,
    FS_IOCTL_DEV,
    FS_MAKE_BLOCK,
    FS_MAKE_CHAR,
    FS_MAKE_DIR,
    FS_MAKE_FIFO,
    FS_MAKE_REG,
    FS_MAKE_SOCK,
    FS_MAKE_SYM,
    FS_READ_DIR,
    FS_READ_FILE,
    FS_REFER,
    FS_REMOVE_DIR,
    FS_REMOVE_FILE,
    FS_TRUNCATE,
    FS_WRITE_FILE,
    LANDLOCK_CREATE_RULESET_VERSION,
    LANDLOCK_RESTRICT_SELF_TSYNC,
    LANDLOCK_RULE_NET_PORT,
    LANDLOCK_RULE_PATH_BENEATH,
    NET_BIND_TCP,
    NET_CONNECT_TCP,
    SCOPE_ABSTRACT_UNIX_SOCKET,
    SCOPE_SIGNAL,
    LandlockSyscalls,
    handled_rights,
    ruleset_attr,
)
from ccc_relay.daemon.privileges import PrivilegeError

# Everything the module offered before the kernel ABI moved to landlock_abi,
# so that importers and tests keep importing it from here.
__all__ = [
    "FS_EXECUTE",
    "FS_IOCTL_DEV",
    "FS_MAKE_BLOCK",
    "FS_MAKE_CHAR",
    "FS_MAKE_DIR",
    "FS_MAKE_FIFO",
    "FS_MAKE_REG",
    "FS_MAKE_SOCK",
    "FS_MAKE_SYM",
    "FS_READ_DIR",
    "FS_READ_FILE",
    "FS_REFER",
    "FS_REMOVE_DIR",
    "FS_REMOVE_FILE",
    "FS_TRUNCATE",
    "FS_WRITE_FILE",
    "LANDLOCK_CREATE_RULESET_VERSION",
    "LANDLOCK_RESTRICT_SELF_TSYNC",
    "LANDLOCK_RULE_NET_PORT",
    "LANDLOCK_RULE_PATH_BENEATH",
    "NET_BIND_TCP",
    "NET_CONNECT_TCP",
    "READ_ONLY",
    "READ_WRITE",
    "SCOPE_ABSTRACT_UNIX_SOCKET",
    "SCOPE_SIGNAL",
    "LandlockError",
    "LandlockStatus",
    "LandlockSyscalls",
    "handled_rights",
    "restrict_to",
    "ruleset_attr",
    "runtime_read_paths",
]


READ_ONLY = FS_READ_FILE | FS_READ_DIR
# Everything a state directory needs -- files, subdirectories, sockets, renames --
# and nothing it does not: no exec, no device nodes, fifos or symlinks.
READ_WRITE = (
    READ_ONLY
    | FS_WRITE_FILE
    | FS_TRUNCATE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SOCK
    | FS_REFER
)

# Files outside the interpreter's prefixes that an already-running Python
# still opens: the dynamic linker's cache (a lazily imported C extension pulls
# in a shared library) and the time zone (log and audit timestamps).
_RUNTIME_FILES = ("/etc/ld.so.cache", "/etc/localtime")
_RUNTIME_TREES = ("/usr",)  # shared libraries, zoneinfo, the system interpreter


class LandlockError(RuntimeError):
    """Landlock is present but the confinement could not be applied as asked."""


@dataclass(frozen=True, slots=True)
class LandlockStatus:
    """What ``restrict_to`` achieved; ``message`` is the sentence to log."""

    enforced: bool
    abi: int  # 0 when Landlock is unavailable
    message: str

    def __str__(self) -> str:
        return self.message


def runtime_read_paths() -> list[Path]:
    """What the running interpreter may still read once confined. Raises nothing.

    The interpreter's prefixes (the venv and the base installation: stdlib,
    site-packages), every directory on ``sys.path``, the package directory of
    every module already imported from elsewhere (editable installs), ``/usr``,
    the linker cache and the time zone. The current directory and ``/`` are
    never included, whatever ``sys.path`` says.
    """
    candidates: list[str] = [*_RUNTIME_TREES, *_RUNTIME_FILES]
    candidates += [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    candidates += [entry for entry in sys.path if entry not in ("", ".")]
    candidates += _imported_package_dirs()
    resolved: set[Path] = set()
    for candidate in candidates:
        path = Path(candidate)
        if path.is_absolute() and path.exists():
            resolved.add(path.resolve())
    resolved.discard(Path("/"))
    # A path beneath another one on the list adds nothing: keep the outermost.
    # Sorted by their parts, a path's descendants follow it, so the last one
    # kept is the only ancestor to test against (linear, where testing every
    # pair of ~120 paths took a fifth of a second of each start).
    outermost: list[Path] = []
    for path in sorted(resolved):
        if not outermost or not path.is_relative_to(outermost[-1]):
            outermost.append(path)
    return outermost


def restrict_to(
    paths_rw: Sequence[Path],
    paths_ro: Sequence[Path] = (),
    *,
    files_ro: Sequence[Path] = (),
    connect_ports: Sequence[int] = (),
    syscalls: LandlockSyscalls | None = None,
) -> LandlockStatus:
    """Confine this process for good to ``paths_rw`` (read-write) and ``paths_ro`` (read-only).

    Beneath a directory in ``files_ro`` files may be read but nothing listed
    (the config's directory: an editor that saves by rename makes a new file).

    ``runtime_read_paths()`` are always added read-only, so lazy imports keep
    working. Call it after privileges are dropped and every file the daemon
    needs outside these directories is open. Before Landlock ABI 8 it confines
    only the calling thread, so it must run before any other thread starts.
    TCP connections may go to ``connect_ports`` only (any address: which
    addresses is the systemd unit's ``IPAddressAllow=``); binding a TCP port
    is never allowed. Before ABI 4 the kernel does not govern TCP at all.
    ``syscalls`` replaces the kernel calls (tests simulate a kernel without
    Landlock through it).

    Returns a status whose message begins "Landlock unavailable:" when the
    kernel has no usable Landlock. Raises LandlockError when a read-write path
    is missing, when other threads run and the ABI cannot confine them, or when
    the kernel refuses a rule or the restriction.
    """
    for port in connect_ports:
        if not 0 < port < 65536:
            raise LandlockError(f"{port} is not a TCP port (1-65535)")
    ports = tuple(sorted(set(connect_ports)))
    return _restrict(paths_rw, paths_ro, files_ro, ports, syscalls or LandlockSyscalls())


# --- internals ----------------------------------------------------------------


def _restrict(
    paths_rw: Sequence[Path],
    paths_ro: Sequence[Path],
    files_ro: Sequence[Path],
    connect_ports: tuple[int, ...],
    syscalls: LandlockSyscalls,
) -> LandlockStatus:
    try:
        abi = syscalls.abi_version()
    except OSError as exc:
        return LandlockStatus(False, 0, f"Landlock unavailable: {_why_unavailable(exc)}")
    if abi < 1:
        return LandlockStatus(False, 0, f"Landlock unavailable: the kernel reports ABI {abi}")
    flags = LANDLOCK_RESTRICT_SELF_TSYNC if abi >= 8 else 0
    threads = syscalls.count_threads()
    if not flags and threads > 1:
        raise LandlockError(
            f"cannot apply Landlock with {threads} threads running: ABI {abi} confines only "
            "the calling thread; confine the daemon before the event loop or any executor "
            "starts a thread"
        )
    fs, net, scope = handled_rights(abi)
    rules = [(Path(p), READ_WRITE & fs, True) for p in paths_rw]
    rules += [(Path(p), READ_ONLY & fs, False) for p in (*paths_ro, *runtime_read_paths())]
    rules += [(Path(p), FS_READ_FILE & fs, False) for p in files_ro]
    try:
        ruleset_fd = syscalls.create_ruleset(ruleset_attr(abi))
    except OSError as exc:
        raise LandlockError(f"landlock_create_ruleset failed: {exc.strerror}") from None
    try:
        for path, access, required in rules:
            _add_path(syscalls, ruleset_fd, path, access, required=required)
        for port in connect_ports if net else ():
            try:
                syscalls.add_net_rule(ruleset_fd, NET_CONNECT_TCP, port)
            except OSError as exc:
                raise LandlockError(
                    f"TCP port {port}: landlock_add_rule failed: {exc.strerror}"
                ) from None
        try:
            syscalls.set_no_new_privs()
        except PrivilegeError as exc:
            raise LandlockError(str(exc)) from None
        try:
            syscalls.restrict_self(ruleset_fd, flags)
        except OSError as exc:
            raise LandlockError(f"landlock_restrict_self failed: {exc.strerror}") from None
    finally:
        os.close(ruleset_fd)
    return LandlockStatus(True, abi, _describe(abi, paths_rw, net, scope, connect_ports))


def _add_path(
    syscalls: LandlockSyscalls, ruleset_fd: int, path: Path, access: int, *, required: bool
) -> None:
    try:
        # O_PATH follows a symlink to what it names, which is what gets the rule.
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        if required:
            raise LandlockError(
                f"{path}: cannot open it to allow access beneath it ({exc.strerror}); "
                "create the directory before confining the daemon"
            ) from None
        return  # a read-only convenience path this system lacks
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= FS_FILE_RIGHTS
        syscalls.add_rule(ruleset_fd, access, fd)
    except OSError as exc:
        raise LandlockError(f"{path}: landlock_add_rule failed: {exc.strerror}") from None
    finally:
        os.close(fd)


def _imported_package_dirs() -> Iterable[str]:
    for name, module in list(sys.modules.items()):
        if "." in name:
            continue
        origin = getattr(module, "__file__", None)
        if not isinstance(origin, str):
            continue
        # A package's whole directory, so its not-yet-imported submodules load too.
        yield os.path.dirname(origin) if getattr(module, "__path__", None) else origin


def _why_unavailable(exc: OSError) -> str:
    if exc.errno == errno.ENOSYS and exc.strerror != os.strerror(errno.ENOSYS):
        return str(exc.strerror)  # refused before asking the kernel: which platform and why
    if exc.errno == errno.ENOSYS:
        return (
            "the kernel has no Landlock system calls (Linux before 5.13, or built "
            "without CONFIG_SECURITY_LANDLOCK)"
        )
    if exc.errno == errno.EOPNOTSUPP:
        return (
            "Landlock is built into the kernel but not enabled at boot "
            "(add landlock to the lsm= kernel parameter)"
        )
    if exc.errno == errno.EPERM:
        return (
            "a seccomp filter refuses the Landlock system calls (allow "
            "landlock_create_ruleset, landlock_add_rule and landlock_restrict_self)"
        )
    return f"landlock_create_ruleset answered {errno.errorcode.get(exc.errno or 0, exc.errno)}"


def _describe(
    abi: int, paths_rw: Sequence[Path], net: int, scope: int, connect_ports: Sequence[int]
) -> str:
    writable = ", ".join(str(p) for p in paths_rw) or "nothing"
    parts = [f"Landlock enforced (ABI {abi}): read-write only beneath {writable}"]
    if not net:
        parts.append("TCP not restricted (ABI before 4)")
    elif connect_ports:
        ports = ", ".join(str(p) for p in connect_ports)
        plural = "s" if len(connect_ports) > 1 else ""
        parts.append(f"TCP connect only to port{plural} {ports}, no TCP bind")
    else:
        parts.append("TCP denied")
    if scope:
        parts.append("abstract Unix sockets and signals scoped to the daemon")
    else:
        parts.append("abstract Unix sockets and signals not scoped (ABI before 6)")
    return "; ".join(parts)
