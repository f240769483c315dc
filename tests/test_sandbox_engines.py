"""``ccc run`` with podman and docker on this very host: what the engines cannot do is said
as such, and what ``ccc run`` lays out for them does not outlive the sandbox.

Real engines, a real ``ccc run`` process: an unreachable docker daemon is named
before anything about ``ccc`` or the image; a missing ``ccc-egress`` network
comes with the command that creates it; rootless podman on cgroups v1, which
would ignore the limits, is refused unless ``--no-limits``; podman's credential
copy is removed when the sandbox ends, and a crashed run's at the next run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ccc_relay.containers.detect import cgroup_version, limits_problem
from ccc_relay.containers.staging import LAUNCHER_PID_FILE, stage_credential, sweep_staged

pytestmark = pytest.mark.slow

SANDBOX_UID = 4341
ROOT_CREDENTIALS = Path("/run/ccc-run/credentials")  # where a root ccc run stages copies
HAS_PODMAN = shutil.which("podman") is not None and shutil.which("runc") is not None


@dataclass
class Host:
    base: Path
    config: Path
    project: Path
    agent: str


@pytest.fixture
def host() -> Iterator[Host]:
    """A relay's state dir (credential, listening socket) and a project, for a unique agent."""
    agent = f"eng-{secrets.token_hex(3)}"
    base = Path(tempfile.mkdtemp(prefix="ccc-engines-"))
    base.chmod(0o711)
    state, project = base / "state", base / "project"
    (state / "credentials").mkdir(parents=True)
    project.mkdir()
    state.chmod(0o711)
    credential = state / "credentials" / f"{agent}.cred"
    credential.write_text(f"agent: {agent}\ncredential: ccc1.not-a-real-credential-xxxxxxxx\n")
    credential.chmod(0o600)  # as the relay writes it: an engine needs a staged copy
    if os.geteuid() == 0:
        os.chown(project, SANDBOX_UID, SANDBOX_UID)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(state / "daemon.sock"))
    listener.listen()
    os.chmod(state / "daemon.sock", 0o666)
    config = base / "relay.yaml"
    config.write_text(f"daemon:\n  state_dir: {state}\n  per_agent_sockets: false\n")
    try:
        yield Host(base, config, project, agent)
    finally:
        listener.close()
        shutil.rmtree(base)
        if HAS_PODMAN:
            subprocess.run(["podman", "rm", "-f", "-t", "0", f"ccc-{agent}"],
                           capture_output=True, check=False)  # fmt: skip


