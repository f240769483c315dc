"""seccomp: the system calls the relay (and an agent's sandbox) never makes are refused.

The rule: a filter allows everything but a named deny list, and a denied call
fails with EPERM (``clone3`` with ENOSYS, so the C library falls back to
``clone``, whose namespace flags the filter can see). The relay loads its
filter into itself at start-up -- after dropping privileges and Landlock,
before serving -- and proves it by calling ``unshare(0)``, which must fail.
``containers.seccomp`` holds the sandboxes' list and hands bubblewrap the
compiled program.

The BPF is compiled by libseccomp (Debian's ``libseccomp2``), the library
systemd, podman and runc use, through a few ctypes calls to its stable C API.
It is not loaded with libseccomp: the relay hands the compiled program to
``prctl(PR_SET_SECCOMP)`` itself, because under its systemd unit the
``seccomp()`` system call is refused (it is not in ``@system-service``) and
``prctl`` is not.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ccc_relay.daemon.privileges import PrivilegeError, require_single_thread, set_no_new_privs

log = logging.getLogger("ccc_relay.daemon")

LIBSECCOMP = "libseccomp.so.2"
INSTALL_HINT = "install it with: sudo apt-get install libseccomp2"

# libseccomp's actions, comparisons and filter attributes (<seccomp.h>).
ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
CMP_NE = 1
CMP_EQ = 4
CMP_GT = 6
CMP_MASKED_EQ = 7
_ATTR_ACT_BADARCH = 2
_ATTR_CTL_NNP = 3

# The kernel's side (<linux/prctl.h>, <linux/seccomp.h>).
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_INSTRUCTION = 8  # bytes in one struct sock_filter

# clone(2)'s namespace flags (<linux/sched.h>).
NAMESPACE_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
PERSONALITY_QUERY = 0xFFFFFFFF  # personality(0xffffffff) reads, never changes
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_TYPE_MASK = 0xF  # the rest of socket()'s type is SOCK_NONBLOCK / SOCK_CLOEXEC
IPPROTO_TCP = 6
_ARCH_S390 = 22  # EM_S390: clone's flags are its second argument there

# Groups of calls neither the relay nor an agent's sandbox needs. Names this
# architecture lacks (iopl on arm64) are skipped when the filter is compiled.
NAMESPACES_AND_MOUNTS = (
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
)
OTHER_PROCESSES = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd")
KERNEL_SURFACE = (
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fanotify_init",
    "open_by_handle_at",
)
SYSTEM_ADMINISTRATION = (
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "vhangup",
    "iopl",
    "ioperm",
    "uselib",
    "_sysctl",
    "sysfs",
    "ustat",
    "nfsservctl",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
)


class SeccompError(PrivilegeError):
    """A filter that cannot be compiled or loaded; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class SyscallPolicy:
    """What one filter refuses; everything else is allowed."""

    denied: tuple[str, ...]  # EPERM whatever the arguments
    unsupported: tuple[str, ...] = ("clone3",)  # ENOSYS: callers fall back to older calls
    namespace_clones: bool = True  # clone() with any CLONE_NEW* flag: EPERM
    personality_query_only: bool = False  # personality() other than the query: EPERM
    denied_ioctls: tuple[int, ...] = ()  # ioctl() requests refused with EPERM
    socket_family: int | None = None  # socket() of any other family: EPERM
    # With socket_family: also TCP sockets (AF_INET/AF_INET6, SOCK_STREAM, protocol
    # 0 or IPPROTO_TCP) -- a federating relay's link to NATS; no UDP, raw or SCTP.
    tcp: bool = False

    def refused(self) -> list[str]:
        """Every call the filter refuses in some form, for reports and docs."""
        names = [*self.denied, *self.unsupported]
        if self.namespace_clones:
            names.append("clone (CLONE_NEW* flags)")
        if self.personality_query_only:
            names.append("personality (but the query)")
        if self.denied_ioctls:
            names.append("ioctl (" + ", ".join(f"{r:#x}" for r in self.denied_ioctls) + ")")
        if self.socket_family is not None:
            tcp = " and TCP" if self.tcp else ""
            names.append(f"socket (but family {self.socket_family}{tcp})")
        return names


# What the relay never does once it serves: it speaks only AF_UNIX, runs no
# program, changes no persona, and touches no other process or namespace.
DAEMON_POLICY = SyscallPolicy(
    denied=(
        *NAMESPACES_AND_MOUNTS,
        *OTHER_PROCESSES,
        *KERNEL_SURFACE,
        *SYSTEM_ADMINISTRATION,
        "personality",
        "execve",
        "execveat",
    ),
    socket_family=AF_UNIX,
)

