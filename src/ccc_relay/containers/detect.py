"""What the launcher learns from the host: which runtime, which ids, which limits.

The rule this module owns: a sandbox never runs as root. A root launcher
runs it as ``--uid`` or else as the project directory's owner, and refuses
when that owner is root; a non-root launcher runs it as itself. Everything
here reads the host; the command lines themselves are built in ``bwrap`` and
``engines``.
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
import shutil
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccc_relay.containers.engines import PODMAN_NOFILE, PODMAN_NPROC
from ccc_relay.containers.spec import ETC_FILES, RUNTIMES

# The programs each runtime needs, in the order they are looked for, and how to get them.
_TOOLS: dict[str, tuple[tuple[str, str], ...]] = {
    "bwrap": (("bwrap", "apt-get install bubblewrap"), ("prlimit", "apt-get install util-linux")),
    "podman": (("podman", "apt-get install podman"), ("runc", "apt-get install runc")),
    "docker": (("docker", "install Docker Engine (Debian: apt-get install docker.io)"),),
}
_RUNTIME_HINTS = {
    "bwrap": "bubblewrap (apt-get install bubblewrap)",
    "podman": "podman and runc (apt-get install podman runc)",
    "docker": "Docker Engine (apt-get install docker.io)",
}
# Only a root launcher changes uid before starting bubblewrap.
_ROOT_TOOLS = {"bwrap": (("setpriv", "apt-get install util-linux"),)}
_TIOCSTI_SYSCTL = Path("/proc/sys/dev/tty/legacy_tiocsti")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class HostError(RuntimeError):
    """The host lacks something the sandbox needs; the message says how to get it."""


class IdentityError(HostError):
    """The ids asked for (or implied by the project) cannot be used: a usage problem."""


def missing_tools(
    runtime: str, *, as_root: bool, which: Callable[[str], str | None] = shutil.which
) -> list[str]:
    """Install hints for the programs ``runtime`` needs that are not on PATH."""
    tools = _TOOLS[runtime] + (_ROOT_TOOLS.get(runtime, ()) if as_root else ())
    return [f"{name} ({hint})" for name, hint in tools if which(name) is None]


def detect_runtime(
    requested: str | None,
    *,
    as_root: bool,
    candidates: Sequence[str] = RUNTIMES,
    which: Callable[[str], str | None] = shutil.which,
) -> str:
    """``requested`` if its tools are installed, else the first usable of ``candidates``.

    Raises HostError naming what to install.
    """
    if requested is not None:
        if requested not in RUNTIMES:
            raise HostError(f"unknown runtime {requested!r} (one of {', '.join(RUNTIMES)})")
        missing = missing_tools(requested, as_root=as_root, which=which)
        if missing:
            raise HostError(f"runtime {requested} is not usable; missing: {'; '.join(missing)}")
        return requested
    for runtime in candidates:
        if not missing_tools(runtime, as_root=as_root, which=which):
            return runtime
    wanted = " or ".join(_RUNTIME_HINTS[c] for c in candidates)
    raise HostError(f"no usable sandbox runtime found; install {wanted}")


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int
    extra_gids: tuple[int, ...] = ()


def choose_identity(
    *,
    euid: int,
    project: os.stat_result,
    uid: int | None = None,
    gid: int | None = None,
    groups: Sequence[int] = (),
    socket: os.stat_result | None = None,
    primary_gid: Callable[[int], int | None] | None = None,
    current: tuple[int, int] | None = None,
) -> Identity:
    """The host ids the sandbox runs with.

    As root: ``uid`` or the project's owner; ``gid`` or that uid's primary
    group from passwd, else the same number as the uid; plus ``groups`` and,
    when the socket is group read-write, the socket's group -- the launcher is
    mounting that socket on purpose, so the sandbox may connect to it.
    Not as root: the caller's own ids (``current``, default getuid/getgid).

    Raises HostError for root ids or for asking a non-root launcher for other ids.
    """
    if euid != 0:
        mine = current if current is not None else (os.getuid(), os.getgid())
        if (uid not in (None, mine[0])) or (gid not in (None, mine[1])) or groups:
            raise IdentityError(
                "only root can choose the sandbox's uid, gid or groups; as a normal "
                "user the sandbox runs as you"
            )
        if mine[0] == 0:
            raise IdentityError("refusing to run a sandbox as uid 0")
        return Identity(*mine)
    if uid is None:
        uid = project.st_uid
        if uid == 0:
            raise IdentityError(
                "the project directory is owned by root, so there is no user to run the "
                "sandbox as: give the agent a user of its own that owns its project, "
                "outside /root (docs/containers.md, the as-root recipe), or pass --uid"
            )
    if uid <= 0:
        raise IdentityError("refusing to run a sandbox as uid 0: pass a non-root --uid")
    if gid is None:
        lookup = primary_gid if primary_gid is not None else _passwd_gid
        found = lookup(uid)
        gid = found if found else uid
    if gid <= 0:
        raise IdentityError("refusing to run a sandbox with group 0: pass a non-root --gid")
    extra = [g for g in groups if g != gid]
    if any(g <= 0 for g in extra):
        raise IdentityError("refusing to give the sandbox group 0")
    if socket is not None and socket.st_uid != uid and socket.st_gid not in (0, gid):
        if socket.st_mode & 0o060 == 0o060:
            extra.append(socket.st_gid)
    return Identity(uid, gid, tuple(dict.fromkeys(extra)))


def group_id(text: str) -> int:
    """A group given as a name or a number. Raises HostError for an unknown name."""
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise IdentityError(f"no group named {text!r} on this host") from None


def _passwd_gid(uid: int) -> int | None:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return None


def access_problem(path: Path, ident: Identity, want: int, *, traverse: bool) -> str | None:
    """Why ``ident`` cannot use ``path`` by its mode bits, or None when it can.

    ``want`` is a mask of 4 (read), 2 (write), 1 (search/execute). With
    ``traverse``, every directory on the way needs search permission too (a
    bwrap started as that uid walks the path itself; a container engine
    running as root does not). ACLs are not modelled: a path carrying one is
    given the benefit of the doubt.
    """
    found = blocking_step(path, ident, want, traverse=traverse)
    return found[1] if found else None


def blocking_step(
    path: Path, ident: Identity, want: int, *, traverse: bool
) -> tuple[Path, str] | None:
    """Like ``access_problem``, with the path that is in the way: ``path`` itself or,
    with ``traverse``, one of its parents."""
    gids = {ident.gid, *ident.extra_gids}
    steps = [(parent, 1) for parent in reversed(path.parents)] if traverse else []
    for step, need in [*steps, (path, want)]:
        try:
            info = step.stat()
        except OSError as exc:
            return step, f"{step}: {exc.strerror}"
        if _has_acl(step):
            continue
        if info.st_uid == ident.uid:
            bits = (info.st_mode >> 6) & 7
        elif info.st_gid in gids:
            bits = (info.st_mode >> 3) & 7
        else:
            bits = info.st_mode & 7
        if bits & need != need:
            kind = "search" if need == 1 and step != path else _wanted(need)
            return step, (
                f"uid {ident.uid} (groups {', '.join(map(str, sorted(gids)))}) has no {kind} "
                f"permission on {step} ({stat.filemode(info.st_mode)} "
                f"{info.st_uid}:{info.st_gid})"
            )
    return None


def _wanted(mask: int) -> str:
    return "+".join(name for bit, name in ((4, "read"), (2, "write"), (1, "search")) if mask & bit)


def _has_acl(path: Path) -> bool:
    try:
        return "system.posix_acl_access" in os.listxattr(path)
    except OSError:
        return False


def capped_ulimits() -> tuple[int, int]:
    """Podman's (nofile, nproc), each at or under this host's hard limit."""
    return (
        _capped(resource.RLIMIT_NOFILE, PODMAN_NOFILE),
        _capped(resource.RLIMIT_NPROC, PODMAN_NPROC),
    )


def _capped(which: int, wanted: int) -> int:
    _soft, hard = resource.getrlimit(which)
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def present_etc_files(candidates: Iterable[str] = ETC_FILES) -> tuple[str, ...]:
    """The ones of ``candidates`` this host has (podman fails on a missing bind source)."""
    return tuple(path for path in candidates if os.path.exists(path))


def needs_new_session() -> bool:
    """Whether a bwrap sandbox must leave the launcher's terminal session.

    Anything in the session can open /dev/tty and push keystrokes into the
    host shell with TIOCSTI, unless the kernel refuses that
    (dev.tty.legacy_tiocsti = 0). Staying in the session keeps resize signals
    and job control, so it is allowed only when it is safe.
    """
    try:
        return _TIOCSTI_SYSCTL.read_text().strip() != "0"
    except OSError:
        return True  # a kernel without the switch allows TIOCSTI


def cgroup_version(root: Path = CGROUP_ROOT) -> int:
    """2 on a unified (cgroups v2) hierarchy, else 1. Raises nothing."""
    return 2 if (root / "cgroup.controllers").exists() else 1


def limits_problem(runtime: str, *, as_root: bool, cgroup: int | None = None) -> str | None:
    """Why ``runtime`` would start a sandbox without its memory and process limits,
    or None when it applies them. Raises nothing.

    Rootless podman needs cgroups v2 to set limits; on v1 it only warns
    ("Resource limits are not supported and ignored on cgroups V1 rootless
    systems") and starts the container unlimited.
    """
    if runtime != "podman" or as_root:
        return None
    if (cgroup if cgroup is not None else cgroup_version()) != 1:
        return None
    return (
        "rootless podman cannot apply --memory and --pids on this host: it has cgroups v1, "
        "where podman ignores them for a normal user"
    )


LIMITS_NEXT_STEP = (
    "run ccc run as root (root's podman applies them), or use --runtime bwrap (per-process "
    "limits), or move the host to cgroups v2 (boot with systemd.unified_cgroup_hierarchy=1); "
    "or pass --no-limits to start without memory and process limits"
)