def ccc_run(host: Host, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    program = "from ccc_relay.cli.containers_cmd import run; run.main()"
    return subprocess.run(
        [sys.executable, "-c", program, host.agent, "--project", str(host.project),
         "--config", str(host.config), *args],
        capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _docker_daemon_up() -> bool:
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return result.returncode == 0


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker is not installed")
def test_an_unreachable_docker_daemon_is_named_before_the_image(host: Host) -> None:
    if _docker_daemon_up():
        pytest.skip("a docker daemon runs here")
    result = ccc_run(host, "--runtime", "docker", "--image", "x", "--", "true")
    said = " ".join(result.stderr.split())
    assert result.returncode == 125, result.stderr  # the engine's own status
    assert said.startswith("error: docker is not usable: docker cannot reach its daemon")
    assert "systemctl start docker" in said
    assert "Install ccc-relay into the image" not in said
    assert "ccc does not run inside" not in said
    assert "(docker said:" in said and "Cannot connect to the Docker daemon" in said


def _podman_network_exists(name: str) -> bool:
    result = subprocess.run(["podman", "network", "exists", name], capture_output=True,
                            timeout=60, check=False)  # fmt: skip
    return result.returncode == 0


@pytest.mark.skipif(not HAS_PODMAN, reason="podman and runc are not installed")
def test_a_missing_egress_network_comes_with_the_command_that_creates_it(host: Host) -> None:
    if _podman_network_exists("ccc-egress"):
        pytest.skip("this host has the ccc-egress network")
    if limits_problem("podman", as_root=os.geteuid() == 0):
        pytest.skip("rootless podman on cgroups v1 is refused before the network")
    result = ccc_run(host, "--runtime", "podman", "--network", "egress", "--no-ccc-check",
                     "--", "true")  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 125, result.stderr
    assert lines[0].startswith(f"error: podman could not start {host.agent}'s sandbox: "
                               "--network egress joins the network ccc-egress")  # fmt: skip
    assert "podman network create --interface-name ccc0 ccc-egress" in lines[0]
    assert "ccc firewall --apply" in lines[0]
    assert any("network not found" in line for line in lines[1:])  # podman's own words


@pytest.mark.skipif(not HAS_PODMAN, reason="podman and runc are not installed")
def test_podmans_credential_copy_goes_when_the_sandbox_ends_and_a_crashed_runs_next_time(
    host: Host,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only a root launcher stages credential copies")
    # A run that was killed left its copy; its launcher (a process now gone) named itself.
    gone = subprocess.Popen(["true"])
    gone.wait()
    crashed = ROOT_CREDENTIALS / f"{host.agent}-crashed"
    stage_credential(host.base / "state" / "credentials" / f"{host.agent}.cred", crashed,
                     SANDBOX_UID, SANDBOX_UID, launcher_pid=gone.pid)  # fmt: skip
    # ccc run --print keeps its copy for the printed command: no launcher, never swept.
    printed = ccc_run(host, "--runtime", "podman", "--print", "--", "true")
    assert printed.returncode == 0, printed.stderr
    mine = ROOT_CREDENTIALS / host.agent
    assert (mine / "credential").exists() and not (mine / LAUNCHER_PID_FILE).exists()
    shutil.rmtree(mine)
    try:
        inside = ccc_run(host, "--runtime", "podman", "--no-ccc-check", "--",
                         "cat", "/run/ccc/credential")  # fmt: skip
        assert inside.returncode == 0, inside.stderr
        assert f"agent: {host.agent}" in inside.stdout  # the copy was there while it ran
        assert not mine.exists()  # ... and is gone with the sandbox
        assert not crashed.exists()  # the crashed run's too
    finally:
        shutil.rmtree(crashed, ignore_errors=True)
        shutil.rmtree(mine, ignore_errors=True)


def test_sweep_keeps_a_live_launchers_copy_and_removes_a_dead_ones(tmp_path: Path) -> None:
    source = tmp_path / "a.cred"
    source.write_text("agent: a\ncredential: ccc1.xxxxxxxxxxxxxxxxxxxxxxxxxxxx\n")
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    gone = subprocess.Popen(["true"])
    gone.wait()
    uid, gid = os.getuid() or SANDBOX_UID, os.getgid() or SANDBOX_UID
    stage_credential(source, credentials / "live", uid, gid, launcher_pid=os.getpid())
    stage_credential(source, credentials / "dead", uid, gid, launcher_pid=gone.pid)
    stage_credential(source, credentials / "printed", uid, gid)
    assert sweep_staged(credentials) == [credentials / "dead"]
    assert sorted(p.name for p in credentials.iterdir()) == ["live", "printed"]


def test_cgroups_v1_rootless_podman_is_the_one_case_without_limits(tmp_path: Path) -> None:
    assert cgroup_version(tmp_path) == 1
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cgroup_version(tmp_path) == 2
    assert limits_problem("podman", as_root=False, cgroup=1) is not None
    for runtime, as_root, cgroup in (("podman", True, 1), ("podman", False, 2),
                                     ("bwrap", False, 1), ("docker", False, 1)):  # fmt: skip
        assert limits_problem(runtime, as_root=as_root, cgroup=cgroup) is None


@pytest.mark.skipif(not HAS_PODMAN, reason="podman and runc are not installed")
def test_rootless_podman_on_cgroups_v1_is_refused_unless_no_limits(host: Host) -> None:
    if cgroup_version() != 1:
        pytest.skip("this host has cgroups v2, where rootless podman applies the limits")
    if os.geteuid() == 0:
        pytest.skip("needs a normal user (tests/test_newcomer_run.py runs one)")
    result = ccc_run(host, "--runtime", "podman", "--no-ccc-check", "--", "true")
    assert result.returncode == 1
    assert "rootless podman cannot apply --memory and --pids" in result.stderr
    assert "--no-limits" in result.stderr


@pytest.mark.skipif(not HAS_PODMAN, reason="podman and runc are not installed")
def test_doctor_reports_a_podman_that_would_ignore_the_limits() -> None:
    from ccc_relay.cli.doctor import _runtime_check

    as_root = _runtime_check("podman", as_root=True)
    assert as_root.ok, as_root  # root's podman applies them on either cgroup version
    rootless = _runtime_check("podman", as_root=False)  # podman info runs here as root
    if cgroup_version() != 1:
        assert rootless.ok
        return
    assert not rootless.ok
    assert "rootless podman cannot apply --memory and --pids" in rootless.detail
    assert "--no-limits" in rootless.fix