# A relay with a federation: section also opens TCP connections to its NATS
# servers; which ports Landlock decides, which addresses the systemd unit.
# connect(2) itself stays allowed in both: the relay connects to Unix sockets
# (a stale socket's probe), and seccomp cannot read the address it is given.
FEDERATING_POLICY = dataclasses.replace(DAEMON_POLICY, tcp=True)


def daemon_policy(*, federating: bool) -> SyscallPolicy:
    """The relay's filter: Unix sockets only, plus TCP when it federates. Raises nothing."""
    return FEDERATING_POLICY if federating else DAEMON_POLICY


DAEMON_PROBE = "unshare(0)"  # harmless when allowed; the filter must refuse it
# Loaded before the event loop exists: libuv (uvloop) then keeps to epoll
# instead of making an io_uring, which the relay's filter could not take away
# from it later without breaking the loop.
NO_IO_URING = SyscallPolicy(denied=("io_uring_setup",), unsupported=(), namespace_clones=False)


def compile_filter(policy: SyscallPolicy) -> bytes:
    """The BPF program (struct sock_filter[]) for ``policy``, compiled by libseccomp.

    A call from another architecture's table (32-bit int 0x80, x32) fails
    with ENOSYS, so no deny list can be sidestepped through it.

    Raises SeccompError when libseccomp is missing or refuses the rules.
    """
    return _compile(policy)


