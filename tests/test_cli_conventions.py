"""The command line's conventions (docs/cli.md), run as a user runs them against a real relay:
one JSON convention, one exit-code table, errors in the user's words, every setting in
check-config, completion and man pages from the command definitions, progress only at a
terminal."""

from __future__ import annotations

import dataclasses
import json
import os
import pty
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from ccc_relay.cli.ccc import main as ccc_main
from ccc_relay.cli.common import CODE_EXITS, EXIT_CODES, exit_code_for, humane
from ccc_relay.cli.render import duration, online
from ccc_relay.cli.statusd import SETTING_NAMES
from ccc_relay.cli.statusd import main as statusd_main
from ccc_relay.client.errors import RelayError, RelayUnavailable, SocketPermissionDenied
from ccc_relay.policy.config import Config, embedded_defaults
from tests.support import BIN, run_cli
from tests.test_cli import ok

ROOT = Path(__file__).resolve().parents[1]

# Every command with --json, and how this test runs it. A command that gains --json
# must be added here: the test below fails until it is.
STREAMS = {"ccc watch", "ccc audit tail", "ccc audit search"}
# Commands whose --json their own tests run (they need a project, an agent tool...).
ELSEWHERE = re.compile(r"ccc (install|uninstall) \w+$")


def _json_commands() -> set[str]:
    found: set[str] = set()

    def walk(command: click.Command, path: str) -> None:
        if any(p.name == "as_json" for p in command.params):
            found.add(path)
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")

    walk(ccc_main, "ccc")
    walk(statusd_main, "ccc-statusd")
    return found


def _one_object(stdout: str) -> dict[str, object]:
    data = json.loads(stdout)  # the whole output is one document
    assert isinstance(data, dict), stdout
    return data


