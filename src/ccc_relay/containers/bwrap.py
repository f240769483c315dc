"""The bubblewrap command line for a sandbox spec, and what stands in for what bubblewrap lacks.

Every writable memory-backed mount inside is size-capped (``/tmp``,
``/dev/shm``; bubblewrap's own ``/dev`` is made read-only), and the agent's
command runs under the seccomp program of ``containers.seccomp``.

bubblewrap has no cgroups and, started by root, would show up as uid 0 to the
relay; ``prlimit`` and ``setpriv`` prefixes make up for both. Everything here
is pure (a spec in, an argv out), so the output is compared byte for byte
with golden files.
"""

from __future__ import annotations

from ccc_relay.containers.spec import (
    DEFAULT_COMMAND,
    ETC_FILES,
    SANDBOX_CCC,
    SANDBOX_CREDENTIAL,
    SANDBOX_DIR_SOCKET,
    SANDBOX_SOCKET,
    SANDBOX_SOCKET_DIR,
    SANDBOX_WORKSPACE,
    USR_LINKS,
    SandboxSpec,
)

# bubblewrap reads the credential from this descriptor and writes it into the
# sandbox as a file owned by the sandbox uid, so the relay's 0700 credentials
# directory never has to be reachable by that uid.
CREDENTIAL_FD = 3
# ... and the compiled seccomp program (containers.seccomp) from this one.
SECCOMP_FD = 4


def bwrap_command(
    spec: SandboxSpec, *, credential_fd: int = CREDENTIAL_FD, seccomp_fd: int = SECCOMP_FD
) -> list[str]:
    """The bubblewrap argv for ``spec``; run it as ``spec.uid`` (see ``sandbox.launch_command``).

    The credential is read from ``credential_fd`` and the seccomp program
    from ``seccomp_fd``, which the caller opens.
    """
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"]
    if spec.new_session:
        argv.append("--new-session")
    argv += [
        "--uid",
        str(spec.uid),
        "--gid",
        str(spec.gid),
        "--hostname",
        spec.hostname,
        "--clearenv",
    ]
    for name, value in spec.environment():
        argv += ["--setenv", name, value]
    argv += ["--ro-bind", "/usr", "/usr"]
    for target, link in USR_LINKS:
        argv += ["--symlink", target, link]
    for path in ETC_FILES:
        argv += ["--ro-bind-try", path, path]
    argv += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        # bubblewrap's /dev is a tmpfs of the sandbox uid with no size limit:
        # /dev/shm gets a capped tmpfs of its own, the rest becomes read-only.
        "--perms",
        "1777",
        "--size",
        str(spec.shm_size),
        "--tmpfs",
        "/dev/shm",  # noqa: S108
        "--remount-ro",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(spec.tmp_size),
        "--tmpfs",
        "/tmp",  # noqa: S108
        "--bind",
        str(spec.project_dir),
        SANDBOX_WORKSPACE,
        *_socket_mounts(spec),
        *(["--ro-bind", str(spec.ccc_path), SANDBOX_CCC] if spec.ccc_path else []),
        "--perms",
        "0400",
        "--ro-bind-data",
        str(credential_fd),
        SANDBOX_CREDENTIAL,
        # Last: every mount point above is made, now nothing else may be.
        "--remount-ro",
        "/",
        "--chdir",
        SANDBOX_WORKSPACE,
        "--cap-drop",
        "ALL",
        "--seccomp",
        str(seccomp_fd),
        "--",
        *(spec.command or DEFAULT_COMMAND),
    ]
    return argv


def _socket_mounts(spec: SandboxSpec) -> list[str]:
    # connect(2) needs write permission on the socket inode, which a
    # read-only mount does not take away; the agent cannot replace it.
    if not spec.socket_dir:
        return ["--ro-bind", str(spec.socket_path), SANDBOX_SOCKET]
    # The agent's own socket: its directory, so a restarted relay's new socket
    # shows up inside, and the usual path as a link to it.
    return [
        "--ro-bind",
        str(spec.socket_path.parent),
        SANDBOX_SOCKET_DIR,
        "--symlink",
        SANDBOX_DIR_SOCKET,
        SANDBOX_SOCKET,
    ]


def bwrap_limits_prefix(spec: SandboxSpec) -> list[str]:
    """``prlimit`` options standing in for cgroup limits, which bubblewrap lacks.

    RLIMIT_NPROC counts every process of the uid on the host, so with one uid
    per agent it is a per-agent process cap. RLIMIT_DATA caps each process's
    private writable memory; it is per process, not a total (podman and docker
    enforce a real total through cgroups).
    """
    options = []
    if spec.pids_limit is not None:
        options.append(f"--nproc={spec.pids_limit}:{spec.pids_limit}")
    if spec.memory_limit is not None:
        options.append(f"--data={spec.memory_limit}:{spec.memory_limit}")
    return ["prlimit", *options, "--"] if options else []


def setpriv_prefix(spec: SandboxSpec) -> list[str]:
    """Become ``spec.uid`` before bubblewrap starts, so SO_PEERCRED shows that uid.

    A root-started bwrap with a user namespace shows up as uid 0 to the relay.
    ``--reuid`` clears the parent-death signal, so ``--pdeathsig`` must follow
    it: the sandbox dies with the process that launched it.
    """
    groups = (
        [f"--groups={','.join(str(g) for g in spec.extra_gids)}"]
        if spec.extra_gids
        else ["--clear-groups"]
    )
    return [
        "setpriv",
        f"--reuid={spec.uid}",
        f"--regid={spec.gid}",
        *groups,
        "--no-new-privs",
        "--pdeathsig=KILL",
        "--",
    ]
