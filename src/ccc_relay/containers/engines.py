"""The podman and docker command lines for a sandbox spec.

Both engines get the same isolation options and the same three mounts
(project, the socket or the agent's socket directory, credential). podman
lays the host's ``/usr`` and named ``/etc`` files over an empty root skeleton
(``staging.prepare_podman_rootfs``); docker takes them from the image.
Everything here is pure (a spec in, an argv out), so the output is compared
byte for byte with golden files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ccc_relay.containers.spec import (
    DEFAULT_COMMAND,
    ETC_FILES,
    SANDBOX_CCC,
    SANDBOX_CREDENTIAL,
    SANDBOX_DIR_SOCKET,
    SANDBOX_SOCKET,
    SANDBOX_SOCKET_DIR,
    SANDBOX_WORKSPACE,
    SandboxSpec,
    SandboxSpecError,
)

# The podman/docker network that `--network egress` joins; `ccc firewall`
# guards its bridge (created with the interface name firewall.DEFAULT_BRIDGE).
EGRESS_NETWORK = "ccc-egress"
# Podman's default ulimits can exceed a host's hard limits, and then the
# container fails to start; it is given these instead, each capped at the
# host's hard limit (detect.capped_ulimits).
PODMAN_NOFILE = 20000
PODMAN_NPROC = 32768
# Podman writes its own /etc/hosts (and hostname, resolv.conf) into a container.
_PODMAN_MANAGED_ETC = frozenset({"/etc/hosts"})


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
    if spec.ccc_path is not None:
        argv += _bind(
            str(spec.ccc_path), SANDBOX_CCC, target_key="destination", ro="ro=true", readonly=True
        )
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
    # The sandbox's own /tmp, not a host temporary file; /dev/shm capped as well.
    argv += ["--tmpfs", f"/tmp:rw,nosuid,nodev,size={spec.tmp_size},mode=1777"]  # noqa: S108
    argv += ["--shm-size", str(spec.shm_size)]
    return argv


def _engine_mounts(spec: SandboxSpec, *, target_key: str, ro: str) -> list[str]:
    # --mount, unlike -v, fails on a missing source instead of creating a
    # directory there (a missing socket must not turn into a directory).
    return [
        *_bind(str(spec.project_dir), SANDBOX_WORKSPACE, target_key=target_key, ro=ro),
        *_socket_bind(spec, target_key=target_key, ro=ro),
        *_bind(
            str(spec.credential_path),
            SANDBOX_CREDENTIAL,
            target_key=target_key,
            ro=ro,
            readonly=True,
        ),
    ]


def _socket_bind(spec: SandboxSpec, *, target_key: str, ro: str) -> list[str]:
    if spec.socket_dir:
        # The agent's own socket's directory, read-only: it shows the socket a
        # restarted relay binds there anew. /run/ccc.sock is podman's root
        # skeleton's link into it; docker's CCC_SOCKET names the socket in it.
        return _bind(
            str(spec.socket_path.parent),
            SANDBOX_SOCKET_DIR,
            target_key=target_key,
            ro=ro,
            readonly=True,
        )
    # The shared socket file. podman's skeleton has /run/ccc.sock as a link to
    # the place it is mounted on; docker has no such link.
    target = SANDBOX_DIR_SOCKET if spec.runtime == "podman" else SANDBOX_SOCKET
    return _bind(str(spec.socket_path), target, target_key=target_key, ro=ro)


def _bind(
    source: str, target: str, *, target_key: str, ro: str, readonly: bool = False
) -> list[str]:
    option = f"type=bind,source={source},{target_key}={target}"
    return ["--mount", f"{option},{ro}" if readonly else option]