def load_filter(program: bytes) -> None:
    """Apply ``program`` to this process and every process it starts, irreversibly.

    Sets ``no_new_privs`` first (the kernel requires it without
    CAP_SYS_ADMIN). Call it while only one thread runs: a filter loaded
    with prctl covers the calling thread and the threads it starts later.

    Raises SeccompError (a PrivilegeError) when the kernel refuses or
    another thread is running.
    """
    if not program or len(program) % BPF_INSTRUCTION:
        raise SeccompError("the seccomp program is empty or not whole BPF instructions")
    require_single_thread("load the seccomp filter")
    set_no_new_privs()

    class SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    buffer = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // BPF_INSTRUCTION, ctypes.cast(buffer, ctypes.c_void_p))
    libc = _libc()
    result = libc.prctl(
        ctypes.c_int(PR_SET_SECCOMP),
        ctypes.c_ulong(SECCOMP_MODE_FILTER),
        ctypes.byref(prog),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    if result != 0:
        err = ctypes.get_errno()
        raise SeccompError(
            f"the kernel refused the seccomp filter: {os.strerror(err)}; the relay needs a "
            "kernel with CONFIG_SECCOMP_FILTER and a service manager that allows prctl()"
        )


def refuse_io_uring() -> None:
    """Refuse io_uring_setup from now on; call it before the event loop starts.

    Raises SeccompError when the filter cannot be compiled or loaded.
    """
    load_filter(compile_filter(NO_IO_URING))


class DaemonFilter:
    """The relay's own filter: compiled before Landlock hides libseccomp, loaded after it."""

    def __init__(self, policy: SyscallPolicy = DAEMON_POLICY) -> None:
        """Raises SeccompError when the filter cannot be compiled, or when this
        process already holds an io_uring (an event loop started before
        ``refuse_io_uring``), which the filter would cut off."""
        if "io_uring_enter" in policy.denied and holds_io_uring():
            raise SeccompError(
                "this process already has an io_uring (uvloop's event loop?), which the "
                "seccomp filter would cut off: call refuse_io_uring() before the loop starts"
            )
        self.policy = policy
        self.program = compile_filter(policy)

    def enforce(self) -> dict[str, Any]:
        """Load the filter, then prove it: ``unshare(0)`` must fail with EPERM.

        Returns the lines ``ccc status`` shows under ``sandbox``. Raises
        SeccompError when loading fails or the probe is not refused.
        """
        load_filter(self.program)
        refused = probe_refused()
        if refused != errno.EPERM:
            outcome = "succeeded" if refused == 0 else f"failed with {errno.errorcode[refused]}"
            raise SeccompError(f"seccomp filter loaded but {DAEMON_PROBE} {outcome}")
        report = {
            "seccomp": f"filter loaded: {len(self.policy.refused())} system calls refused",
            "seccomp_probe": f"{DAEMON_PROBE} refused: EPERM",
        }
        log.info("seccomp %s (%s)", report["seccomp"], report["seccomp_probe"])
        return report


def holds_io_uring() -> bool:
    """Whether any descriptor of this process is an io_uring. Raises nothing."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[io_uring]":
                return True
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return False


def probe_refused() -> int:
    """0 when ``unshare(0)`` (a no-op) succeeds, else the errno it failed with."""
    libc = _libc()
    if libc.unshare(ctypes.c_int(0)) == 0:
        return 0
    return ctypes.get_errno()


# --- libseccomp ---------------------------------------------------------------


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def action_errno(err: int) -> int:
    return _ACT_ERRNO | (err & 0xFFFF)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.restype = ctypes.c_int
    libc.unshare.restype = ctypes.c_int
    return libc


@functools.cache
def libseccomp() -> ctypes.CDLL:
    """libseccomp, opened through the loader's cache (no subprocess, unlike find_library).

    Raises SeccompError when it is not installed.
    """
    try:
        lib = ctypes.CDLL(LIBSECCOMP, use_errno=True)
    except OSError:
        raise SeccompError(f"{LIBSECCOMP} (libseccomp) is not installed; {INSTALL_HINT}") from None
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_release.restype = None
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    )
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_arch_native.argtypes = ()
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    return lib


def syscall_number(name: str) -> int | None:
    """The native number of the call ``name``, or None when this architecture lacks it.

    Raises SeccompError when libseccomp is missing.
    """
    number: int = libseccomp().seccomp_syscall_resolve_name(name.encode("ascii"))
    return number if number >= 0 else None


def _compile(policy: SyscallPolicy) -> bytes:
    lib = libseccomp()
    ctx = lib.seccomp_init(ACT_ALLOW)
    if not ctx:
        raise SeccompError("libseccomp could not make a filter (seccomp_init failed)")
    try:
        _check(lib.seccomp_attr_set(ctx, _ATTR_ACT_BADARCH, action_errno(errno.ENOSYS)), "badarch")
        _check(lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0), "nnp")  # set by load_filter
        for action, name, cmps in _rules(policy, lib.seccomp_arch_native()):
            number = syscall_number(name)
            if number is None:
                continue
            array = (_ArgCmp * len(cmps))(*(_ArgCmp(*c) for c in cmps))
            _check(lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array), name)
        fd = os.memfd_create("ccc-seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "export")
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def _rules(
    policy: SyscallPolicy, arch: int
) -> Iterator[tuple[int, str, tuple[tuple[int, int, int, int], ...]]]:
    """(action, call, comparisons) for every rule of ``policy``."""
    eperm, enosys = action_errno(errno.EPERM), action_errno(errno.ENOSYS)
    for name in policy.denied:
        yield eperm, name, ()
    for name in policy.unsupported:
        yield enosys, name, ()
    if policy.namespace_clones:
        flags_arg = 1 if arch & 0xFFFF == _ARCH_S390 else 0
        # One rule per flag: libseccomp compares an argument once per rule.
        for flag in NAMESPACE_FLAGS:
            yield eperm, "clone", ((flags_arg, CMP_MASKED_EQ, flag, flag),)
    if policy.personality_query_only:
        yield eperm, "personality", ((0, CMP_NE, PERSONALITY_QUERY, 0),)
    for request in policy.denied_ioctls:
        # The kernel reads the request as 32 bits; so does the comparison.
        yield eperm, "ioctl", ((1, CMP_MASKED_EQ, 0xFFFFFFFF, request),)
    if policy.socket_family is not None and not policy.tcp:
        yield eperm, "socket", ((0, CMP_NE, policy.socket_family, 0),)
    elif policy.socket_family is not None:
        yield from _tcp_socket_rules(policy.socket_family, eperm)


def _tcp_socket_rules(
    family: int, eperm: int
) -> Iterator[tuple[int, str, tuple[tuple[int, int, int, int], ...]]]:
    """socket() refused but for ``family`` and TCP over IPv4/IPv6.

    A rule compares each argument once and its comparisons must all hold, so
    "none of these families" is one rule per refused family, and "any type but
    SOCK_STREAM" one per other type.
    """
    allowed = {family, AF_INET, AF_INET6}
    for other in range(max(allowed) + 1):
        if other not in allowed:
            yield eperm, "socket", ((0, CMP_EQ, other, 0),)
    yield eperm, "socket", ((0, CMP_GT, max(allowed), 0),)
    for inet in (AF_INET, AF_INET6):
        for kind in range(SOCK_TYPE_MASK + 1):
            if kind != SOCK_STREAM:
                yield (
                    eperm,
                    "socket",
                    ((0, CMP_EQ, inet, 0), (1, CMP_MASKED_EQ, SOCK_TYPE_MASK, kind)),
                )
        for protocol in range(1, IPPROTO_TCP):
            yield eperm, "socket", ((0, CMP_EQ, inet, 0), (2, CMP_EQ, protocol, 0))
        yield eperm, "socket", ((0, CMP_EQ, inet, 0), (2, CMP_GT, IPPROTO_TCP, 0))


def _check(result: int, what: str) -> None:
    if result < 0:
        raise SeccompError(f"libseccomp refused the filter ({what}): {os.strerror(-result)}")
