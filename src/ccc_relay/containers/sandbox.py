"""What an agent's sandbox may see and do: the spec and its command line for each runtime.

The rule this module owns: a sandbox sees its own project read-write at
``/workspace``, the relay socket at ``/run/ccc.sock``, its own credential
read-only at ``/run/ccc/credential``, a read-only ``/usr`` with the few ``/etc``
files programs need, and a private ``/tmp`` -- nothing else of the host. It runs
as a non-root uid with no capabilities, no new privileges, its own pid, ipc,
uts and network namespaces, and a clean environment.

The builders are pure (a spec in, an argv out) so their output is compared
byte for byte with golden files; everything that touches the host (opening the
credential, the podman root skeleton, running) sits in the last section.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ccc_relay.credentials import MAX_CREDENTIAL_FILE
from ccc_relay.protocol.names import agent_name_problem

SANDBOX_WORKSPACE = "/workspace"
SANDBOX_SOCKET = "/run/ccc.sock"
SANDBOX_CREDENTIAL = "/run/ccc/credential"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_COMMAND = ("bash",)

RUNTIMES = ("bwrap", "podman", "docker")
NETWORKS = ("none", "egress")
# The podman/docker network that `--network egress` joins; `ccc firewall`
# guards its bridge (created with the interface name firewall.DEFAULT_BRIDGE).
EGRESS_NETWORK = "ccc-egress"

# bubblewrap reads the credential from this descriptor and writes it into the
# sandbox as a file owned by the sandbox uid, so the relay's 0700 credentials
# directory never has to be reachable by that uid.
CREDENTIAL_FD = 3

DEFAULT_MEMORY_LIMIT = 4 * 1024**3  # room for an agent plus a compiler, not for a runaway
DEFAULT_PIDS_LIMIT = 4096  # a parallel build fits; a fork bomb stops here
DEFAULT_TMP_SIZE = 1024**3  # /tmp is memory-backed; cap it so it cannot eat the host's RAM
# Podman's default ulimits can exceed a host's hard limits, and then the
# container fails to start; it is given these instead, each capped at the
# host's hard limit (detect.capped_ulimits).
PODMAN_NOFILE = 20000
PODMAN_NPROC = 32768

# The minimum of /etc that lets programs run: users and groups for `id` and
# os.userInfo(), name service and loader caches, localhost, time zone, the
# /usr/bin -> /etc/alternatives links, and TLS roots. Never the whole of /etc:
# it holds host secrets (ssh keys, shadow, machine credentials).
ETC_FILES = (
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/ld.so.cache",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/localtime",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
)
# Podman writes its own /etc/hosts (and hostname, resolv.conf) into a container.
_PODMAN_MANAGED_ETC = frozenset({"/etc/hosts"})
# Merged-/usr systems keep /bin, /lib ... as links into /usr.
USR_LINKS = (
    ("usr/bin", "/bin"),
    ("usr/sbin", "/sbin"),
    ("usr/lib", "/lib"),
    ("usr/lib64", "/lib64"),
)

# What the sandbox environment always holds; --env may not replace these.
RESERVED_ENV = frozenset({"CCC_SOCKET", "CCC_CREDENTIAL", "CCC_AGENT", "HOME"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# podman/docker split mount specs at ',' (and -v at ':'); such paths cannot be
# expressed safely, so they are refused rather than mis-parsed.
_ENGINE_UNSAFE_PATH = re.compile(r"[,:\n\x00]")
MAX_HOSTNAME = 63


class SandboxSpecError(ValueError):
    """A sandbox that must not be started; the message says what to change."""


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """One agent's sandbox. Host paths are absolute; ids are host ids, never 0."""

    agent: str
    project_dir: Path
    socket_path: Path  # the relay's socket, or this agent's own socket
    credential_path: Path
    uid: int
    gid: int
    extra_gids: tuple[int, ...] = ()
    network: str = "none"
    command: tuple[str, ...] = ()  # empty: DEFAULT_COMMAND (docker: the image's own)
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT  # bytes
    pids_limit: int | None = DEFAULT_PIDS_LIMIT
    tmp_size: int = DEFAULT_TMP_SIZE
    runtime: str = "bwrap"
    image: str | None = None  # docker only
    env: tuple[tuple[str, str], ...] = ()  # extra variables, e.g. TERM
    new_session: bool = True  # bwrap: detach from the terminal (TIOCSTI)
    tty: bool = False  # podman/docker: allocate a terminal

    def __post_init__(self) -> None:
        problem = agent_name_problem(self.agent)
        if problem:
            raise SandboxSpecError(f"agent {self.agent!r}: {problem}")
        for label, path in (
            ("project", self.project_dir),
            ("socket", self.socket_path),
            ("credential", self.credential_path),
        ):
            if not path.is_absolute():
                raise SandboxSpecError(f"the {label} path {str(path)!r} must be absolute")
            if self.runtime in ("podman", "docker") and _ENGINE_UNSAFE_PATH.search(str(path)):
                raise SandboxSpecError(
                    f"the {label} path {str(path)!r} contains ',' or ':', which "
                    f"{self.runtime} mount options cannot carry; use bwrap or another path"
                )
        for label, ident in (("uid", self.uid), ("gid", self.gid)):
            if ident <= 0:
                raise SandboxSpecError(f"the sandbox {label} must be a non-root id, not {ident}")
        if any(gid <= 0 for gid in self.extra_gids):
            raise SandboxSpecError("supplementary groups must be non-root group ids")
        if self.runtime not in RUNTIMES:
            raise SandboxSpecError(
                f"unknown runtime {self.runtime!r} (one of {', '.join(RUNTIMES)})"
            )
        if self.network not in NETWORKS:
            raise SandboxSpecError(
                f"unknown network {self.network!r} (one of {', '.join(NETWORKS)})"
            )
        if self.network == "egress" and self.runtime == "bwrap":
            raise SandboxSpecError(
                "bubblewrap can only share the host's whole network, which would reach "
                "private ranges; use --runtime podman or docker for --network egress"
            )
        if self.runtime == "docker" and not self.image:
            raise SandboxSpecError("docker needs an image: pass --image (or set CCC_IMAGE)")
        for label, limit in (
            ("memory limit", self.memory_limit),
            ("pids limit", self.pids_limit),
            ("tmp size", self.tmp_size),
        ):
            if limit is not None and limit <= 0:
                raise SandboxSpecError(f"the {label} must be positive, not {limit}")
        for name, value in self.env:
            if not _ENV_NAME.fullmatch(name) or "\x00" in value:
                raise SandboxSpecError(f"{name!r} is not a usable environment variable")
            if name in RESERVED_ENV:
                raise SandboxSpecError(f"{name} is set by the launcher and cannot be overridden")

    @property
    def hostname(self) -> str:
        return f"ccc-{self.agent}".replace("_", "-").replace(".", "-")[:MAX_HOSTNAME]

    @property
    def container_name(self) -> str:
        # One container per agent: a second `ccc run` of the same agent collides.
        return f"ccc-{self.agent}"

    def environment(self) -> list[tuple[str, str]]:
        """The sandbox's whole environment, in a stable order."""
        base = [
            ("PATH", SANDBOX_PATH),
            ("HOME", SANDBOX_WORKSPACE),
            ("LANG", "C.UTF-8"),
            ("CCC_AGENT", self.agent),
            ("CCC_SOCKET", SANDBOX_SOCKET),
            ("CCC_CREDENTIAL", SANDBOX_CREDENTIAL),
        ]
        return base + list(self.env)


