"""Config reload while running, and the audit options the config controls."""

from __future__ import annotations

import grp
import json
import os
import stat
from pathlib import Path

import pytest

from ccc_relay.client import RelayError
from ccc_relay.policy.config import load_config
from tests.support import FakeClock
from tests.test_relay import audit_lines, wait_for


def write_config(path: Path, state: Path, extra: str = "") -> Path:
    path.write_text(f"daemon:\n  state_dir: {state}\n{extra}")
    return path


def test_reload_applies_policy_and_refuses_a_bad_file(relay_factory, state_dir: Path) -> None:
    path = write_config(state_dir / "relay.yaml", state_dir)
    relay = relay_factory(config=load_config(path))
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    with relay.client(alice) as a, pytest.raises(RelayError, match="forbidden"):
        a.send("bob", "not yet")
    write_config(path, state_dir, "policy:\n  allow: [alice -> bob]\n")
    result = relay.admin.request("reload")
    assert result == {"applied": ["policy"], "restart_needed": []}
    with relay.client(alice) as a:
        a.send("bob", "now allowed by the file")
    write_config(path, state_dir, "  security:\n    rate_limit: lots\n")
    with pytest.raises(RelayError, match=r"daemon\.security\.rate_limit"):
        relay.admin.request("reload")
    with relay.client(alice) as a:
        a.send("bob", "the running config was kept")
    write_config(path, state_dir, f"  socket_path: {state_dir}/other.sock\n"
                 "policy:\n  allow: [alice -> bob]\n")  # fmt: skip
    assert relay.admin.request("reload")["restart_needed"] == ["socket_path"]
    wait_for(lambda: {"config_reloaded", "config_reload_failed"}
             <= {x["event"] for x in audit_lines(relay)})  # fmt: skip


def test_reload_without_a_file_says_why(relay) -> None:
    with pytest.raises(RelayError, match="embedded defaults"):
        relay.admin.request("reload")


def test_expired_sessions_are_audited(relay_factory, clock: FakeClock) -> None:
    relay = relay_factory(clock=clock, session_timeout=60)
    alice = relay.add_agent("alice")
    with relay.client(alice):
        pass
    clock.advance(61)
    relay.call(relay.daemon.relay.expire_sessions)
    wait_for(lambda: any(x["event"] == "session_expired" for x in audit_lines(relay)))


def test_log_all_messages_false_keeps_only_size_and_hash(relay_factory, state_dir: Path) -> None:
    path = write_config(state_dir / "relay.yaml", state_dir,
                        "  audit:\n    log_all_messages: false\n")  # fmt: skip
    relay = relay_factory(config=load_config(path))
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        a.send("bob", "a private body")
    wait_for(lambda: any(x["event"] == "accepted" for x in audit_lines(relay)))
    [line] = [x for x in audit_lines(relay) if x["event"] == "accepted"]
    assert "body" not in line and line["size"] == len("a private body")
    assert len(line["sha256"]) == 64
    for path in relay.config.audit.log_path.iterdir():
        assert "a private body" not in path.read_text()


def test_audit_files_get_the_configured_group(relay_factory, state_dir: Path) -> None:
    group = grp.getgrgid(os.getgroups()[0] if os.getgroups() else os.getgid())
    path = write_config(state_dir / "relay.yaml", state_dir,
                        f"  audit:\n    log_group: {group.gr_name}\n")  # fmt: skip
    relay = relay_factory(config=load_config(path))
    relay.add_agent("alice")
    for log in relay.config.audit.log_path.glob("audit-*.jsonl"):
        info = log.stat()
        assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == group.gr_gid
        assert json.loads(log.read_text().splitlines()[0])["seq"] >= 1
