"""A sandboxed agent keeps its relay across the relay's restarts and crashes.

An agent's own socket lives alone in a directory of its own, and ``ccc run``
mounts that directory: the socket a restarted relay binds there (a new inode)
shows up inside the running sandbox, where a mounted socket file would stay
the dead one. Here a real relay (as ``./dev.sh start`` runs it for root) is
stopped, started and SIGKILLed under a real sandbox running ``ccc watch``,
which must get every message once; and the sandbox sees no other agent's
socket. The directory's life (kept by a stop, gone with its agent) and what a
root ``ccc run`` gives the sandbox's group are checked on their own.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ccc_relay.containers.staging import LaunchError, grant_socket
from ccc_relay.daemon.sockets import SocketPathError, StateDirError, ensure_agent_socket_dir
from ccc_relay.policy.config import embedded_defaults
from tests.newcomer import (
    HOST_PATH,
    Relay,
    installed_ccc,
    need_root_and_bwrap,
    sandbox_ccc,
    start_relay,
    throwaway_user,
)
from tests.support import BIN, make_config

NO_PODMAN = pytest.mark.skipif(
    shutil.which("podman") is None or shutil.which("runc") is None,
    reason="podman and runc are not installed",
)
RUNTIMES = ["bwrap", pytest.param("podman", marks=NO_PODMAN)]
LINE_TIMEOUT = 60.0  # a reconnect backs off to 5 s at most; a podman start takes a few


@pytest.fixture(scope="module")
def ccc_bin() -> Iterator[Path]:
    with installed_ccc() as bin_dir:
        yield bin_dir


@pytest.fixture
def root_home(tmp_path: Path) -> Iterator[Path]:
    need_root_and_bwrap()
    home = tmp_path / "root-home"
    home.mkdir(mode=0o700)
    yield home
    # Root's relay keeps its agents' sockets in /run/ccc-status/agents-HASH: not ours to keep.
    sockets = embedded_defaults({"XDG_CACHE_HOME": str(home / ".cache")}).agent_sockets
    shutil.rmtree(sockets, ignore_errors=True)


def _env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "PATH": f"{BIN}:{HOST_PATH}", "LANG": "C.UTF-8"}


def _ccc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ccc"), *args], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def _ok(env: dict[str, str], *args: str) -> str:
    result = _ccc(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


class Lines:
    """A process's standard output, line by line, with a timeout on each."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        self.pump = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self.pump.start()

    def _pump(self, stdout: object) -> None:
        for line in stdout:  # type: ignore[attr-defined]
            self.lines.put(line)
        self.lines.put(None)

    def next(self) -> str:
        try:
            line = self.lines.get(timeout=LINE_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"nothing from the sandbox in {LINE_TIMEOUT:.0f} s") from None
        assert line is not None, f"the sandbox ended: {self.proc.stderr.read()}"  # type: ignore[union-attr]
        return line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.pump.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ccc-restart-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Host:
    """Who runs the relay and ``ccc run``: root (the sandbox as a project's owner) or a
    normal user (the sandbox as that user)."""

    env: dict[str, str]
    bin_dir: Path
    user: str | None  # None: root
    log: Path

    def argv(self, *args: str) -> list[str]:
        ccc = [str(self.bin_dir / "ccc"), *args]
        return ["runuser", "-u", self.user, "--", *ccc] if self.user else ccc

    def ok(self, *args: str) -> str:
        result = subprocess.run(self.argv(*args), env=self.env, capture_output=True,
                                text=True, timeout=120, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self) -> Relay:
        return start_relay(self.env, user=self.user, bin_dir=self.bin_dir, log=self.log)


def _crash(relay: Relay) -> None:
    """SIGKILL the relay itself (under runuser its pid is not the process started)."""
    pid_file = relay.state / "daemon.pid"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    relay.proc.wait(10)
    pid_file.unlink()  # a SIGKILLed relay cannot; start_relay waits for a new one