# --- command lines (pure) ----------------------------------------------------


def bwrap_command(spec: SandboxSpec, *, credential_fd: int = CREDENTIAL_FD) -> list[str]:
    """The bubblewrap argv for ``spec``; run it as ``spec.uid`` (see ``launch_command``).

    The credential is read from ``credential_fd``, which the caller opens.
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
        "--perms",
        "1777",
        "--size",
        str(spec.tmp_size),
        "--tmpfs",
        "/tmp",  # noqa: S108
        "--bind",
        str(spec.project_dir),
        SANDBOX_WORKSPACE,
        # connect(2) needs write permission on the socket inode, which a
        # read-only mount does not take away; the agent cannot replace it.
        "--ro-bind",
        str(spec.socket_path),
        SANDBOX_SOCKET,
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
        "--",
        *(spec.command or DEFAULT_COMMAND),
    ]
    return argv


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


def podman_command(
    spec: SandboxSpec,
    rootfs_dir: Path,
    *,
    etc_files: Sequence[str] = ETC_FILES,
    nofile: int = PODMAN_NOFILE,
    nproc: int = PODMAN_NPROC,
    rootless: bool = False,
) -> list[str]:
    """The podman argv for ``spec`` with ``rootfs_dir`` (see ``prepare_podman_rootfs``) as root.

    ``etc_files`` are the host files to bind (only ones that exist: podman,
    unlike bwrap, fails on a missing source). ``nofile``/``nproc`` must not
    exceed the host's hard limits. ``rootless`` keeps the caller's uid inside
    the container so the relay sees it.
    """
    argv = ["podman", "--runtime", "runc", "run", *_engine_common(spec)]
    argv += ["--read-only-tmpfs=false", "--pid", "private", "--uts", "private"]
    if rootless:
        argv += ["--userns", "keep-id"]
    argv += ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]
    argv += _bind("/usr", "/usr", target_key="destination", ro="ro=true", readonly=True)
    for path in etc_files:
        if path not in _PODMAN_MANAGED_ETC:
            argv += _bind(path, path, readonly=True, target_key="destination", ro="ro=true")
    argv += _engine_mounts(spec, target_key="destination", ro="ro=true")
    for name, value in spec.environment():
        argv += ["--env", f"{name}={value}"]
    argv += ["--workdir", SANDBOX_WORKSPACE]
    # Podman takes no options after --rootfs: it and the command come last.
    argv += ["--rootfs", str(rootfs_dir), *(spec.command or DEFAULT_COMMAND)]
    return argv


def docker_command(spec: SandboxSpec) -> list[str]:
    """The docker argv for ``spec``; the image supplies /usr and /etc.

    Raises SandboxSpecError when ``spec.image`` is missing.
    """
    if not spec.image:
        raise SandboxSpecError("docker needs an image: pass --image (or set CCC_IMAGE)")
    argv = ["docker", "run", *_engine_common(spec)]
    argv += _engine_mounts(spec, target_key="target", ro="readonly")
    # The image's PATH is the one that fits the image, so it is kept.
    for name, value in spec.environment():
        if name != "PATH":
            argv += ["--env", f"{name}={value}"]
    argv += ["--workdir", SANDBOX_WORKSPACE, "--init", spec.image, *spec.command]
    return argv


def _engine_common(spec: SandboxSpec) -> list[str]:
    argv = ["--rm", "--interactive"]
    if spec.tty:
        argv.append("--tty")
    argv += [
        "--name",
        spec.container_name,
        "--label",
        f"ccc.agent={spec.agent}",
        "--hostname",
        spec.hostname,
        "--user",
        f"{spec.uid}:{spec.gid}",
    ]
    for gid in spec.extra_gids:
        argv += ["--group-add", str(gid)]
    network = "none" if spec.network == "none" else EGRESS_NETWORK
    argv += [
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--network",
        network,
        "--ipc",
        "private",
    ]
    if spec.memory_limit is not None:
        # Equal swap and memory limits: swap cannot stretch the memory limit.
        argv += ["--memory", str(spec.memory_limit), "--memory-swap", str(spec.memory_limit)]
    if spec.pids_limit is not None:
        argv += ["--pids-limit", str(spec.pids_limit)]
    # The sandbox's own /tmp, not a host temporary file.
    argv += ["--tmpfs", f"/tmp:rw,nosuid,nodev,size={spec.tmp_size},mode=1777"]  # noqa: S108
    return argv


def _engine_mounts(spec: SandboxSpec, *, target_key: str, ro: str) -> list[str]:
    # --mount, unlike -v, fails on a missing source instead of creating a
    # directory there (a missing socket must not turn into a directory).
    return [
        *_bind(str(spec.project_dir), SANDBOX_WORKSPACE, target_key=target_key, ro=ro),
        *_bind(str(spec.socket_path), SANDBOX_SOCKET, target_key=target_key, ro=ro),
        *_bind(
            str(spec.credential_path),
            SANDBOX_CREDENTIAL,
            target_key=target_key,
            ro=ro,
            readonly=True,
        ),
    ]


def _bind(
    source: str, target: str, *, target_key: str, ro: str, readonly: bool = False
) -> list[str]:
    option = f"type=bind,source={source},{target_key}={target}"
    return ["--mount", f"{option},{ro}" if readonly else option]


def launch_command(
    spec: SandboxSpec,
    *,
    as_root: bool,
    rootfs_dir: Path | None = None,
    credential_fd: int = CREDENTIAL_FD,
    etc_files: Sequence[str] = ETC_FILES,
    ulimits: tuple[int, int] = (PODMAN_NOFILE, PODMAN_NPROC),
) -> list[str]:
    """The whole argv that starts ``spec`` from a launcher running as root or not.

    Raises SandboxSpecError when podman is asked for without ``rootfs_dir``.
    """
    if spec.runtime == "bwrap":
        drop = setpriv_prefix(spec) if as_root else []
        return [
            *drop,
            *bwrap_limits_prefix(spec),
            *bwrap_command(spec, credential_fd=credential_fd),
        ]
    if spec.runtime == "podman":
        if rootfs_dir is None:
            raise SandboxSpecError("podman needs a root skeleton directory (rootfs_dir)")
        nofile, nproc = ulimits
        return podman_command(
            spec, rootfs_dir, etc_files=etc_files, nofile=nofile, nproc=nproc, rootless=not as_root
        )
    return docker_command(spec)


def shell_line(argv: Sequence[str], *, fd_files: Mapping[int, Path] | None = None) -> str:
    """``argv`` as one shell-quoted line, with ``N< FILE`` for descriptors it reads."""
    line = shlex.join(argv)
    for fd, path in sorted((fd_files or {}).items()):
        line += f" {fd}< {shlex.quote(str(path))}"
    return line


def print_line(spec: SandboxSpec, argv: Sequence[str]) -> str:
    """What ``ccc run --print`` shows for ``argv``: runnable as it stands in a shell."""
    fds = {CREDENTIAL_FD: spec.credential_path} if spec.runtime == "bwrap" else None
    return shell_line(argv, fd_files=fds)


# --- touching the host ---------------------------------------------------------


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

    It holds only directories, the /usr links and mount points; no host data.
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
        for path in (SANDBOX_SOCKET, SANDBOX_CREDENTIAL):
            (rootfs_dir / path.lstrip("/")).touch(exist_ok=True)
    except OSError as exc:
        raise LaunchError(f"cannot prepare the podman root {rootfs_dir}: {exc}") from None
    return rootfs_dir


def stage_credential(source: Path, staging_dir: Path, uid: int, gid: int) -> Path:
    """Copy the credential to a file only ``uid`` can read, for podman/docker to mount.

    The relay keeps credentials 0600 to itself; a container engine mounts the
    inode, so the container's uid needs a copy it owns. ``staging_dir`` must be
    private (see ``private_dir``); the engine, as root, need not walk into it.
    Raises LaunchError.
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
    except OSError as exc:
        raise LaunchError(f"cannot stage the credential in {staging_dir}: {exc}") from None
    return target


