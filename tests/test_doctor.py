"""``ccc doctor`` against real set-ups: a real relay process, real sandboxes, real files.

It passes (exit 0, every line ``ok``) on a good set-up, and on a bad one names
the failing link -- the relay not running, a credential the relay refuses, a
``ccc`` that cannot run inside a sandbox, a project without the MCP server and
hooks -- and exits 1. ``--json`` is one object with the same checks.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.newcomer import (
    HOST_PATH,
    Relay,
    broken_ccc,
    installed_ccc,
    need_root_and_bwrap,
    sandbox_ccc,
    start_relay,
)
from tests.support import BIN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ccc_bin() -> Iterator[Path]:
    with installed_ccc() as bin_dir:
        yield bin_dir


@pytest.fixture
def relay(ccc_bin: Path, tmp_path: Path) -> Iterator[Relay]:
    need_root_and_bwrap()
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {"HOME": str(home), "PATH": f"{BIN}:{HOST_PATH}", "LANG": "C.UTF-8",
           **sandbox_ccc(ccc_bin)}  # fmt: skip
    running = start_relay(env, bin_dir=BIN, log=tmp_path / "relay.log")
    try:
        for args in (("agent", "add", "alice"), ("agent", "add", "bob")):
            assert _ccc(running.env, *args).returncode == 0
        yield running
    finally:
        running.stop()


def _ccc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ccc"), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _doctor_json(
    env: dict[str, str], *args: str, options: tuple[str, ...] = ()
) -> tuple[int, dict[str, dict[str, object]]]:
    """``ccc ARGS doctor --json OPTIONS``: its exit code and its checks by name."""
    result = _ccc(env, *args, "doctor", "--json", *options)
    data = json.loads(result.stdout)
    assert set(data) == {"ok", "checks"}
    assert data["ok"] is (result.returncode == 0)
    return result.returncode, {check["name"]: check for check in data["checks"]}


def _installed_project(env: dict[str, str], tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    result = _ccc(env, "install", "claude", "--project", str(project))
    assert result.returncode == 0, result.stderr
    return project


def test_a_good_set_up_passes_every_check(relay: Relay, tmp_path: Path) -> None:
    project = _installed_project(relay.env, tmp_path)
    result = _ccc(relay.env, "--as", "alice", "doctor", "--project", str(project))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "all checks passed"
    names = [line.split(":")[0].split(maxsplit=1)[1] for line in lines[:-1]]
    for expected in ("config", "relay socket", "relay connect", "relay answers",
                     "agent sockets", "agent socket", "credential", "bwrap", "ccc in a sandbox",
                     "MCP server", "hooks"):  # fmt: skip
        assert expected in names, lines
    assert all(line.startswith("ok ") for line in lines[:-1]), lines


def test_json_is_one_object_with_the_same_checks(relay: Relay) -> None:
    code, checks = _doctor_json(relay.env, "--as", "alice")
    assert code == 0
    assert checks["credential"]["ok"] is True
    assert "alice" in str(checks["credential"]["detail"])


def test_an_agent_socket_directory_a_sandbox_cannot_enter_is_named(relay: Relay) -> None:
    from ccc_relay.policy.config import embedded_defaults

    config = embedded_defaults({"XDG_CACHE_HOME": str(Path(relay.env["HOME"]) / ".cache")})
    directory = config.agent_socket("alice").parent
    code, checks = _doctor_json(relay.env, "--as", "alice")
    assert checks["agent socket"]["ok"] is True, checks["agent socket"]
    assert str(directory) in str(checks["agent socket"]["detail"])
    directory.chmod(0o700)
    code, checks = _doctor_json(relay.env, "--as", "alice")
    assert code == 1
    assert checks["agent socket"]["ok"] is False
    assert checks["agent socket"]["fix"] == f"chmod 711 {directory}"


def test_a_stopped_relay_is_the_failing_link(relay: Relay) -> None:
    relay.stop()
    result = _ccc(relay.env, "doctor")
    assert result.returncode == 1
    assert "problem  relay socket:" in result.stdout
    assert "do: start the relay: ccc-statusd start" in result.stdout
    assert "checks found a problem" in result.stderr


def test_a_refused_credential_is_the_failing_link(relay: Relay, tmp_path: Path) -> None:
    stale = tmp_path / "alice-old.cred"
    stale.write_bytes((relay.state / "credentials" / "alice.cred").read_bytes())
    stale.chmod(0o600)
    assert _ccc(relay.env, "agent", "rotate", "alice").returncode == 0
    code, checks = _doctor_json(relay.env, "--credential", str(stale))
    assert code == 1
    assert checks["credential"]["ok"] is False
    assert "refused" in str(checks["credential"]["detail"])
    assert checks["credential"]["fix"] == "on the relay's host: ccc agent rotate alice"
    assert all(check["ok"] for name, check in checks.items() if name != "credential")


def test_a_ccc_that_cannot_run_in_a_sandbox_is_the_failing_link(
    relay: Relay, tmp_path: Path
) -> None:
    with broken_ccc(tmp_path) as shadow:
        env = {**relay.env, **sandbox_ccc(shadow.parent)}
        code, checks = _doctor_json(env, options=("--runtime", "bwrap"))
    assert code == 1
    inside = checks["ccc in a sandbox"]
    assert inside["ok"] is False
    assert f"{shadow} runs" in str(inside["detail"])
    assert "/usr/bin/python3 -m venv /usr/local/lib/ccc-relay" in str(inside["fix"])
    assert checks["relay answers"]["ok"] is True  # the rest of the chain is fine


def test_a_project_without_the_claude_files_is_the_failing_link(
    relay: Relay, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    assert _doctor_json(relay.env, "--as", "alice")[0] == 0
    result = _ccc(relay.env, "doctor", "--project", str(bare))
    assert result.returncode == 1
    assert f"problem  MCP server: {bare}/.mcp.json has no 'ccc-relay' server" in result.stdout
    assert f"do: ccc install claude --project {bare}" in result.stdout
    assert "problem  hooks: no ccc hook for SessionStart, UserPromptSubmit, Stop" in result.stdout


def test_an_mcp_server_outside_usr_is_named(relay: Relay, tmp_path: Path) -> None:
    project = tmp_path / "venv-project"
    project.mkdir()
    result = _ccc(relay.env, "install", "claude", "--project", str(project),
                  "--command", str(BIN / "ccc"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    code, checks = _doctor_json(relay.env, options=("--project", str(project)))
    outside = not str(Path(str(BIN)).resolve()).startswith("/usr/")
    assert checks["MCP server"]["ok"] is not outside
    if outside:
        assert "which a sandbox cannot see" in str(checks["MCP server"]["detail"])
        assert code == 1


def test_the_start_and_restart_advice_names_this_relays_config(tmp_path: Path) -> None:
    """A relay started with --config FILE is stopped and started with it (quoted)."""
    import dataclasses

    from ccc_relay.cli.doctor import _relay_checks, _restart
    from ccc_relay.policy.config import embedded_defaults

    source = tmp_path / "my configs" / "relay.yaml"
    config = dataclasses.replace(embedded_defaults(), source=source)
    flag = f"--config '{source}'"
    assert _restart(config) == (
        f"restart the relay: ccc-statusd stop {flag}; ccc-statusd start {flag}"
    )
    (check,) = list(_relay_checks(config, tmp_path / "no.sock"))
    assert check.ok is False
    assert check.fix == f"start the relay: ccc-statusd start {flag}"
