"""``ccc run`` from a terminal: the sandbox gets a pseudo-terminal of its own.

A real ``ccc run`` (bubblewrap) is started on a real pty made here, as a user's
terminal would be, with an interactive bash inside. Job control works, Ctrl-C
interrupts the command inside and the shell goes on, a window resize reaches
the sandbox, the exit status comes back, the user's terminal settings come
back, and nothing inside holds -- or can push keystrokes into -- the user's
terminal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import select
import shlex
import shutil
import signal
import socket
import struct
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SANDBOX_UID = 4331
PYTHON = "/usr/bin/python3"


@pytest.fixture
def setup() -> Iterator[tuple[Path, Path]]:
    """A relay's state dir (config, credential, a listening socket) and a project."""
    missing = [t for t in ("bwrap", "prlimit", "setpriv") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    if not Path(PYTHON).exists() or not Path("/bin/bash").exists():
        pytest.skip("needs /usr/bin/python3 and bash inside the sandbox")
    base = Path(tempfile.mkdtemp(prefix="ccc-terminal-"))
    base.chmod(0o711)
    state, project = base / "state", base / "project"
    (state / "credentials").mkdir(parents=True)
    project.mkdir()
    state.chmod(0o711)
    credential = state / "credentials" / "alice.cred"
    credential.write_text("agent: alice\ncredential: ccc1.not-a-real-credential-but-long-xx\n")
    credential.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(project, SANDBOX_UID, SANDBOX_UID)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(state / "daemon.sock"))
    listener.listen()
    os.chmod(state / "daemon.sock", 0o666)
    config = base / "relay.yaml"
    config.write_text(f"daemon:\n  state_dir: {state}\n  per_agent_sockets: false\n")
    try:
        yield config, project
    finally:
        listener.close()
        shutil.rmtree(base)


class Terminal:
    """The user's side of a pty whose other side runs ``ccc run``."""

    def __init__(self, config: Path, project: Path, *command: str) -> None:
        program = "from ccc_relay.cli.containers_cmd import run; run.main()"
        argv = [sys.executable, "-c", program, "alice", "--project", str(project),
                "--runtime", "bwrap", "--config", str(config), "--no-ccc-check",
                "--", *command]  # fmt: skip
        env = {"PATH": os.environ["PATH"], "TERM": "xterm", "LANG": "C.UTF-8"}
        self.pid, self.fd = os.forkpty()
        if self.pid == 0:  # the child: ccc run, on the pty's slave as a shell would start it
            try:
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        self.seen = b""
        self.status: int | None = None

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def expect(self, pattern: bytes, timeout: float = 20) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.seen)
            if found:
                self.seen = self.seen[found.end() :]
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.seen[-2000:]!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError as exc:
                    assert exc.errno == errno.EIO
                    chunk = b""
                assert chunk, f"the terminal closed before {pattern!r}: {self.seen[-2000:]!r}"
                self.seen += chunk

    def wait(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if ready:
                    self.seen += os.read(self.fd, 65536)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"ccc run did not end: {self.seen[-2000:]!r}")

    def close(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def terminal(setup: tuple[Path, Path]) -> Iterator[Terminal]:
    config, project = setup
    term = Terminal(config, project, "bash", "--norc", "--noprofile", "-i")
    try:
        yield term
    finally:
        term.close()


PROMPT = rb"[$#] $"


def test_job_control_and_ctrl_c_work_inside_and_the_exit_status_comes_back(
    terminal: Terminal,
) -> None:
    before = termios.tcgetattr(terminal.fd)
    terminal.expect(PROMPT)
    assert b"no job control" not in terminal.seen
    terminal.write(b"sleep 30 &\n")
    terminal.expect(PROMPT)
    terminal.write(b"jobs; echo JOBS-$-\n")
    jobs = terminal.expect(rb"(?s)\[1\]\+ +Running +sleep 30 &.*JOBS-(\w+)", timeout=10)
    assert b"m" in jobs.group(1)  # set -m: monitor mode is on
    terminal.write(b"kill %1\n")
    terminal.expect(PROMPT)
    # Ctrl-C stops the command inside; the shell and ccc run go on.
    terminal.write(b"sleep 30\n")
    time.sleep(1.0)
    started = time.monotonic()
    terminal.write(b"\x03")
    terminal.expect(PROMPT, timeout=10)
    assert time.monotonic() - started < 10
    terminal.write(b"echo AFTER=$?\n")
    terminal.expect(rb"AFTER=130\r\n")  # sleep died of SIGINT; the shell is still here
    terminal.write(b"exit 7\n")
    assert terminal.wait() == 7
    # The user's terminal is as it was before (cooked, echoing), not left raw.
    after = termios.tcgetattr(terminal.fd)
    assert after[3] & termios.ICANON and after[3] & termios.ECHO
    assert after == before


def test_a_window_resize_reaches_the_sandbox(terminal: Terminal) -> None:
    terminal.expect(PROMPT)
    fcntl.ioctl(terminal.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 41, 101, 0, 0))
    time.sleep(0.5)  # SIGWINCH to ccc run, which sets the sandbox's pty
    terminal.write(b"echo SIZE=$(stty size)\n")
    terminal.expect(rb"SIZE=41 101")
    terminal.write(b"exit\n")
    assert terminal.wait() == 0


