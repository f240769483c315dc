"""The kernel's Landlock ABI: syscall numbers, rights, structures and the calls themselves.

What the kernel defines and how to ask it: the three syscall numbers, every
access-right and scope bit with the ABI version that added it, which rights a
ruleset handles at each version, ``struct landlock_ruleset_attr``,
``struct landlock_path_beneath_attr`` and ``struct landlock_net_port_attr`` as
each version lays them out, and
``LandlockSyscalls``, thin ctypes wrappers that raise OSError. No policy lives
here: which rights a directory gets, and what the process is confined to, is
``landlock.py``'s.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

from ccc_relay.daemon.privileges import count_threads, set_no_new_privs

# (landlock_create_ruleset, landlock_add_rule, landlock_restrict_self). Since
# Linux 5.1 a new syscall gets the same number on every architecture, arm64's
# generic table included; alpha and mips offset theirs and are not listed.
_SYSCALLS = (444, 445, 446)
_ARCHITECTURES = frozenset(
    {
        "x86_64",
        "amd64",
        "aarch64",
        "arm64",
        "i386",
        "i686",
        "armv7l",
        "armv6l",
        "riscv64",
        "ppc64le",
        "ppc64",
        "s390x",
        "loongarch64",
    }
)

LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2  # ABI 4
LANDLOCK_RESTRICT_SELF_TSYNC = 1 << 3  # ABI 8: confine every thread at once

# Filesystem access rights (enum landlock_access_fs) and the ABI that added them.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FS_ABI1 = (1 << 13) - 1  # EXECUTE through MAKE_SYM
# The only rights a rule on a non-directory may carry.
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV


class LandlockSyscalls:
    """The kernel calls ``restrict_to`` makes, as thin wrappers that raise OSError.

    The seam for tests: a subclass answers as a kernel without Landlock would.
    """

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long

    def abi_version(self) -> int:
        """The kernel's Landlock ABI version. Raises OSError as the kernel answers."""
        return self._call(0, None, 0, LANDLOCK_CREATE_RULESET_VERSION)

    def create_ruleset(self, attr: bytes) -> int:
        """A new ruleset file descriptor. Raises OSError as the kernel answers."""
        buf = ctypes.create_string_buffer(attr, len(attr))
        return self._call(0, buf, len(attr), 0)

    def add_rule(self, ruleset_fd: int, allowed_access: int, parent_fd: int) -> None:
        """Allow ``allowed_access`` beneath ``parent_fd``. Raises OSError as the kernel answers."""
        # struct landlock_path_beneath_attr is packed: u64 then s32, 12 bytes.
        attr = struct.pack("=Qi", allowed_access, parent_fd)
        buf = ctypes.create_string_buffer(attr, len(attr))
        self._call(1, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, buf, 0)

    def add_net_rule(self, ruleset_fd: int, allowed_access: int, port: int) -> None:
        """Allow ``allowed_access`` (NET_* rights) on TCP ``port``. Raises OSError as the
        kernel answers."""
        # struct landlock_net_port_attr is packed: u64 rights then u64 port, 16 bytes.
        attr = struct.pack("=QQ", allowed_access, port)
        buf = ctypes.create_string_buffer(attr, len(attr))
        self._call(1, ruleset_fd, LANDLOCK_RULE_NET_PORT, buf, 0)

    def restrict_self(self, ruleset_fd: int, flags: int) -> None:
        """Enforce the ruleset, irreversibly. Raises OSError as the kernel answers."""
        self._call(2, ruleset_fd, flags)

    def set_no_new_privs(self) -> None:
        """Required before an unprivileged restrict_self. Raises PrivilegeError if refused."""
        set_no_new_privs()

    def count_threads(self) -> int:
        """Threads in this process. Raises nothing."""
        return count_threads()

    def _call(self, which: int, *args: object) -> int:
        if sys.platform != "linux":
            raise OSError(errno.ENOSYS, f"Landlock exists only on Linux, not {sys.platform}")
        if platform.machine().lower() not in _ARCHITECTURES:
            raise OSError(
                errno.ENOSYS, f"no Landlock syscall numbers known for {platform.machine()}"
            )
        # syscall(2) is variadic: pass every argument at its full C width.
        c_args = [_c_arg(arg) for arg in args]
        result: int = self._libc.syscall(ctypes.c_long(_SYSCALLS[which]), *c_args)
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return result


def handled_rights(abi: int) -> tuple[int, int, int]:
    """(filesystem, network, scope) rights a ruleset handles at ``abi``. Raises nothing."""
    if abi < 1:
        return 0, 0, 0
    fs = _FS_ABI1
    fs |= FS_REFER if abi >= 2 else 0
    fs |= FS_TRUNCATE if abi >= 3 else 0
    fs |= FS_IOCTL_DEV if abi >= 5 else 0
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scope = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    return fs, net, scope


def ruleset_attr(abi: int) -> bytes:
    """struct landlock_ruleset_attr, only as long as ``abi`` knows it. Raises nothing."""
    fs, net, scope = handled_rights(abi)
    if abi >= 6:
        return struct.pack("=QQQ", fs, net, scope)
    if abi >= 4:
        return struct.pack("=QQ", fs, net)
    return struct.pack("=Q", fs)


# --- internals ----------------------------------------------------------------


def _c_arg(arg: object) -> ctypes.c_long | ctypes.c_void_p:
    if isinstance(arg, int):
        return ctypes.c_long(arg)
    if arg is None:
        return ctypes.c_void_p(None)
    if isinstance(arg, ctypes.Array):
        return ctypes.cast(arg, ctypes.c_void_p)
    raise TypeError(f"not a syscall argument: {arg!r}")
