"""Starting an agent's sandbox: the whole command line for its runtime, then running it.

``launch_command`` picks the runtime's builder (``bwrap`` or ``engines``)
and, for bubblewrap, the prefixes that drop privileges and set limits; it is
pure, and ``print_line`` shows its result as ``ccc run --print`` does.
``run_sandbox``, ``exec_sandbox`` and ``run_in_terminal`` (on a pty of its
own) open the credential and seccomp descriptors that bubblewrap reads and
pass on only the environment the runtime tools need.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from ccc_relay.containers.bwrap import (
    CREDENTIAL_FD,
    SECCOMP_FD,
    bwrap_command,
    bwrap_limits_prefix,
    setpriv_prefix,
)
from ccc_relay.containers.engine_errors import explain_engine_failure
from ccc_relay.containers.engines import (
    PODMAN_NOFILE,
    PODMAN_NPROC,
    docker_command,
    podman_command,
)
from ccc_relay.containers.seccomp import SeccompError, sandbox_filter_fd
from ccc_relay.containers.spec import ETC_FILES, SandboxSpec, SandboxSpecError
from ccc_relay.containers.staging import LaunchError, open_credential
from ccc_relay.containers.terminal import TerminalError, run_in_pty


def launch_command(
    spec: SandboxSpec,
    *,
    as_root: bool,
    rootfs_dir: Path | None = None,
    credential_fd: int = CREDENTIAL_FD,
    seccomp_fd: int = SECCOMP_FD,
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
            *bwrap_command(spec, credential_fd=credential_fd, seccomp_fd=seccomp_fd),
        ]
    if spec.runtime == "podman":
        if rootfs_dir is None:
            raise SandboxSpecError("podman needs a root skeleton directory (rootfs_dir)")
        nofile, nproc = ulimits
        return podman_command(
            spec, rootfs_dir, etc_files=etc_files, nofile=nofile, nproc=nproc, rootless=not as_root
        )
    return docker_command(spec)


def shell_line(
    argv: Sequence[str],
    *,
    fd_files: Mapping[int, Path] | None = None,
    fd_commands: Mapping[int, Sequence[str]] | None = None,
) -> str:
    """``argv`` as one shell-quoted line, with ``N< FILE`` for descriptors it reads
    from files and ``N< <(COMMAND)`` (bash) for those it reads from a command's output."""
    line = shlex.join(argv)
    for fd, path in sorted((fd_files or {}).items()):
        line += f" {fd}< {shlex.quote(str(path))}"
    for fd, command in sorted((fd_commands or {}).items()):
        line += f" {fd}< <({shlex.join(command)})"
    return line


def seccomp_command() -> list[str]:
    """The command that writes the sandbox's seccomp program to standard output."""
    return [sys.executable, "-m", "ccc_relay.containers.seccomp"]


def print_line(spec: SandboxSpec, argv: Sequence[str]) -> str:
    """What ``ccc run --print`` shows for ``argv``: runnable as it stands in bash."""
    if spec.runtime != "bwrap":
        return shell_line(argv)
    return shell_line(
        argv,
        fd_files={CREDENTIAL_FD: spec.credential_path},
        fd_commands={SECCOMP_FD: seccomp_command()},
    )


# --- touching the host ---------------------------------------------------------


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
    fds: list[int] = []
    try:
        if spec.runtime == "bwrap":
            fds.append(open_credential(spec.credential_path))
            fds.append(_seccomp_fd())
        argv = launch_command(
            spec,
            as_root=as_root,
            rootfs_dir=rootfs_dir,
            credential_fd=fds[0] if fds else CREDENTIAL_FD,
            seccomp_fd=fds[1] if fds else SECCOMP_FD,
        )
        return subprocess.run(
            argv,
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
            pass_fds=tuple(fds),
            env=_launcher_env(),
        )
    finally:
        for fd in fds:
            os.close(fd)


