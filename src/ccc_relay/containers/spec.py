"""What an agent's sandbox may see and do: one frozen spec, checked before any command line.

The rule this module owns: a sandbox sees its own project read-write at
``/workspace``, the relay socket at ``/run/ccc.sock`` (an agent's own socket
through its directory, mounted read-only at ``/run/ccc-relay``), its own credential
read-only at ``/run/ccc/credential``, a read-only ``/usr`` with the few ``/etc``
files programs need, and a private ``/tmp`` and ``/dev/shm`` (memory, size-capped) --
nothing else of the host. It runs
as a non-root uid with no capabilities, no new privileges, its own pid, ipc,
uts and network namespaces, and a clean environment.

The paths, mounts and environment named here are shared by every runtime's
command line (``bwrap``, ``engines``); a spec that no runtime could honour
safely is refused when it is made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ccc_relay.policy.config_types import AGENT_SOCKET_NAME
from ccc_relay.protocol.names import agent_name_problem

SANDBOX_WORKSPACE = "/workspace"
SANDBOX_SOCKET = "/run/ccc.sock"
# An agent's own socket comes with its directory, which holds nothing else:
# a directory mount shows the socket the relay binds anew after a restart,
# where a mounted socket file keeps the dead inode. /run/ccc.sock is then a
# link to the socket in it (docker, which takes / from the image, gets no link:
# CCC_SOCKET names the socket in the directory).
SANDBOX_SOCKET_DIR = "/run/ccc-relay"
SANDBOX_DIR_SOCKET = f"{SANDBOX_SOCKET_DIR}/{AGENT_SOCKET_NAME}"
SANDBOX_CREDENTIAL = "/run/ccc/credential"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# With --sandbox-ccc the named ccc is bound here, and this directory leads PATH.
SANDBOX_CCC_DIR = "/run/ccc-bin"
SANDBOX_CCC = f"{SANDBOX_CCC_DIR}/ccc"
DEFAULT_COMMAND = ("bash",)

RUNTIMES = ("bwrap", "podman", "docker")
NETWORKS = ("none", "egress")

DEFAULT_MEMORY_LIMIT = 4 * 1024**3  # room for an agent plus a compiler, not for a runaway
DEFAULT_PIDS_LIMIT = 4096  # a parallel build fits; a fork bomb stops here
DEFAULT_TMP_SIZE = 1024**3  # /tmp is memory-backed; cap it so it cannot eat the host's RAM
DEFAULT_SHM_SIZE = 64 * 1024**2  # /dev/shm likewise (docker's and podman's default)

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
    shm_size: int = DEFAULT_SHM_SIZE  # /dev/shm
    runtime: str = "bwrap"
    image: str | None = None  # docker only
    env: tuple[tuple[str, str], ...] = ()  # extra variables, e.g. TERM
    new_session: bool = True  # bwrap: detach from the terminal (TIOCSTI)
    tty: bool = False  # podman/docker: allocate a terminal
    # socket_path (named AGENT_SOCKET_NAME) is alone in its directory, which is
    # mounted instead of the socket: the agent's own socket.
    socket_dir: bool = False
    # A host ccc to run inside instead of the one on the sandbox's PATH (bwrap,
    # podman): bound read-only at SANDBOX_CCC, whose directory leads PATH.
    ccc_path: Path | None = None

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
        if self.ccc_path is not None:
            if not self.ccc_path.is_absolute():
                raise SandboxSpecError(f"the ccc path {str(self.ccc_path)!r} must be absolute")
            if self.runtime == "docker":
                raise SandboxSpecError(
                    "docker takes ccc from the image: install it there instead of "
                    "passing --sandbox-ccc"
                )
            if _ENGINE_UNSAFE_PATH.search(str(self.ccc_path)):
                raise SandboxSpecError(
                    f"the ccc path {str(self.ccc_path)!r} contains ',' or ':'; use another path"
                )
        if self.socket_dir and self.socket_path.name != AGENT_SOCKET_NAME:
            raise SandboxSpecError(
                f"an agent's own socket is named {AGENT_SOCKET_NAME} in a directory of "
                f"its own, not {str(self.socket_path)!r}"
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
            ("shm size", self.shm_size),
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

    @property
    def sandbox_socket(self) -> str:
        """The path agents inside use for the relay (CCC_SOCKET)."""
        if self.socket_dir and self.runtime == "docker":
            return SANDBOX_DIR_SOCKET
        return SANDBOX_SOCKET

    def environment(self) -> list[tuple[str, str]]:
        """The sandbox's whole environment, in a stable order."""
        path = SANDBOX_PATH if self.ccc_path is None else f"{SANDBOX_CCC_DIR}:{SANDBOX_PATH}"
        base = [
            ("PATH", path),
            ("HOME", SANDBOX_WORKSPACE),
            ("LANG", "C.UTF-8"),
            ("CCC_AGENT", self.agent),
            ("CCC_SOCKET", self.sandbox_socket),
            ("CCC_CREDENTIAL", SANDBOX_CREDENTIAL),
        ]
        return base + list(self.env)
