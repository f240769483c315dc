"""The seccomp filter of a bubblewrap sandbox: what an agent never needs is refused.

The rule: bubblewrap loads this program (``--seccomp FD``) right before it
starts the agent's command, so everything in the sandbox runs under it.
Refused with EPERM: making or joining namespaces (``unshare``, ``setns``,
``clone`` with CLONE_NEW* flags), every mount call, tracing or reading other
processes (``ptrace``, ``process_vm_*``), the kernel keyring, ``bpf``,
``perf_event_open``, ``userfaultfd``, io_uring, modules, kexec, reboot, the
clock, personality changes (the query stays), and pushing input into a
terminal (``TIOCSTI``, ``TIOCLINUX``). Ordinary work -- shells, compilers,
interpreters, git, networking inside the sandbox's own namespace -- is untouched.

podman and docker keep their own default profiles (docs/containers.md).

``python -m ccc_relay.containers.seccomp`` writes the compiled program to
standard output, which is how ``ccc run --print``'s command line gets it.
"""

from __future__ import annotations

import functools
import os
import sys

from ccc_relay.daemon.seccomp import (
    KERNEL_SURFACE,
    NAMESPACES_AND_MOUNTS,
    OTHER_PROCESSES,
    SYSTEM_ADMINISTRATION,
    SeccompError,
    SyscallPolicy,
    compile_filter,
)

TIOCSTI = 0x5412  # push a byte into a terminal's input queue
TIOCLINUX = 0x541C  # its console twin (selection paste)

SANDBOX_POLICY = SyscallPolicy(
    denied=(*NAMESPACES_AND_MOUNTS, *OTHER_PROCESSES, *KERNEL_SURFACE, *SYSTEM_ADMINISTRATION),
    personality_query_only=True,
    denied_ioctls=(TIOCSTI, TIOCLINUX),
)

__all__ = ["SANDBOX_POLICY", "SeccompError", "sandbox_filter", "sandbox_filter_fd"]


@functools.cache
def sandbox_filter() -> bytes:
    """The compiled BPF program for sandboxes. Raises SeccompError."""
    return compile_filter(SANDBOX_POLICY)


def sandbox_filter_fd() -> int:
    """A descriptor to read the compiled program from (a memfd at offset 0, close-on-exec).

    The caller makes it inheritable (``pass_fds`` or ``dup2``) for bubblewrap.
    Raises SeccompError when libseccomp is missing, OSError when no memfd can be made.
    """
    program = sandbox_filter()
    fd = os.memfd_create("ccc-sandbox-seccomp", os.MFD_CLOEXEC)
    try:
        view = memoryview(program)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def main() -> int:
    try:
        program = sandbox_filter()
    except SeccompError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(program)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