def exec_sandbox(spec: SandboxSpec, argv: Sequence[str]) -> NoReturn:
    """Replace this process with ``argv`` (built with CREDENTIAL_FD and SECCOMP_FD),
    so signals reach it.

    Raises LaunchError when the credential cannot be opened, the seccomp
    program not made, or ``argv[0]`` not run.
    """
    if spec.runtime == "bwrap":
        _install_fd(open_credential(spec.credential_path), CREDENTIAL_FD)
        _install_fd(_seccomp_fd(), SECCOMP_FD)
    try:
        os.execvpe(argv[0], list(argv), _launcher_env())  # noqa: S606 -- a validated argv
    except OSError as exc:
        raise LaunchError(f"cannot run {argv[0]}: {exc.strerror}") from None


def run_in_terminal(spec: SandboxSpec, *, as_root: bool) -> int:
    """Run a bubblewrap ``spec`` on a pseudo-terminal of its own, relayed to this
    process's terminal (see ``containers.terminal``); returns its exit status.

    The sandbox's session is the pty's, so bubblewrap's ``--new-session`` (which
    would leave it without a terminal, hence without job control) is not needed:
    TIOCSTI inside reaches only that pty. Raises LaunchError.
    """
    spec = replace(spec, new_session=False)
    fds = [open_credential(spec.credential_path)]
    try:
        fds.append(_seccomp_fd())
        argv = launch_command(spec, as_root=as_root, credential_fd=fds[0], seccomp_fd=fds[1])
        return run_in_pty(argv, env=_launcher_env(), pass_fds=fds)
    except TerminalError as exc:
        raise LaunchError(str(exc)) from None
    finally:
        for fd in fds:
            os.close(fd)


def _install_fd(fd: int, target: int) -> None:
    if fd != target:
        os.dup2(fd, target)  # the copy is inheritable; the original is not
        os.close(fd)
    else:
        os.set_inheritable(fd, True)


def _seccomp_fd() -> int:
    try:
        return sandbox_filter_fd()
    except (SeccompError, OSError) as exc:
        raise LaunchError(f"cannot make the sandbox's seccomp filter: {exc}") from None


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


# How long an engine's own output is held back: its start-up failures come in
# this time, so the user's-words sentence can come first and its text after.
ENGINE_HOLD_SECONDS = 3.0
MAX_ENGINE_TEXT = 16 * 1024  # of the engine's stderr kept to explain a failure


def run_engine(spec: SandboxSpec, argv: Sequence[str]) -> tuple[int, str | None, str]:
    """Run a podman or docker ``argv`` in the foreground: stdin and stdout pass through,
    stderr is held for the first seconds, then passed through.

    Returns (exit code, the failure in the user's words or None, the engine's
    own text when it was held back). SIGTERM and SIGHUP are passed on.
    Raises LaunchError when ``argv[0]`` cannot be run.
    """
    try:
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=_launcher_env())
    except OSError as exc:
        raise LaunchError(f"cannot run {argv[0]}: {exc.strerror}") from None
    assert proc.stderr is not None
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
        for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    held = bytearray()
    kept = bytearray()
    released = False
    deadline = time.monotonic() + ENGINE_HOLD_SECONDS
    try:
        fd = proc.stderr.fileno()
        while True:
            wait = None if released else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                released = True
                _write_stderr(bytes(held))
                held.clear()
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            kept += chunk
            del kept[:-MAX_ENGINE_TEXT]
            if released:
                _write_stderr(chunk)
            else:
                held += chunk
        returncode = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        proc.stderr.close()
    text = kept.decode(errors="replace")
    explained = explain_engine_failure(spec.runtime, returncode, text, spec)
    if explained is None and held:
        _write_stderr(bytes(held))  # the agent's own, or a failure with nothing to add
        held.clear()
    return returncode, explained, held.decode(errors="replace")


def _write_stderr(data: bytes) -> None:
    if data:
        sys.stderr.flush()
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()