INJECT = r"""
import errno, fcntl, os, termios
def attempt(fd):
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"X")
        return "INJECTED"
    except OSError as exc:
        return errno.errorcode[exc.errno]
tty = os.open("/dev/tty", os.O_RDWR)
print("TIOCSTI", attempt(0), attempt(tty), "RDEV", os.fstat(0).st_rdev)
"""


def test_the_sandbox_has_its_own_terminal_and_cannot_type_into_the_users(
    setup: tuple[Path, Path],
) -> None:
    config, project = setup
    term = Terminal(config, project, PYTHON, "-c", INJECT)
    try:
        user_tty = os.stat(f"/proc/{term.pid}/fd/0").st_rdev
        found = term.expect(rb"TIOCSTI (\w+) (\w+) RDEV (\d+)")
        assert term.wait() == 0
    finally:
        term.close()
    assert found.group(1) == found.group(2) == b"EPERM"  # refused, on any descriptor
    # It has a controlling terminal (/dev/tty opened), and its standard input is a pty
    # of its own, not the user's terminal: even a TIOCSTI that got through could only
    # reach the sandbox itself.
    assert int(found.group(3)) != user_tty


def test_a_terminated_ccc_run_ends_the_sandbox_and_gives_the_terminal_back(
    terminal: Terminal,
) -> None:
    before = termios.tcgetattr(terminal.fd)
    terminal.expect(PROMPT)
    raw = termios.tcgetattr(terminal.fd)
    assert not raw[3] & termios.ICANON  # meanwhile the user's terminal is raw
    os.kill(terminal.pid, signal.SIGTERM)
    assert terminal.wait() == 128 + signal.SIGTERM
    assert termios.tcgetattr(terminal.fd) == before


def test_a_terminal_answer_arriving_after_the_sandbox_ends_is_not_typed_into_the_shell(
    setup: tuple[Path, Path],
) -> None:
    # The sandbox asks the terminal something and exits at once; the terminal (this
    # test) answers. The user's shell, reading after ccc run, must not get the answer.
    config, project = setup
    program = "from ccc_relay.cli.containers_cmd import run; run.main()"
    ccc_run = [sys.executable, "-c", program, "alice", "--project", str(project),
               "--runtime", "bwrap", "--config", str(config), "--no-ccc-check",
               "--", "/bin/sh", "-c", r"printf 'QUERY\033[21t'"]  # fmt: skip
    shell = " ".join(shlex.quote(a) for a in ccc_run) + "; read -t 3 -r line; echo LEFT=[$line]"
    env = {"PATH": os.environ["PATH"], "TERM": "xterm", "LANG": "C.UTF-8"}
    pid, fd = os.forkpty()
    if pid == 0:
        try:
            os.execve("/bin/bash", ["/bin/bash", "--norc", "-c", shell], env)
        finally:
            os._exit(127)
    term = Terminal.__new__(Terminal)
    term.pid, term.fd, term.seen, term.status = pid, fd, b"", None
    try:
        term.expect(rb"QUERY\x1b\[21t")
        term.write(b"\x1b]lrm -rf ~\x1b\\\r")  # what a title report could carry
        found = term.expect(rb"LEFT=\[(.*?)\]", timeout=20)
        assert found.group(1) == b""
        assert term.wait() == 0
    finally:
        term.close()
