"""A confined relay (Landlock and seccomp, as ``ccc-statusd start`` runs it) with
``daemon.socket_group`` and per-agent sockets, and reloads of a config saved by rename.

Real ``ccc-statusd`` processes, real ``ccc`` commands, a throwaway group.
"""

from __future__ import annotations

import grp
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BIN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="makes a group: needs root"),
]

CONFIG = """\
daemon:
  state_dir: {state}
  socket_group: {group}
  per_agent_sockets: true
policy:
  allow: [{allow}]
"""


@pytest.fixture
def group() -> Iterator[str]:
    name = f"ccc-test-g{secrets.token_hex(3)}"
    subprocess.run(["groupadd", "--system", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


class Relay:
    def __init__(self, config: Path, state: Path) -> None:
        self.config, self.state = config, state
        self.log = state.parent / "relay.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "ccc-statusd"), "start", "--allow-root", "--config", str(self.config)],
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 30
        while "listening on" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the relay did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        self.log.write_text("")  # the next start is told apart by its own lines

    def ccc(self, *args: str, program: str = "ccc") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / program), *args],
            env={**os.environ, "CCC_CONFIG": str(self.config)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def agents(self) -> list[str]:
        listed = self.ccc("agent", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        data = json.loads(listed.stdout)
        rows = data.get("agents", data) if isinstance(data, dict) else data
        return sorted(row["name"] for row in rows)


@pytest.fixture
def relay(tmp_path: Path, group: str) -> Iterator[Relay]:
    etc = tmp_path / "etc"  # the config in a directory of its own, as deploy.md says
    etc.mkdir()
    config = etc / "relay.yaml"
    state = tmp_path / "state"
    config.write_text(CONFIG.format(state=state, group=group, allow=""))
    running = Relay(config, state)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _gid_name(path: Path) -> str:
    return grp.getgrgid(path.stat().st_gid).gr_name


def test_with_socket_group_agents_are_added_and_a_restart_serves_them(
    relay: Relay, group: str
) -> None:
    started = time.monotonic()
    added = relay.ccc("agent", "add", "carol")
    assert added.returncode == 0, added.stderr
    assert time.monotonic() - started < 10  # an answer, not a 30 s wait
    assert (relay.state / "credentials" / "carol.cred").is_file()
    carol = relay.state / "agents" / "carol" / "relay.sock"
    assert _gid_name(carol) == group  # made after Landlock, group looked up before
    assert _gid_name(relay.state / "daemon.sock") == group
    directory = carol.parent.stat().st_ino

    relay.stop()
    relay.start()  # the sockets of existing agents are made after Landlock too
    assert _gid_name(carol) == group
    # In the directory a sandbox may have mounted: the same one as before.
    assert carol.parent.stat().st_ino == directory
    assert relay.ccc("agent", "add", "dave").returncode == 0
    assert _gid_name(relay.state / "agents" / "dave" / "relay.sock") == group
    assert relay.agents() == ["carol", "dave"]
    # Removing an agent removes its directory, within the relay's confinement too.
    assert relay.ccc("agent", "remove", "dave").returncode == 0
    assert not (relay.state / "agents" / "dave").exists()


def test_an_agent_add_that_fails_half_way_leaves_nothing_registered(relay: Relay) -> None:
    planted = relay.state / "agents" / "erin"  # where erin's socket directory goes
    planted.write_text("not a directory")
    started = time.monotonic()
    failed = relay.ccc("agent", "add", "erin")
    assert time.monotonic() - started < 10
    assert failed.returncode != 0
    assert "was not added" in failed.stderr
    assert "is not a directory" in failed.stderr
    assert "erin" not in relay.agents()
    assert not (relay.state / "credentials" / "erin.cred").exists()

    planted.unlink()
    again = relay.ccc("agent", "add", "erin")  # not "already exists"
    assert again.returncode == 0, again.stderr
    assert "erin" in relay.agents()


def test_reload_follows_a_config_saved_by_rename(relay: Relay) -> None:
    subprocess.run(["sed", "-i", "s/allow: \\[\\]/allow: [alice -> bob]/", str(relay.config)],
                   check=True)  # fmt: skip
    assert "alice -> bob" in relay.config.read_text()
    reloaded = relay.ccc("reload", program="ccc-statusd")
    assert reloaded.returncode == 0, reloaded.stderr
    assert "policy" in reloaded.stdout

    # An editor's save: a new file renamed over the old one, then SIGHUP.
    fresh = relay.config.with_name(".relay.yaml.swp")
    fresh.write_text(relay.config.read_text().replace("alice -> bob", "bob -> alice"))
    os.replace(fresh, relay.config)
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "config reloaded" not in relay.log.read_text():
        assert time.monotonic() < deadline, relay.log.read_text()[-2000:]
        time.sleep(0.05)
    assert "reload failed" not in relay.log.read_text()


def test_a_config_in_a_shared_directory_is_refused_with_the_way_out(
    tmp_path: Path, group: str
) -> None:
    config = Path(f"/tmp/ccc-test-{secrets.token_hex(3)}.yaml")
    config.write_text(CONFIG.format(state=tmp_path / "state", group=group, allow=""))
    relay = Relay(config, tmp_path / "state")
    try:
        relay.start()
        assert "keep the config in a directory of its own" in relay.log.read_text()
        subprocess.run(["sed", "-i", "s/allow: \\[\\]/allow: [alice -> bob]/", str(config)],
                       check=True)  # fmt: skip
        refused = relay.ccc("reload", program="ccc-statusd")
        assert refused.returncode != 0
        assert "was replaced" in refused.stderr
        assert "directory of its own" in refused.stderr
    finally:
        relay.stop()
        config.unlink()