def run_sandbox(
    spec: SandboxSpec,
    *,
    as_root: bool | None = None,
    rootfs_dir: Path | None = None,
    input: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``spec`` to completion and capture its output (for tests and scripts).

    ``as_root`` defaults to whether this process is root. Raises LaunchError
    when the credential cannot be opened, subprocess.TimeoutExpired on timeout.
    """
    as_root = os.geteuid() == 0 if as_root is None else as_root
    fd = open_credential(spec.credential_path) if spec.runtime == "bwrap" else -1
    try:
        argv = launch_command(
            spec,
            as_root=as_root,
            rootfs_dir=rootfs_dir,
            credential_fd=fd if fd >= 0 else CREDENTIAL_FD,
        )
        return subprocess.run(
            argv,
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
            pass_fds=(fd,) if fd >= 0 else (),
            env=_launcher_env(),
        )
    finally:
        if fd >= 0:
            os.close(fd)


def exec_sandbox(spec: SandboxSpec, argv: Sequence[str]) -> NoReturn:
    """Replace this process with ``argv`` (built with CREDENTIAL_FD), so signals reach it.

    Raises LaunchError when the credential cannot be opened or ``argv[0]`` run.
    """
    if spec.runtime == "bwrap":
        fd = open_credential(spec.credential_path)
        if fd != CREDENTIAL_FD:
            os.dup2(fd, CREDENTIAL_FD)  # the copy is inheritable; the original is not
            os.close(fd)
        else:
            os.set_inheritable(fd, True)
    try:
        os.execvpe(argv[0], list(argv), _launcher_env())  # noqa: S606 -- a validated argv
    except OSError as exc:
        raise LaunchError(f"cannot run {argv[0]}: {exc.strerror}") from None


def _launcher_env() -> dict[str, str]:
    # The launcher tools need PATH (and podman/docker their own settings); the
    # sandbox itself starts from a cleared environment whatever this holds.
    keep = (
        "PATH",
        "LANG",
        "LC_ALL",
        "TERM",
        "XDG_RUNTIME_DIR",
        "DOCKER_HOST",
        "DOCKER_CONFIG",
        "CONTAINER_HOST",
        "CONTAINERS_CONF",
        "HOME",
    )
    return {name: os.environ[name] for name in keep if name in os.environ}
