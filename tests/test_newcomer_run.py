"""A newcomer's path, end to end: ``./dev.sh start``'s relay on embedded defaults, the
commands of docs/containers.md as written, then ``ccc run`` in real sandboxes.

As root (whose state dir no sandbox uid may enter) and as a normal user made
for the test, with bubblewrap and with podman (skipped where it is missing).
A ``ccc`` that cannot run inside is caught before the agent starts, and a
podman failure is told in the user's words.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccc_relay.containers.detect import limits_problem
from tests.newcomer import (
    HOST_PATH,
    Relay,
    bash,
    broken_ccc,
    doc_block,
    installed_ccc,
    need_root_and_bwrap,
    sandbox_ccc,
    start_relay,
    throwaway_user,
)
from tests.support import BIN

pytestmark = pytest.mark.slow

RUNTIMES = [
    "bwrap",
    pytest.param(
        "podman",
        marks=pytest.mark.skipif(
            shutil.which("podman") is None or shutil.which("runc") is None,
            reason="podman and runc are not installed",
        ),
    ),
]


@pytest.fixture(scope="module")
def ccc_bin() -> Iterator[Path]:
    with installed_ccc() as bin_dir:
        yield bin_dir


@pytest.fixture
def root_relay(tmp_path: Path) -> Iterator[Relay]:
    """The relay as root runs it from the Quickstart: a private (0700) home, no config."""
    need_root_and_bwrap()
    home = tmp_path / "root-home"
    home.mkdir(mode=0o700)
    env = {"HOME": str(home), "PATH": f"{BIN}:{HOST_PATH}", "LANG": "C.UTF-8"}
    relay = start_relay(env, bin_dir=BIN, log=tmp_path / "relay.log")
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any uid may walk into, for projects (pytest's tmp_path is root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ccc-newcomer-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _ccc(relay: Relay, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ccc"), *args],
        env=relay.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _agents(relay: Relay, alice: str = "alice", bob: str = "bob") -> None:
    for args in (("agent", "add", alice), ("agent", "add", bob), ("allow", alice, bob, "--both")):
        result = _ccc(relay, *args)
        assert result.returncode == 0, result.stderr


def test_the_walkthrough_as_root_runs_as_written(ccc_bin: Path, root_relay: Relay) -> None:
    root_relay.env.update(sandbox_ccc(ccc_bin))
    created = [u for u in ("ccc-alice", "ccc-bob") if subprocess.run(
        ["id", "-u", u], capture_output=True, check=False).returncode != 0]  # fmt: skip
    had_srv = Path("/srv/ccc").exists()
    try:
        result = bash(doc_block("agents") + doc_block("as-root"), env=root_relay.env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "accepted m_" in result.stdout
        assert "hello from alice's sandbox" in result.stdout
    finally:
        for user in created:
            subprocess.run(["userdel", user], check=False, capture_output=True)
        if not had_srv:
            shutil.rmtree("/srv/ccc", ignore_errors=True)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_quickstart_defaults_then_ccc_run_as_root(
    ccc_bin: Path, root_relay: Relay, open_dir: Path, runtime: str
) -> None:
    root_relay.env.update(sandbox_ccc(ccc_bin))
    with throwaway_user() as owner:
        project = open_dir / "alice"
        project.mkdir()
        shutil.chown(project, owner)
        _agents(root_relay)
        sent = _ccc(root_relay, "run", "alice", "--runtime", runtime, "--project", str(project),
                    "--", "ccc", "send", "bob", "hi")  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert "accepted m_" in sent.stdout
        inbox = _ccc(root_relay, "--as", "bob", "inbox")
        assert "hi" in inbox.stdout.splitlines()
        # Root's sandboxes reach the agents' sockets outside root's private state dir.
        assert any(Path("/run/ccc-status").glob("agents-*/alice/relay.sock"))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_quickstart_defaults_then_ccc_run_as_a_normal_user(
    ccc_bin: Path, tmp_path: Path, runtime: str
) -> None:
    with throwaway_user() as user:
        home = Path(os.path.expanduser(f"~{user}"))
        env = {"HOME": str(home), "PATH": f"{ccc_bin}:{HOST_PATH}", "LANG": "C.UTF-8",
               **sandbox_ccc(ccc_bin)}  # fmt: skip
        log = home / "relay.log"
        relay = start_relay(env, user=user, bin_dir=ccc_bin, log=log)
        try:
            agents = doc_block("agents").replace(". .venv/bin/activate\n", "")
            run = "ccc run " if runtime == "bwrap" else f"ccc run --runtime {runtime} "
            if limits_problem(runtime, as_root=False):
                # Rootless podman on cgroups v1 would ignore the limits: refused, then accepted.
                refused = bash(agents + doc_block("as-user").replace("ccc run ", run),
                               env=env, user=user, cwd=home)  # fmt: skip
                assert refused.returncode == 1, refused.stdout + refused.stderr
                assert "error: rootless podman cannot apply --memory and --pids" in refused.stderr
                assert "--no-limits" in refused.stderr
                agents = ""
                run += "--no-limits "
            script = agents + doc_block("as-user").replace("ccc run ", run)
            result = bash(script, env=env, user=user, cwd=home)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "accepted m_" in result.stdout
            assert "hello from alice's sandbox" in result.stdout
        finally:
            relay.stop()


def test_a_ccc_that_cannot_run_inside_stops_ccc_run_before_the_agent(
    root_relay: Relay, open_dir: Path, tmp_path: Path
) -> None:
    with throwaway_user() as owner, broken_ccc(tmp_path) as shadow:
        root_relay.env.update(sandbox_ccc(shadow.parent))
        project = open_dir / "alice"
        project.mkdir()
        shutil.chown(project, owner)
        _agents(root_relay)
        result = _ccc(root_relay, "run", "alice", "--project", str(project),
                      "--", "sh", "-c", "touch started")  # fmt: skip
        assert result.returncode == 1
        said = " ".join(result.stderr.split())
        assert said.startswith("error: ccc does not run inside the bwrap sandbox")
        assert f"{shadow} runs" in said and "outside /usr" in said
        assert "/usr/bin/python3 -m venv /usr/local/lib/ccc-relay" in said
        assert not (project / "started").exists()  # the agent never started
        # Asked not to check, it starts (the agent then has no relay tools).
        forced = _ccc(root_relay, "run", "alice", "--no-ccc-check", "--project", str(project),
                      "--", "sh", "-c", "touch started")  # fmt: skip
        assert forced.returncode == 0, forced.stderr
        assert (project / "started").exists()


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_a_podman_failure_is_told_in_the_users_words(
    ccc_bin: Path, root_relay: Relay, open_dir: Path
) -> None:
    name = f"newcomer-{secrets.token_hex(3)}"
    root_relay.env.update(sandbox_ccc(ccc_bin))
    with throwaway_user() as owner:
        project = open_dir / name
        project.mkdir()
        shutil.chown(project, owner)
        _agents(root_relay, name, f"{name}-b")
        argv = [str(BIN / "ccc"), "run", name, "--runtime", "podman", "--project", str(project)]
        first = subprocess.Popen([*argv, "--", "sleep", "60"], env=root_relay.env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while f"ccc-{name}" not in subprocess.run(
                ["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True,
                check=False).stdout:  # fmt: skip
                assert first.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
            second = subprocess.run([*argv, "--", "true"], env=root_relay.env, text=True,
                                    capture_output=True, timeout=120, check=False)  # fmt: skip
            assert second.returncode == 125
            lines = second.stderr.strip().splitlines()
            assert lines[0].startswith(f"error: podman could not start {name}'s sandbox: a "
                                       f"container named ccc-{name} already exists")  # fmt: skip
            assert f"podman rm -f ccc-{name}" in lines[0]
            assert "podman said:" in second.stderr  # the engine's own text follows
        finally:
            subprocess.run(["podman", "rm", "-f", "-t", "0", f"ccc-{name}"],
                           capture_output=True, check=False)  # fmt: skip
            first.wait(30)