@pytest.mark.slow
@pytest.mark.parametrize(
    ("who", "runtime"),
    [("root", "bwrap"), pytest.param("root", "podman", marks=NO_PODMAN), ("user", "bwrap")],
)
def test_a_running_sandbox_gets_every_message_across_relay_restarts_and_a_crash(
    ccc_bin: Path, root_home: Path, open_dir: Path, tmp_path: Path, who: str, runtime: str
) -> None:
    with throwaway_user() as user:
        if who == "root":
            env = {**_env(root_home), **sandbox_ccc(ccc_bin)}
            host = Host(env, BIN, None, tmp_path / "relay.log")
            project = open_dir / "alice"
        else:
            home = Path(os.path.expanduser(f"~{user}"))
            env = {"HOME": str(home), "PATH": f"{ccc_bin}:{HOST_PATH}", "LANG": "C.UTF-8",
                   **sandbox_ccc(ccc_bin)}  # fmt: skip
            host = Host(env, ccc_bin, user, home / "relay.log")
            project = home / "alice"
        project.mkdir()
        shutil.chown(project, user)
        relay = host.start()
        lines: Lines | None = None
        try:
            for args in (("agent", "add", "alice"), ("agent", "add", "bob"),
                         ("allow", "bob", "alice")):  # fmt: skip
                host.ok(*args)
            watcher = subprocess.Popen(
                host.argv("run", "alice", "--runtime", runtime, "--project", str(project),
                          "--", "ccc", "watch", "--json", "--count", "3"),
                env=host.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            lines = Lines(watcher)
            received = []

            host.ok("--as", "bob", "send", "alice", "before any restart")
            received.append(json.loads(lines.next())["body"])

            relay.stop()  # a clean stop removes the socket; the directory stays
            relay = host.start()
            host.ok("--as", "bob", "send", "alice", "after a restart")
            received.append(json.loads(lines.next())["body"])

            _crash(relay)  # the dead socket stays until the next start replaces it
            relay = host.start()
            host.ok("--as", "bob", "send", "alice", "after a crash")
            received.append(json.loads(lines.next())["body"])

            assert watcher.wait(30) == 0, watcher.stderr.read()  # type: ignore[union-attr]
            assert received == ["before any restart", "after a restart", "after a crash"]
            # Nothing is left for alice: each message was delivered and acknowledged once.
            left = json.loads(host.ok("--as", "alice", "inbox", "--peek", "--json"))
            assert left == {"messages": []}
        finally:
            if lines is not None:
                lines.close()
            relay.stop()


# A probe run inside: what of the relay's sockets the sandbox can see and reach.
_SEEN = """
import json, os, socket, sys
others = sys.argv[1:]
seen = {"run": sorted(os.listdir("/run")), "link": os.readlink("/run/ccc.sock"),
        "CCC_SOCKET": os.environ["CCC_SOCKET"]}
try:
    seen["dir"] = sorted(os.listdir("/run/ccc-relay"))
except PermissionError:
    seen["dir"] = "denied"
seen["others"] = [os.path.lexists(p) for p in others]
s = socket.socket(socket.AF_UNIX)
s.connect("/run/ccc.sock")
seen["connects"] = True
print(json.dumps(seen))
"""


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_sandbox_sees_its_own_socket_and_no_other_agents(
    ccc_bin: Path, root_home: Path, open_dir: Path, tmp_path: Path, runtime: str
) -> None:
    env = {**_env(root_home), **sandbox_ccc(ccc_bin)}
    relay = start_relay(env, bin_dir=BIN, log=tmp_path / "relay.log")
    try:
        with throwaway_user() as owner:
            project = open_dir / "alice"
            project.mkdir()
            shutil.chown(project, owner)
            for name in ("alice", "bob"):
                _ok(env, "agent", "add", name)
            host = embedded_defaults({"XDG_CACHE_HOME": str(root_home / ".cache")})
            assert host.state_dir == relay.state
            bob = host.agent_socket("bob")
            assert bob.exists()
            others = [str(bob), str(bob.parent), str(host.agent_sockets), str(host.socket_path)]
            out = _ok(env, "run", "alice", "--runtime", runtime, "--project", str(project),
                      "--", "/usr/bin/python3", "-c", _SEEN, *others)  # fmt: skip
            seen = json.loads(out.strip().splitlines()[-1])
    finally:
        relay.stop()
    # (podman adds its own /run/.containerenv, which says "a container" and no more;
    # ccc-bin holds the ccc under test, which CCC_SANDBOX_CCC names)
    assert [n for n in seen["run"] if n != ".containerenv"] == [
        "ccc", "ccc-bin", "ccc-relay", "ccc.sock"
    ]  # fmt: skip
    assert seen["link"] in ("/run/ccc-relay/relay.sock", "ccc-relay/relay.sock")
    assert seen["CCC_SOCKET"] == "/run/ccc.sock"
    # The directory is the relay's (root's), mode 0711: walked through, never listed.
    assert seen["dir"] == "denied"
    assert seen["others"] == [False, False, False, False]
    assert seen["connects"] is True


# --- the directory's life ---------------------------------------------------------


def test_an_agents_directory_outlives_a_stop_and_goes_with_the_agent(
    relay_factory, state_dir: Path
) -> None:
    config = replace(make_config(state_dir), per_agent_sockets=True)
    relay = relay_factory(config=config)
    relay.add_agent("alice")
    relay.add_agent("bob")
    alice = config.agent_socket("alice")
    assert alice == config.agent_sockets / "alice" / "relay.sock"
    assert stat.S_ISSOCK(alice.stat().st_mode)
    assert stat.S_IMODE(alice.parent.stat().st_mode) == 0o711
    assert os.listdir(alice.parent) == ["relay.sock"]  # nothing else, ever

    relay.admin.request("agent_remove", name="bob")
    assert not config.agent_socket("bob").parent.exists()

    directory = alice.parent.stat().st_ino
    relay.stop()
    assert not alice.exists()
    assert alice.parent.stat().st_ino == directory  # what a running sandbox has mounted
    relay = relay_factory(config=config)
    assert stat.S_ISSOCK(alice.stat().st_mode)
    assert alice.parent.stat().st_ino == directory


def test_a_stale_socket_of_the_older_layout_is_cleared(relay_factory, state_dir: Path) -> None:
    config = replace(make_config(state_dir), per_agent_sockets=True)
    relay = relay_factory(config=config)
    relay.add_agent("alice")
    relay.stop()
    older = config.agent_sockets / "alice.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(older))
    stale.close()  # bound, never listened: what a crashed relay leaves
    relay_factory(config=config)
    assert not older.exists()
    assert stat.S_ISSOCK(config.agent_socket("alice").stat().st_mode)


def test_the_agent_directory_is_refused_when_others_could_have_changed_it(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "alice"
    ensure_agent_socket_dir(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o711
    directory.chmod(0o2711)  # what a root ccc run sets: kept
    ensure_agent_socket_dir(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o2711
    directory.chmod(0o733)
    with pytest.raises(StateDirError, match="writable by its group and others"):
        ensure_agent_socket_dir(directory)
    directory.rmdir()
    directory.symlink_to(tmp_path)
    with pytest.raises(SocketPathError, match="is not a directory"):
        ensure_agent_socket_dir(directory)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another group needs root")
def test_a_root_ccc_run_gives_the_directory_to_the_sandbox_group(tmp_path: Path) -> None:
    directory = tmp_path / "alice"
    ensure_agent_socket_dir(directory)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(directory / "relay.sock"))
    os.chmod(directory / "relay.sock", 0o660)
    try:
        grant_socket(directory / "relay.sock", 4321)
        assert (directory / "relay.sock").stat().st_gid == 4321
        info = directory.stat()
        assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 0o2711)
    finally:
        listener.close()
    # The relay's next socket there is born with the sandbox's group.
    (directory / "relay.sock").unlink()
    again = socket.socket(socket.AF_UNIX)
    try:
        again.bind(str(directory / "relay.sock"))
        assert (directory / "relay.sock").stat().st_gid == 4321
    finally:
        again.close()
    (directory / "relay.sock").unlink()
    os.chmod(directory, 0o733)
    (directory / "relay.sock").mkdir()
    with pytest.raises(LaunchError, match="writable by others"):
        grant_socket(directory / "relay.sock", 4321)