def _json_lines(stdout: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines and all(isinstance(line, dict) for line in lines), stdout
    return lines


@pytest.mark.slow
def test_every_json_output_parses_as_the_convention_says(
    daemon: dict[str, str],
    state_dir: Path,
) -> None:
    env = daemon
    runs: dict[str, tuple[str, ...]] = {
        "ccc agent add": ("ccc", "agent", "add", "carol", "--json"),
        "ccc agent list": ("ccc", "agent", "list", "--json"),
        "ccc policy show": ("ccc", "policy", "show", "--json"),
        "ccc send": ("ccc", "--as", "alice", "send", "bob", "one", "--json"),
        "ccc agents": ("ccc", "--as", "alice", "agents", "--json"),
        "ccc whoami": ("ccc", "--as", "alice", "whoami", "--json"),
        "ccc held": ("ccc", "held", "--json"),
        "ccc status": ("ccc", "status", "--json"),
        "ccc-statusd status": ("ccc-statusd", "status", "--json"),
        "ccc-statusd session list": ("ccc-statusd", "session", "list", "--json"),
        "ccc-statusd check-config": ("ccc-statusd", "check-config", "/dev/null", "--json"),
        "ccc inbox": ("ccc", "--as", "bob", "inbox", "--peek", "--json"),
        "ccc watch": ("ccc", "--as", "bob", "watch", "--json", "--count", "2", "--timeout", "20"),
        "ccc audit verify": ("ccc", "audit", "verify", "--json"),
        "ccc audit tail": ("ccc", "audit", "tail", "-n", "3", "--json"),
        "ccc audit search": ("ccc", "audit", "search", "--event", "accepted", "--json"),
        "ccc peer inbox": ("ccc", "peer", "--as", "bob", "inbox", "--json"),
        # No pair key: the error object is the one document.
        "ccc peer send": ("ccc", "peer", "--as", "bob", "send", "alice", "hi", "--json"),
        "ccc group list": ("ccc", "group", "list", "--json"),
        "ccc doctor": ("ccc", "doctor", "--json"),
        # This relay does not federate: the error object is the one document.
        "ccc federation status": ("ccc", "federation", "status", "--json"),
    }
    may_fail = {"ccc audit verify", "ccc peer send", "ccc doctor", "ccc federation status"}
    present = _json_commands()
    untested = {c for c in present - set(runs) if not ELSEWHERE.match(c)}
    assert not untested, f"add {untested} to this test"
    runs = {command: args for command, args in runs.items() if command in present}
    for name in ("alice", "bob"):
        ok("ccc", "agent", "add", name, env=env)
    ok("ccc", "allow", "alice", "bob", "--both", env=env)
    ok("ccc", "--as", "alice", "send", "bob", "zero", env=env)
    for command, args in runs.items():
        result = run_cli(*args, env=env)
        assert result.stdout, (command, result.stderr)
        if command in STREAMS:
            _json_lines(result.stdout)
        else:
            data = _one_object(result.stdout)
            if result.returncode != 0 and command not in may_fail:
                pytest.fail(f"{command}: {result.stderr}")
            if "error" in data:  # an error is the one object, and names its exit
                assert data["error"]["exit"] == result.returncode  # type: ignore[index]
    # Lists sit inside an object, under a name; an empty list is an object too.
    inbox = _one_object(ok("ccc", "--as", "carol", "inbox", "--json", env=env))
    assert inbox == {"messages": []}
    refused = run_cli("ccc", "--as", "alice", "send", "carol", "x", "--json", env=env)
    assert refused.returncode == 1
    assert _one_object(refused.stdout)["error"] == {
        "code": "forbidden",
        "message": "you may not send to 'carol'",
        "exit": 1,
    }


def test_the_exit_code_table_is_the_documented_one() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| (.+) \|$", doc, re.MULTILINE)
    assert [(int(code), label, meaning) for code, label, meaning in rows] == list(EXIT_CODES)
    codes = [code for code, _, _ in EXIT_CODES]
    assert len(set(codes)) == len(codes)
    # Every relay code lands on a documented exit, and the doc names each mapping.
    for relay_code, exit_code in CODE_EXITS.items():
        assert exit_code in codes
        assert f"`{relay_code}`" in doc
    assert exit_code_for(RelayError("forbidden", "no")) == 1
    assert exit_code_for(RelayUnavailable("gone")) == 3
    assert exit_code_for(SocketPermissionDenied("no entry")) == 8
    assert exit_code_for(RelayError("credential_missing", "x")) == 8
    assert exit_code_for(RelayError("conflict", "x")) == 7
    assert exit_code_for(RelayError("not_found", "x")) == 6


@pytest.mark.slow
def test_the_same_error_leaves_with_the_same_code_from_both_commands(
    daemon: dict[str, str],
    state_dir: Path,
) -> None:
    env = daemon
    ok("ccc", "agent", "add", "alice", env=env)
    # conflict: the same agent twice, however it is found out
    assert run_cli("ccc", "agent", "add", "alice", env=env).returncode == 7
    (state_dir / "credentials" / "alice.cred").unlink()
    again = run_cli("ccc", "agent", "add", "alice", env=env)
    assert again.returncode == 7 and "[conflict]" in again.stderr
    # not found: from ccc and from ccc-statusd
    assert run_cli("ccc", "approve", "m_nosuchmessage1", env=env).returncode == 6
    gone = run_cli("ccc-statusd", "session", "send", "ghost", "hi", env=env)
    assert gone.returncode == 6 and "ghost" in gone.stderr
    # bad config: both commands
    bad = state_dir / "bad.yaml"
    bad.write_text("daemon:\n  security:\n    rate_limt: 5\n")
    for command in (("ccc", "status"), ("ccc-statusd", "status")):
        result = run_cli(*command, "--config", str(bad), env=env)
        assert result.returncode == 4 and "rate_limt" in result.stderr
    # the credential, and no traceback for an error nobody planned for
    assert run_cli("ccc", "--as", "nobody", "whoami", env=env).returncode == 8
    unwritable = run_cli(
        "ccc", "policy", "graph", "-o", str(state_dir / "no" / "such" / "dir.dot"), env=env
    )
    assert unwritable.returncode == 1 and "Traceback" not in unwritable.stderr
    assert "No such file or directory" in unwritable.stderr


@pytest.mark.slow
def test_refusals_are_in_the_users_words(daemon: dict[str, str]) -> None:
    env = daemon
    for name in ("alice", "bob"):
        ok("ccc", "agent", "add", name, env=env)
    ok("ccc", "allow", "alice", "bob", env=env)
    long_thread = run_cli("ccc", "--as", "alice", "send", "bob", "hi", "--thread", "x" * 300,
                          env=env)  # fmt: skip
    assert long_thread.returncode == 1
    assert "--thread must be at most 128 characters [invalid]" in long_thread.stderr
    assert "$." not in long_thread.stderr and "Expected" not in long_thread.stderr
    forbidden = run_cli("ccc", "--as", "bob", "send", "alice", "hi", env=env)
    assert "if it is right, the operator must allow the pair: ccc allow" in forbidden.stderr


def test_schema_jargon_becomes_plain_words() -> None:
    assert humane("invalid frame: Expected `str` of length <= 128 - at `$.thread`") == (
        "invalid frame: --thread must be at most 128 characters"
    )
    assert humane("invalid frame: Expected `int`, got `str` - at `$.seq`") == (
        "invalid frame: 'seq' must be a whole number, not text"
    )
    assert humane("invalid frame: Object contains unknown field `colour`") == (
        "invalid frame: 'colour' is not a field the relay knows"
    )
    assert humane("you may not send to 'x'") == "you may not send to 'x'"


def test_durations_and_online_state_read_as_people_say_them() -> None:
    assert [duration(s) for s in (0, 42, 1567, 3 * 3600 + 120 + 5, 2 * 86400 + 4 * 3600 + 9)] == [
        "0s",
        "42s",
        "26m 7s",
        "3h 2m",
        "2d 4h",
    ]
    assert [online(n) for n in (0, 1, 3, True, False)] == ["no", "yes (1)", "yes (3)", "yes", "no"]


@pytest.mark.slow
def test_status_is_one_command_in_one_form(daemon: dict[str, str]) -> None:
    env = daemon
    ok("ccc", "agent", "add", "alice", env=env)
    status = ok("ccc", "status", env=env)
    assert re.search(r"ccc-statusd running, pid \d+, up (\d+s|\d+m \d+s|\d+m)", status)
    assert re.search(r"alice\s*│\s*no\s*│", status)
    # the other command prints the same (up to the uptime, which moves)
    same = ok("ccc-statusd", "status", env=env)
    numbers = re.compile(r"up [^,]+,|[\d.]+")  # the uptime and counters move
    assert numbers.sub("", same) == numbers.sub("", status)
    assert re.search(r"alice\s*│[^│]*│[^│]*│\s*no\s*│", ok("ccc", "agent", "list", env=env))


def _config_fields(value: object, prefix: str = "") -> list[str]:
    paths = []
    for field in dataclasses.fields(value):  # type: ignore[arg-type]
        inner = getattr(value, field.name)
        if dataclasses.is_dataclass(inner) and not isinstance(inner, type):
            paths += _config_fields(inner, f"{prefix}{field.name}.")
        else:
            paths.append(f"{prefix}{field.name}")
    return paths


def test_check_config_prints_every_setting(tmp_path: Path) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text(
        "daemon:\n  state_dir: /var/lib/ccc-test\n  security:\n    frame_rate_limit: 900/min\n"
        "  anomaly:\n    rules:\n      forbidden: {threshold: 3, quarantine: true}\n"
        "policy:\n  allow: ['alice -> bob']\n"
    )
    result = run_cli("ccc-statusd", "check-config", str(config), "--json")
    settings = json.loads(result.stdout)["settings"]
    fields = _config_fields(embedded_defaults())
    assert "limits.max_message_size" in fields and "audit.retention" in fields
    missing = []
    for path in fields:
        key = SETTING_NAMES.get(path, path)
        short = key.removeprefix("limits.sanitize.").removeprefix("limits.")
        if key not in settings and short not in settings:
            missing.append(path)
    assert not missing, f"check-config leaves out {missing}"
    assert settings["frame_rate_limit"] == "900 frames/min/agent"
    assert "forbidden >= 3 (quarantine)" in settings["anomaly.rules"]
    assert settings["policy"] == ["alice -> bob (allow)"]
    human = run_cli("ccc-statusd", "check-config", str(config)).stdout
    for key in settings:
        assert re.search(rf"^{re.escape(key)}\s", human, re.MULTILINE), key
    assert isinstance(embedded_defaults(), Config)


def test_bash_completion_completes_a_subcommand(tmp_path: Path) -> None:
    script = run_cli("ccc", "completion", "bash")
    assert script.returncode == 0 and "_CCC_COMPLETE" in script.stdout
    # The protocol itself: click answers from the command definitions.
    env = {"COMP_WORDS": "ccc agent re", "COMP_CWORD": "2", "_CCC_COMPLETE": "bash_complete"}
    answer = run_cli("ccc", env=env).stdout.splitlines()
    assert {"plain,release", "plain,remove"} <= set(answer) and "plain,add" not in answer
    # And the way bash runs it: source the script, ask it, read COMPREPLY.
    bash = shutil.which("bash")
    assert bash is not None
    (tmp_path / "ccc.bash").write_text(script.stdout)
    program = (
        f"source {tmp_path / 'ccc.bash'}; COMP_WORDS=(ccc-statusd ch); COMP_CWORD=1; "
        "_ccc_statusd_completion ccc-statusd; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    statusd_script = run_cli("ccc", "completion", "bash", "--command", "ccc-statusd").stdout
    (tmp_path / "ccc.bash").write_text(statusd_script)
    env_path = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([bash, "-c", program], env=env_path, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.stdout.split() == ["check-config"], done.stderr
    for shell in ("zsh", "fish"):
        assert run_cli("ccc", "completion", shell).returncode == 0


def test_man_pages_cover_every_command_and_render(tmp_path: Path) -> None:
    done = run_cli("ccc", "manpages", "-o", str(tmp_path), env={"SOURCE_DATE_EPOCH": "0"})
    assert done.returncode == 0, done.stderr
    expected = {"ccc.1", "ccc-statusd.1", "ccc-agent-add.1", "ccc-statusd-check-config.1",
                "ccc-audit-seal-key-export.1", "ccc-completion.1", "ccc-manpages.1"}  # fmt: skip
    pages = {p.name for p in tmp_path.iterdir()}
    assert expected <= pages

    def count(command: click.Command) -> int:
        subs = command.commands.values() if isinstance(command, click.Group) else []
        return 1 + sum(count(c) for c in subs if not c.hidden)

    assert len(pages) == count(ccc_main) + count(statusd_main)
    for name in pages:
        text = (tmp_path / name).read_text()
        assert text.startswith('.TH "') and '"1970-01-01"' in text
        assert "\n.SH NAME\n" in text and "\n.SH SYNOPSIS\n" in text
        assert "\n.SH EXIT STATUS\n" in text
    add = (tmp_path / "ccc-agent-add.1").read_text()
    assert "ccc\\-agent\\-add \\- Create agent NAME" in add and "\\-\\-credential\\-file" in add
    man = shutil.which("man")
    if man is None:
        return
    rendered = subprocess.run([man, "-l", str(tmp_path / "ccc-agent-add.1")],
                              env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat",
                                   "PAGER": "cat"},
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    text = re.sub(r".\x08", "", rendered.stdout)  # overstrike bold, if any
    assert "SYNOPSIS" in text and "ccc agent add [OPTIONS] NAME" in text
    assert "--credential-file FILE" in text and "EXIT STATUS" in text


@pytest.mark.slow
def test_progress_shows_on_a_terminal_and_nowhere_else(
    daemon: dict[str, str],
) -> None:
    env = daemon
    ok("ccc", "agent", "add", "bob", env=env)
    args = [str(BIN / "ccc"), "--as", "bob", "watch", "--timeout", "1.5"]
    quiet = run_cli("ccc", "--as", "bob", "watch", "--timeout", "1.5", env=env)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(args, env={**os.environ, **env, "TERM": "xterm"},
                                stdout=subprocess.PIPE, stderr=follower)  # fmt: skip
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(20) == 0
        assert proc.stdout is not None and proc.stdout.read() == b""
        proc.stdout.close()
    finally:
        os.close(leader)
    assert b"waiting for messages" in seen


def test_check_config_prints_a_timeout_in_the_unit_it_is_given_in(tmp_path: Path) -> None:
    shown = {}
    for written in ("24h", "36h", "2d", "90m", "45s"):
        config = tmp_path / f"{written}.yaml"
        config.write_text(f"daemon:\n  security:\n    session_timeout: {written}\n")
        done = run_cli("ccc-statusd", "check-config", str(config), "--json")
        assert done.returncode == 0, done.stderr
        shown[written] = json.loads(done.stdout)["settings"]["session_timeout"]
    assert shown == {"24h": "24h", "36h": "36h", "2d": "2d", "90m": "90m", "45s": "45s"}
    human = run_cli("ccc-statusd", "check-config", str(tmp_path / "24h.yaml")).stdout
    assert re.search(r"^session_timeout +24h$", human, re.MULTILINE), human
