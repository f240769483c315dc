"""``ccc --config FILE CMD`` and ``ccc --socket PATH CMD``: what is typed before the
command reaches every command (docs/cli.md, "Choosing the relay").

Two real relays run side by side: the default one (the state dir of the environment)
and one started with its own config. Every operator command is run with the config
given before the command; it must act on that relay and leave the default one alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay_process import RelayProcess
from tests.support import BIN, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def default_relay(state_dir: Path) -> Iterator[dict[str, str]]:
    """The relay a command reaches when no config is given."""
    env = {"CCC_CACHE_DIR": str(state_dir), "CCC_SOCKET": "", "CCC_CREDENTIAL": "",
           "CCC_CONFIG": ""}  # fmt: skip
    proc = subprocess.Popen(
        [str(BIN / "ccc-statusd"), "start", "--allow-root"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not (state_dir / "daemon.pid").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    yield env
    proc.terminate()
    proc.wait(15)


@pytest.fixture
def other_relay() -> Iterator[RelayProcess]:
    """A relay started with its own config file, in its own state dir."""
    state = Path(f"/tmp/ccc-o-{os.getpid()}-{time.monotonic_ns() % 10**8}")
    state.mkdir(mode=0o700)
    relay = RelayProcess(state)
    relay.start()
    yield relay
    relay.stop()
    subprocess.run(["rm", "-rf", str(state)], check=False)


def _run(*args: str, env: dict[str, str], rc: int = 0) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, env=env)
    assert result.returncode == rc, (args, result.returncode, result.stdout, result.stderr)
    return result


def _snapshot(env: dict[str, str]) -> tuple[object, ...]:
    """What an operator command could change on the default relay."""
    agents = json.loads(_run("ccc", "agent", "list", "--json", env=env).stdout)["agents"]
    rules = json.loads(_run("ccc", "policy", "show", "--json", env=env).stdout)["rules"]
    groups = json.loads(_run("ccc", "group", "list", "--json", env=env).stdout)
    return ([a["name"] for a in agents], rules, groups)


def test_every_operator_command_honours_the_config_given_before_it(
    default_relay: dict[str, str], other_relay: RelayProcess, state_dir: Path, tmp_path: Path
) -> None:
    env = default_relay
    _run("ccc", "agent", "add", "dev", env=env)
    before = _snapshot(env)
    cfg = str(other_relay.config)
    other = other_relay.state

    def ccc(*args: str, rc: int = 0) -> subprocess.CompletedProcess[str]:
        return _run("ccc", "--config", cfg, *args, env=env, rc=rc)

    for name in ("alice", "bob"):
        assert str(other / "credentials") in ccc("agent", "add", name).stdout
    assert not (state_dir / "credentials" / "alice.cred").exists()
    assert "allowed alice -> bob" in ccc("allow", "alice", "bob").stdout
    assert "alice -> bob" in ccc("policy", "show").stdout
    assert "alice" in ccc("policy", "graph").stdout
    assert [a["name"] for a in json.loads(ccc("agent", "list", "--json").stdout)["agents"]] == [
        "alice", "bob"]  # fmt: skip
    assert ccc("agent", "rotate", "bob").returncode == 0
    # Only the other relay has no 'dev': a not_found proves which relay answered.
    assert "dev" in ccc("agent", "release", "dev", rc=6).stderr
    assert "team" in ccc("group", "add", "team", "alice", "bob").stdout
    assert "team" in json.dumps(json.loads(ccc("group", "list", "--json").stdout))
    ccc("group", "remove", "team")
    status = json.loads(ccc("status", "--json").stdout)
    assert status["running"] is True and str(other) in json.dumps(status)
    assert json.loads(ccc("held", "--json").stdout) == {"held": []}
    ccc("approve", "m_nosuchmessage1", rc=6)
    ccc("reject", "m_nosuchmessage1", rc=6)
    assert other_relay.proc is not None
    assert f"pid {other_relay.proc.pid} " in ccc("top", "--once").stdout
    ccc("--as", "alice", "send", "bob", "hello")
    ccc("audit", "verify")
    assert "alice" in ccc("audit", "tail", "-n", "20").stdout
    assert "alice" in ccc("audit", "search", "--from", "alice").stdout
    assert ccc("audit", "pubkey").stdout.strip()
    ccc("audit", "acknowledge", "1", rc=6)
    seal_key = ccc("audit", "seal-key", "export").stdout.strip()
    ccc("audit", "verify", "--seal-key", seal_key, "--allow-unsealed-tail")
    project = tmp_path / "project"
    project.mkdir()
    # ccc run looks for the credential on the relay the config names ('dev' is not there;
    # alice's is found, and run goes on to the sandbox's user, which root must give).
    # (Its exit codes are ccc run's own; here only which relay it looked at matters.)
    run = ("run", "--print", "--project", str(project))
    no_dev = run_cli("ccc", "--config", cfg, *run, "dev", env=env)
    assert no_dev.returncode != 0 and f"{other}/credentials/dev.cred" in no_dev.stderr
    alice = run_cli("ccc", "--config", cfg, *run, "alice", env=env)
    assert "credential" not in alice.stderr
    if alice.returncode == 0:  # a normal user: the printed sandbox mounts the other relay
        assert str(other) in alice.stdout and str(state_dir) not in alice.stdout
    else:  # root: the sandbox's user must be given first
        assert "--uid" in alice.stderr
    ccc("deny", "alice", "bob")
    ccc("agent", "remove", "bob")
    assert _snapshot(env) == before  # the default relay was never touched


def test_a_config_that_cannot_be_used_is_an_error_naming_it(
    default_relay: dict[str, str], tmp_path: Path
) -> None:
    env = default_relay
    missing = tmp_path / "nope.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("daemon:\n  bogus: 1\n")
    for config, problem in ((missing, "No such file"), (bad, "daemon.bogus: unknown key")):
        commands = (("status",), ("allow", "carol", "dave"), ("group", "list"),
                    ("agent", "list"), ("audit", "verify"), ("--as", "x", "inbox"))  # fmt: skip
        for command in commands:
            result = _run("ccc", "--config", str(config), *command, env=env, rc=4)
            assert f"invalid config {config}: " in result.stderr, result.stderr
            assert problem in result.stderr
    refused = _run("ccc", "--config", str(missing), "status", "--json", env=env, rc=4)
    error = json.loads(refused.stdout)["error"]
    assert error["exit"] == 4 and str(missing) in error["message"]


def test_two_different_values_before_and_after_the_command_are_a_usage_error(
    default_relay: dict[str, str], other_relay: RelayProcess
) -> None:
    env = default_relay
    cfg = str(other_relay.config)
    clash = _run("ccc", "--config", cfg, "agent", "list", "--config", "/etc/x.yaml", env=env, rc=2)
    assert f"--config {cfg} before the command and --config /etc/x.yaml after it" in clash.stderr
    # The same file twice is no contradiction.
    _run("ccc", "--config", cfg, "agent", "list", "--config", cfg, env=env)
    # Typed before the command wins over CCC_CONFIG read after it.
    _run("ccc", "agent", "add", "carol", env=env)
    listed = _run("ccc", "--config", cfg, "agent", "list", "--json",
                  env={**env, "CCC_CONFIG": "/nonexistent.yaml"})  # fmt: skip
    assert json.loads(listed.stdout) == {"agents": []}


def test_socket_given_before_an_operator_command_is_never_ignored(
    default_relay: dict[str, str], other_relay: RelayProcess
) -> None:
    env = default_relay
    sock = str(other_relay.socket)
    wrong = _run("ccc", "--socket", sock, "status", env=env, rc=2)
    assert f"--socket {sock} is not the socket of the default config" in wrong.stderr
    assert "--config FILE" in wrong.stderr
    same = _run("ccc", "--socket", sock, "--config", str(other_relay.config), "status", env=env)
    assert str(other_relay.state) in same.stdout


def test_not_running_says_how_to_start_that_relay(
    other_relay: RelayProcess, tmp_path: Path
) -> None:
    other_relay.stop()
    cfg = str(other_relay.config)
    env = {"CCC_CACHE_DIR": str(tmp_path), "CCC_CONFIG": "", "CCC_SOCKET": ""}
    status = _run("ccc", "--config", cfg, "status", env=env, rc=3)
    assert f"start it with 'ccc-statusd start --config {cfg}'" in status.stdout
    listed = _run("ccc", "agent", "list", "--config", cfg, env=env, rc=3)
    assert f"'ccc-statusd start --config {cfg}'" in listed.stderr
