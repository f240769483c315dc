"""Names typed wrong: ``ccc deny`` with nothing to remove fails like ``ccc allow``, and a
mistyped name is met with the near ones, never with advice that creates the typo
(docs/cli.md, "Errors"). Run as a user runs them, against a real relay."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.relay_process import RelayProcess
from tests.support import run_cli
from tests.test_cli import ok

pytestmark = pytest.mark.slow


def _run(*args: str, env: dict[str, str], rc: int) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, env=env)
    assert result.returncode == rc, (args, result.returncode, result.stdout, result.stderr)
    return result


def test_deny_with_nothing_to_remove_is_not_found(daemon: dict[str, str]) -> None:
    env = daemon
    for name in ("alice", "bob"):
        ok("ccc", "agent", "add", name, env=env)
    # Not an agent: as 'ccc allow' says it, with the near names.
    for command in ("allow", "deny"):
        typo = _run("ccc", command, "alice", "bbo", env=env, rc=6)
        assert typo.stderr == (
            "error: no agent named 'bbo'; did you mean 'bob'? 'ccc agent list' shows the "
            "agents [not_found]\n"
        )
    zed = _run("ccc", "deny", "alice", "zed", env=env, rc=6)
    assert "no agent named 'zed'; 'ccc agent list' shows the agents" in zed.stderr
    # Both agents, no rule: nothing was removed, and it says so.
    none = _run("ccc", "deny", "alice", "bob", env=env, rc=6)
    assert none.stderr == (
        "error: no rule alice -> bob to remove ('ccc policy show' lists them) [not_found]\n"
    )
    quiet = _run("ccc", "deny", "alice", "bob", "--ignore-not-found", env=env, rc=0)
    assert quiet.stdout == "" and "nothing removed: no rule alice -> bob" in quiet.stderr
    ok("ccc", "allow", "alice", "bob", env=env)
    both = _run("ccc", "deny", "alice", "bob", "--both", env=env, rc=0)
    assert both.stdout == "denied alice -> bob (rule removed)\n"
    assert "note: there was no rule bob -> alice to remove" in both.stderr
    rules = json.loads(ok("ccc", "policy", "show", "--json", env=env))["rules"]
    assert rules == []


def test_deny_of_a_rule_from_the_config_file_says_to_edit_it() -> None:
    state = Path(f"/tmp/ccc-n-{os.getpid()}-{time.monotonic_ns() % 10**8}")
    state.mkdir(mode=0o700)
    relay = RelayProcess(state)
    relay.config.write_text(relay.config.read_text() + "policy:\n  allow: [alice -> bob]\n")
    try:
        relay.start()
        relay.add_agent("alice")
        relay.add_agent("bob")
        env = {"CCC_CONFIG": str(relay.config), "CCC_SOCKET": ""}
        kept = _run("ccc", "deny", "alice", "bob", env=env, rc=7)
        assert "alice -> bob is allowed by the config file" in kept.stderr
        assert "'ccc-statusd reload'" in kept.stderr and "[conflict]" in kept.stderr
    finally:
        relay.stop()
        subprocess.run(["rm", "-rf", str(state)], check=False)


def test_a_mistyped_name_gets_the_near_ones_not_advice_to_create_it(
    daemon: dict[str, str],
) -> None:
    env = daemon
    for name in ("alice", "bob"):
        ok("ccc", "agent", "add", name, env=env)
    typo = _run("ccc", "--as", "alcie", "send", "bob", "hi", env=env, rc=8)
    line = typo.stderr.strip()
    assert "no agent 'alcie' here" in line and "did you mean 'alice'?" in line
    assert "'ccc agent list' shows the agents" in line
    assert line.endswith("[credential_missing]")
    assert line.index("did you mean") < line.index("ccc agent add alcie")
    far = _run("ccc", "--as", "zzzz", "inbox", "--json", env=env, rc=8)
    error = json.loads(far.stdout)["error"]
    assert error["code"] == "credential_missing" and "did you mean" not in error["message"]
    for name in ("agent", "rotate"), ("agent", "remove"), ("agent", "release"):
        wrong = _run("ccc", *name, "alise", env=env, rc=6)
        assert "did you mean 'alice'?" in wrong.stderr
    # The agent side: the relay answers a name that does not exist as one it may not
    # write to (it reveals nothing); the hint says to check the name first.
    for to in ("bobb", "bob", "@nogroup"):
        refused = _run("ccc", "--as", "alice", "send", to, "hi", env=env, rc=1)
        assert refused.stderr.splitlines()[1] == (
            "  next: check the name (the operator's 'ccc agent list' shows them); if it is "
            "right, the operator must allow the pair: ccc allow SENDER RECIPIENT"
        )
