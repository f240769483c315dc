"""The two commands as a newcomer uses them, in two terminals (README quickstart)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import BIN, run_cli

pytestmark = pytest.mark.slow


def ok(*args: str, env: dict[str, str], input: str | None = None) -> str:
    result = run_cli(*args, env=env, input=input)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def test_quickstart(daemon: dict[str, str], state_dir: Path) -> None:
    env = daemon
    out = ok("ccc", "agent", "add", "alice", env=env)
    cred = state_dir / "credentials" / "alice.cred"
    assert str(cred) in out and oct(cred.stat().st_mode & 0o777) == "0o600"
    ok("ccc", "agent", "add", "bob", env=env)
    assert "allowed bob -> alice" in ok("ccc", "allow", "alice", "bob", "--both", env=env)
    assert "alice -> bob" in ok("ccc", "policy", "show", env=env)

    sent = json.loads(
        ok("ccc", "--as", "alice", "send", "bob", "the API changed", "--json", env=env)
    )
    ok("ccc", "--as", "alice", "send", "bob", env=env, input="from stdin\n")
    peek = json.loads(ok("ccc", "--as", "bob", "inbox", "--peek", "--json", env=env))
    assert [m["body"] for m in peek["messages"]] == ["the API changed", "from stdin\n"]
    inbox = json.loads(ok("ccc", "--as", "bob", "inbox", "--json", env=env))["messages"]
    assert inbox[0]["id"] == sent["id"] and inbox[0]["from"] == "alice"
    assert json.loads(ok("ccc", "--as", "bob", "inbox", "--json", env=env)) == {"messages": []}

    # Inside a container the same works from the environment alone.
    container_env = {
        **env,
        "CCC_SOCKET": str(state_dir / "daemon.sock"),
        "CCC_CREDENTIAL": str(state_dir / "credentials" / "bob.cred"),
    }
    assert json.loads(ok("ccc", "whoami", "--json", env=container_env))["agent"] == "bob"
    agents = json.loads(ok("ccc", "agents", "--json", env=container_env))["agents"]
    assert agents == [{"name": "alice", "online": False, "may_send": True, "may_receive": True}]

    status = json.loads(ok("ccc", "status", "--json", env=env))
    assert status["counters"]["accepted"] == 2 and status["counters"]["acked"] == 2
    counters = status["counters"]
    assert counters["commits"] >= 2 and 0 <= counters["slow_commits"] <= counters["commits"]
    assert counters["longest_commit_ms"] > 0 and counters["slow_commit_ms"] == 5
    human = ok("ccc", "status", env=env)
    flushes = r"store: \d+ commits; \d+ of their flushes took 5 ms or more, the longest \d"
    assert re.search(flushes, human)
    assert json.loads(ok("ccc-statusd", "status", "--json", env=env))["running"] is True
    audit = (state_dir / "audit").iterdir()
    events = [json.loads(line)["event"] for path in audit for line in path.read_text().splitlines()]
    assert events.count("accepted") == 2 and "policy_changed" in events


def test_watch_prints_messages_as_they_arrive(daemon: dict[str, str]) -> None:
    env = daemon
    for name in ("alice", "bob"):
        ok("ccc", "agent", "add", name, env=env)
    ok("ccc", "allow", "alice", "bob", env=env)
    watcher = subprocess.Popen(
        [str(BIN / "ccc"), "--as", "bob", "watch", "--json", "--count", "1"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        ok("ccc", "--as", "alice", "send", "bob", "live", env=env)
        out, _ = watcher.communicate(timeout=20)
    finally:
        watcher.kill()
    assert json.loads(out)["body"] == "live"
    assert watcher.returncode == 0


def test_errors_print_the_relays_sentence_and_exit_non_zero(daemon: dict[str, str]) -> None:
    env = daemon
    ok("ccc", "agent", "add", "alice", env=env)
    refused = run_cli("ccc", "--as", "alice", "send", "nobody", "hi", env=env)
    assert refused.returncode == 1
    assert "you may not send to 'nobody' [forbidden]" in refused.stderr
    as_json = run_cli("ccc", "--as", "alice", "send", "nobody", "hi", "--json", env=env)
    assert json.loads(as_json.stdout)["error"]["code"] == "forbidden"
    duplicate = run_cli("ccc", "agent", "add", "alice", env=env)
    assert duplicate.returncode == 7 and "already exists" in duplicate.stderr  # conflict
    assert "ccc agent rotate alice" in duplicate.stderr
    bad_name = run_cli("ccc", "agent", "add", "../etc", env=env)
    assert bad_name.returncode == 2 and "agent name" in bad_name.stderr
    missing = run_cli("ccc", "--as", "zed", "inbox", env=env)
    assert missing.returncode == 8 and "[credential_missing]" in missing.stderr
    assert "relay_unavailable" not in missing.stderr and "does not exist" in missing.stderr
    assert "ccc agent add zed" in missing.stderr and "zed.cred" in missing.stderr
    no_cred = run_cli("ccc", "inbox", env=env)
    assert no_cred.returncode == 8 and "CCC_CREDENTIAL" in no_cred.stderr
    unknown_allow = run_cli("ccc", "allow", "alice", "ghost", env=env)
    assert unknown_allow.returncode == 6 and "no agent named 'ghost'" in unknown_allow.stderr


def test_operator_session_commands(daemon: dict[str, str]) -> None:
    env = daemon
    ok("ccc", "agent", "add", "bob", env=env)
    assert "accepted" in ok(
        "ccc-statusd", "session", "send", "bob", "hello from the operator", env=env
    )
    assert json.loads(ok("ccc-statusd", "session", "list", "--json", env=env)) == {"sessions": []}
    [message] = json.loads(ok("ccc", "--as", "bob", "inbox", "--json", env=env))["messages"]
    assert message["from"] == "operator"
    rows = json.loads(ok("ccc", "agent", "list", "--json", env=env))["agents"]
    assert [r["name"] for r in rows] == ["bob"]
    ok("ccc", "agent", "rotate", "bob", env=env)
    ok("ccc", "--as", "bob", "whoami", env=env)  # the rewritten file works
    ok("ccc", "agent", "remove", "bob", env=env)
    assert json.loads(ok("ccc", "agent", "list", "--json", env=env)) == {"agents": []}


def test_commands_without_a_relay_say_so(state_dir: Path) -> None:
    env = {"CCC_CACHE_DIR": str(state_dir), "CCC_CONFIG": ""}
    result = run_cli("ccc", "status", env=env)
    assert result.returncode == 3 and "ccc-statusd start" in result.stdout
    assert "not running" in result.stdout
    same = run_cli("ccc-statusd", "status", env=env)
    assert (same.returncode, same.stdout) == (result.returncode, result.stdout)
    as_json = run_cli("ccc", "status", "--json", env=env)
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["running"] is False
    assert not list(state_dir.glob("credentials/*"))


def test_send_falls_back_to_direct_only_when_configured_and_says_so(state_dir: Path) -> None:
    """No relay runs. Plain `ccc send` fails (exit 3); with CCC_FALLBACK=direct the
    message reaches alice's direct listener, with a warning on stderr."""
    from ccc_relay.credentials import Credential, write_credential_file

    env = {
        "CCC_CACHE_DIR": str(state_dir),
        "CCC_CONFIG": "",
        "CCC_SOCKET": "",
        "CCC_CREDENTIAL": "",
        "CCC_FALLBACK": "",
    }
    paired = run_cli("ccc", "peer", "pair", "alice", "bob", env=env)
    assert paired.returncode == 0, paired.stderr
    for name in ("alice", "bob"):
        write_credential_file(state_dir / f"{name}.cred", name, Credential.generate())
    alice_env = {**env, "CCC_CREDENTIAL": str(state_dir / "alice.cred")}
    bob_env = {
        **env,
        "CCC_CREDENTIAL": str(state_dir / "bob.cred"),
        "CCC_SOCKET": str(state_dir / "no-relay.sock"),
    }
    listener = subprocess.Popen(
        [str(BIN / "ccc"), "peer", "listen"],
        env={**os.environ, **alice_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not list(state_dir.glob("peer/shared/alice.sock")):
            assert listener.poll() is None, listener.stderr.read() if listener.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        plain = run_cli("ccc", "send", "alice", "hi", env=bob_env)
        assert plain.returncode == 3 and "no relay" in plain.stderr
        fallback = run_cli(
            "ccc",
            "send",
            "alice",
            "hi over the fallback",
            env={**bob_env, "CCC_FALLBACK": "direct"},
        )
        assert fallback.returncode == 0, fallback.stderr
        assert "DIRECT mode" in fallback.stderr and "(direct)" in fallback.stdout
        inbox = run_cli("ccc", "peer", "inbox", env=alice_env)
        assert "hi over the fallback" in inbox.stdout
    finally:
        listener.terminate()
        listener.wait(10)
        if listener.stderr:
            listener.stderr.close()


def test_explicit_beats_implicit_and_times_are_human(
    daemon: dict[str, str], state_dir: Path
) -> None:
    """--as wins over CCC_CREDENTIAL (the audit names who acted); --as with
    --credential is refused; --reply-to and --at speak the user's words."""
    env = daemon
    ok("ccc", "agent", "add", "alice", env=env)
    ok("ccc", "agent", "add", "bob", env=env)
    ok("ccc", "allow", "alice", "bob", "--both", env=env)
    alice_env = {**env, "CCC_CREDENTIAL": str(state_dir / "credentials" / "alice.cred")}
    assert ok("ccc", "--as", "bob", "whoami", env=alice_env).startswith("bob ")
    both = run_cli(
        "ccc", "--as", "bob", "--credential", alice_env["CCC_CREDENTIAL"], "whoami", env=env
    )
    assert both.returncode == 2 and "not both" in both.stderr
    bad = run_cli("ccc", "--as", "alice", "send", "bob", "hi", "--reply-to", "nonsense", env=env)
    assert bad.returncode == 2 and "is not a message id" in bad.stderr
    assert "$." not in bad.stderr and "pattern" not in bad.stderr
    later = ok("ccc", "--as", "alice", "send", "bob", "later", "--at", "10m", env=env)
    assert later.startswith("accepted ")
    from datetime import UTC, datetime, timedelta

    in_two_days = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%MZ")
    iso = ok("ccc", "--as", "alice", "send", "bob", "later", "--at", in_two_days, env=env)
    assert iso.startswith("accepted ")
    nonsense = run_cli("ccc", "--as", "alice", "send", "bob", "x", "--at", "soonish", env=env)
    assert nonsense.returncode == 2 and "ISO 8601" in nonsense.stderr
    assert "no messages" in run_cli("ccc", "--as", "bob", "inbox", env=env).stderr  # not due yet
