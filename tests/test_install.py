"""``ccc install`` / ``ccc uninstall`` for Claude Code, Codex CLI and Gemini CLI:
real commands (click's runner, or the installed ``ccc``) on real files in tmp dirs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from ccc_relay.cli.ccc import main
from ccc_relay.integrations.fence import parse_fences
from tests.support import BIN, RunningRelay

EVENTS = {"SessionStart": "session-start", "UserPromptSubmit": "user-prompt-submit", "Stop": "stop"}
TOOLS = {"send_message", "read_inbox", "wait_for_message", "list_agents", "whoami"}
USER_SETTINGS = {
    "model": "opus",
    "permissions": {"allow": ["Bash(npm test)"]},
    "hooks": {
        "Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}],
        "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "audit.sh"}]}],
    },
}
CODEX_CONFIG = """\
# My Codex settings: keep this comment.
model = "gpt-5-codex"  # the model I like
approval_policy = "on-request"

[mcp_servers.docs]
# the docs server
command = "npx"
args = ["-y", "mcp-server"]
env = { "API_KEY" = "value" }

[profiles.fast]
model = "o4-mini"
"""


@pytest.fixture(autouse=True)
def install_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where install records the files it created: per test, never the real home."""
    state = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state / "ccc-relay" / "installed.json"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path


def ccc(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def our_hooks(settings: dict[str, Any]) -> dict[str, list[str]]:
    """Per event, every hook command that runs ``... hook <verb>``."""
    return {
        event: [
            hook["command"]
            for group in settings.get("hooks", {}).get(event, [])
            for hook in group["hooks"]
            if hook["command"].endswith(f" hook {verb}")
        ]
        for event, verb in EVENTS.items()
    }


def all_commands(settings: dict[str, Any]) -> list[str]:
    return [
        hook["command"]
        for groups in settings.get("hooks", {}).values()
        for group in groups
        for hook in group["hooks"]
    ]


# --- Claude Code ------------------------------------------------------------------------


def test_install_twice_with_other_flags_keeps_one_entry_each(project: Path) -> None:
    settings = project / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps(USER_SETTINGS, indent=2) + "\n")
    (project / ".mcp.json").write_text(
        json.dumps({"mcpServers": {"other": {"command": "x"}}}, indent=2) + "\n"
    )
    first = ccc("install", "claude", "--project", str(project))
    assert ".mcp.json: updated" in first.output
    assert "settings.json: updated" in first.output

    ccc("install", "claude", "--project", str(project), "--command", "/opt/ccc-relay/bin/ccc")
    merged = read_json(settings)
    assert our_hooks(merged) == {
        event: [f"/opt/ccc-relay/bin/ccc hook {verb}"] for event, verb in EVENTS.items()
    }
    assert all_commands(merged).count("notify-send done") == 1
    assert merged["model"] == "opus" and merged["permissions"] == USER_SETTINGS["permissions"]
    assert merged["hooks"]["PreToolUse"] == USER_SETTINGS["hooks"]["PreToolUse"]
    servers = read_json(project / ".mcp.json")["mcpServers"]
    assert servers["other"] == {"command": "x"}
    assert servers["ccc-relay"] == {
        "type": "stdio",
        "command": "/opt/ccc-relay/bin/ccc",
        "args": ["mcp"],
    }

    before = settings.read_bytes(), (project / ".mcp.json").read_bytes()
    again = ccc(
        "install", "claude", "--project", str(project), "--command", "/opt/ccc-relay/bin/ccc"
    )
    assert "updated" not in again.output and "unchanged" in again.output
    assert (settings.read_bytes(), (project / ".mcp.json").read_bytes()) == before


def test_older_and_hand_written_forms_are_recognised_as_ours(project: Path) -> None:
    """What an older install wrote (no timeout), the same hook twice, and our hook
    inside a group the user wrote: one entry each afterwards, the user's hook kept."""
    settings = project / ".claude" / "settings.json"
    settings.parent.mkdir()
    old = {
        "hooks": {
            "Stop": [
                {"hooks": [{"type": "command", "command": "ccc hook stop"}]},
                {"hooks": [{"type": "command", "command": "/usr/local/bin/ccc hook stop"}]},
            ],
            "SessionStart": [
                {
                    "matcher": "startup",
                    "hooks": [
                        {"type": "command", "command": "echo hello"},
                        {
                            "type": "command",
                            "command": "'/home/me/ccc venv/bin/ccc' hook session-start",
                        },
                    ],
                }
            ],
            "UserPromptSubmit": [
                {
                    "hooks": [
                        {
                            "type": "command",
                            "command": "python -m ccc_relay hook user-prompt-submit",
                        }
                    ]
                }
            ],
        }
    }
    settings.write_text(json.dumps(old, indent=2))
    ccc("install", "claude", "--project", str(project))
    merged = read_json(settings)
    assert our_hooks(merged) == {event: [f"ccc hook {verb}"] for event, verb in EVENTS.items()}
    assert "echo hello" in all_commands(merged)
    # ours were rewritten where they stood: the SessionStart one stays in the user's group
    [group] = merged["hooks"]["SessionStart"]
    assert group["matcher"] == "startup"
    assert [h["command"] for h in group["hooks"]] == ["echo hello", "ccc hook session-start"]
    assert all(
        hook.get("timeout") == 10
        for groups in merged["hooks"].values()
        for g in groups
        for hook in g["hooks"]
        if hook["command"].startswith("ccc ")
    )


def test_a_hook_that_only_looks_alike_is_not_ours(project: Path) -> None:
    settings = project / ".claude" / "settings.json"
    settings.parent.mkdir()
    foreign = {"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "git hook stop"}]}]}}
    settings.write_text(json.dumps(foreign))
    ccc("install", "claude", "--project", str(project))
    assert "git hook stop" in all_commands(read_json(settings))
    ccc("uninstall", "claude", "--project", str(project))
    assert read_json(settings) == foreign


@pytest.mark.parametrize(
    "dumps",
    [
        lambda data: json.dumps(data, indent=2) + "\n",
        lambda data: json.dumps(data, indent=4),
        lambda data: json.dumps(data, indent="\t", ensure_ascii=False) + "\n",
        lambda data: json.dumps(data),
        lambda data: json.dumps(data, separators=(",", ":")) + "\n",
    ],
    ids=["2-spaces", "4-spaces-no-newline", "tabs", "one-line", "compact"],
)
def test_install_then_uninstall_gives_the_original_files_back(project: Path, dumps: Any) -> None:
    settings = project / ".claude" / "settings.json"
    settings.parent.mkdir()
    user = {**USER_SETTINGS, "env": {"GREETING": "grüß dich"}}
    settings.write_text(dumps(user))
    mcp = project / ".mcp.json"
    mcp.write_text(dumps({"mcpServers": {"other": {"command": "x", "args": []}}}))
    originals = settings.read_bytes(), mcp.read_bytes()

    ccc("install", "claude", "--project", str(project))
    ccc("install", "claude", "--project", str(project), "--local", "--command", "/usr/bin/ccc")
    assert (settings.read_bytes(), mcp.read_bytes()) != originals
    removed = ccc("uninstall", "claude", "--project", str(project))
    assert "settings.local.json: removed" in removed.output
    assert (settings.read_bytes(), mcp.read_bytes()) == originals
    assert sorted(p.name for p in (project / ".claude").iterdir()) == ["settings.json"]


def test_uninstall_deletes_only_what_install_created_and_is_idempotent(project: Path) -> None:
    ccc("install", "claude", "--project", str(project))
    assert (project / ".mcp.json").exists() and (project / ".claude" / "settings.json").exists()
    out = ccc("uninstall", "claude", "--project", str(project)).output
    assert ".mcp.json: removed" in out and "settings.json: removed" in out
    assert list(project.iterdir()) == []  # .claude/ too: install made it

    again = ccc("uninstall", "claude", "--project", str(project))
    assert "nothing to uninstall" in again.output

    # A file the user made stays, even when nothing is left in it.
    (project / ".mcp.json").write_text("{}\n")
    (project / ".claude").mkdir()
    ccc("install", "claude", "--project", str(project))
    ccc("uninstall", "claude", "--project", str(project))
    assert (project / ".mcp.json").read_text() == "{}\n"
    assert (project / ".claude").is_dir() and not (project / ".claude" / "settings.json").exists()


def test_without_the_record_uninstall_keeps_the_emptied_files(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record of created files is a hint: when it cannot be kept, install still
    works, and uninstall stays on the safe side (it empties, it does not delete)."""
    blocked = tmp_path / "state-is-a-file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocked))
    ccc("install", "claude", "--project", str(project))
    ccc("uninstall", "claude", "--project", str(project))
    assert read_json(project / ".mcp.json") == {}
    assert read_json(project / ".claude" / "settings.json") == {}


def test_local_and_shared_settings(project: Path) -> None:
    shared = project / ".claude" / "settings.json"
    local = project / ".claude" / "settings.local.json"
    shared.parent.mkdir()
    shared.write_text(json.dumps({"model": "opus"}, indent=2) + "\n")

    out = ccc("install", "claude", "--project", str(project), "--local").output
    assert "settings.local.json: added" in out
    assert read_json(shared) == {"model": "opus"}
    assert our_hooks(read_json(local)) == {e: [f"ccc hook {v}"] for e, v in EVENTS.items()}

    # Switching to shared moves them: Claude Code runs the hooks of both files.
    out = ccc("install", "claude", "--project", str(project), "--settings", "shared").output
    assert "settings.json: updated" in out and "settings.local.json: removed" in out
    assert not local.exists()
    assert our_hooks(read_json(shared)) == {e: [f"ccc hook {v}"] for e, v in EVENTS.items()}

    ccc("install", "claude", "--project", str(project), "--settings", "local")
    assert "hooks" not in read_json(shared)
    conflict = ccc(
        "install", "claude", "--project", str(project), "--local", "--settings", "shared", ok=False
    )
    assert conflict.exit_code == 2 and "contradict" in conflict.output
    help_text = ccc("install", "claude", "--help").output
    assert "settings.local.json" in help_text and "personal" in help_text


def test_dry_run_writes_nothing_and_json_is_one_object(project: Path, install_record: Path) -> None:
    result = ccc("install", "claude", "--project", str(project), "--dry-run", "--json")
    data = json.loads(result.output)
    assert data["dry_run"] is True and data["changed"] is True
    assert data["agent"] == "claude" and data["action"] == "install"
    assert {(Path(f["file"]).name, f["change"]) for f in data["files"]} == {
        (".mcp.json", "added"),
        ("settings.json", "added"),
    }
    assert list(project.iterdir()) == [] and not install_record.exists()

    text = ccc("install", "claude", "--project", str(project), "--dry-run").output
    assert "dry run: nothing was written" in text and list(project.iterdir()) == []

    ccc("install", "claude", "--project", str(project))
    before = (project / ".mcp.json").read_bytes()
    plan = json.loads(
        ccc("uninstall", "claude", "--project", str(project), "--dry-run", "--json").output
    )
    assert {f["change"] for f in plan["files"]} == {"removed"}
    assert (project / ".mcp.json").read_bytes() == before


# --- Codex CLI --------------------------------------------------------------------------


def test_codex_toml_has_the_documented_shape_and_keeps_comments(project: Path) -> None:
    config = project / ".codex" / "config.toml"
    config.parent.mkdir()
    config.write_text(CODEX_CONFIG)

    ccc("install", "codex", "--project", str(project))
    ccc("install", "codex", "--project", str(project), "--command", "/opt/ccc-relay/bin/ccc")
    text = config.read_text()
    assert text.count("[mcp_servers.ccc-relay]") == 1
    for line in CODEX_CONFIG.splitlines():
        assert line in text  # every comment and setting of the user's, as written
    parsed = tomllib.loads(text)
    assert parsed["mcp_servers"]["docs"] == tomllib.loads(CODEX_CONFIG)["mcp_servers"]["docs"]
    # docs/config.md: [mcp_servers.<name>] with command, args; env_vars names the
    # variables Codex forwards (it passes only a short default list otherwise).
    assert parsed["mcp_servers"]["ccc-relay"] == {
        "command": "/opt/ccc-relay/bin/ccc",
        "args": ["mcp"],
        "env_vars": [
            "CCC_SOCKET",
            "CCC_CREDENTIAL",
            "CCC_RELAY_PUBKEY",
            "CCC_CONFIG",
            "CCC_CACHE_DIR",
            "XDG_CACHE_HOME",
        ],
    }
    assert parsed["model"] == "gpt-5-codex" and parsed["profiles"]["fast"]["model"] == "o4-mini"

    ccc("uninstall", "codex", "--project", str(project))
    assert config.read_text() == CODEX_CONFIG
    assert "unchanged" in ccc("uninstall", "codex", "--project", str(project)).output
    assert config.read_text() == CODEX_CONFIG


def test_codex_keeps_what_the_user_added_to_our_table(project: Path) -> None:
    config = project / ".codex" / "config.toml"
    ccc("install", "codex", "--project", str(project))
    config.write_text(config.read_text() + "startup_timeout_sec = 20  # slow disk\n")
    ccc("install", "codex", "--project", str(project), "--command", "ccc-dev")
    server = tomllib.loads(config.read_text())["mcp_servers"]["ccc-relay"]
    assert server["command"] == "ccc-dev" and server["startup_timeout_sec"] == 20
    assert "# slow disk" in config.read_text()
    ccc("uninstall", "codex", "--project", str(project))
    assert not config.exists() and not config.parent.exists()


def test_codex_user_config_follows_codex_home(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    codex_home = tmp_path / "codex-home"
    monkeypatch.setenv("CODEX_HOME", str(codex_home))
    out = ccc("install", "codex", "--user").output
    assert str(codex_home / "config.toml") in out
    assert "ccc-relay" in tomllib.loads((codex_home / "config.toml").read_text())["mcp_servers"]
    assert not (project / ".codex").exists()
    ccc("uninstall", "codex", "--user")
    assert not (codex_home / "config.toml").exists()


# --- Gemini CLI -------------------------------------------------------------------------


def test_gemini_settings_have_the_documented_shape(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = project / ".gemini" / "settings.json"
    settings.parent.mkdir()
    user = {"theme": "GitHub", "mcpServers": {"docs": {"httpUrl": "https://example.com/mcp"}}}
    settings.write_text(json.dumps(user, indent=2) + "\n")
    original = settings.read_bytes()

    ccc("install", "gemini", "--project", str(project), "--command", "ccc-old")
    ccc("install", "gemini", "--project", str(project))
    data = read_json(settings)
    assert data["theme"] == "GitHub" and data["mcpServers"]["docs"] == user["mcpServers"]["docs"]
    # docs/tools/mcp-server.md: mcpServers.<name> with command, args, env ($VAR expanded)
    assert data["mcpServers"]["ccc-relay"] == {
        "command": "ccc",
        "args": ["mcp"],
        "env": {
            "CCC_SOCKET": "$CCC_SOCKET",
            "CCC_CREDENTIAL": "$CCC_CREDENTIAL",
            "CCC_RELAY_PUBKEY": "$CCC_RELAY_PUBKEY",
        },
    }
    ccc("uninstall", "gemini", "--project", str(project))
    assert settings.read_bytes() == original

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    ccc("install", "gemini", "--user")
    assert "ccc-relay" in read_json(home / ".gemini" / "settings.json")["mcpServers"]
    assert (project / ".gemini" / "settings.json").read_bytes() == original


# --- malformed files --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "relative", "content", "problem"),
    [
        ("claude", ".mcp.json", '{"mcpServers": {', "is not valid JSON (line 1"),
        ("claude", ".mcp.json", '["a list"]', "holds a list, not an object"),
        ("claude", ".mcp.json", '{"mcpServers": []}', "'mcpServers' is a list, not an object"),
        ("claude", ".claude/settings.json", '{"hooks": []}', "'hooks' is a list, not an object"),
        (
            "claude",
            ".claude/settings.json",
            '{"hooks": {"Stop": {"command": "x"}}}',
            "'hooks.Stop' is an object, not a list",
        ),
        ("claude", ".claude/settings.local.json", "{,}", "is not valid JSON"),
        ("codex", ".codex/config.toml", "model = \n", "is not valid TOML"),
        ("codex", ".codex/config.toml", 'mcp_servers = "none"\n', "'mcp_servers' is text"),
        (
            "gemini",
            ".gemini/settings.json",
            '{\n  // Gemini allows comments\n  "theme": "GitHub"\n}\n',
            "has comments (line 2 column 3), which Gemini CLI allows but ccc install cannot "
            "keep: it edits plain JSON only",
        ),
        (
            "claude",
            ".mcp.json",
            '{\n  "x": "http://a/b" /* no */\n}\n',
            "is not valid JSON (line 2 column 21: comments are not JSON)",
        ),
    ],
)
def test_a_malformed_file_is_reported_and_nothing_is_written(
    project: Path, agent: str, relative: str, content: str, problem: str
) -> None:
    broken = project / relative
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text(content)
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    result = CliRunner().invoke(main, ["install", agent, "--project", str(project)])
    assert result.exit_code == 4, result.output
    assert f"error: {broken}: {problem}" in result.output
    assert "next: nothing was written" in result.output
    assert broken.read_text() == content
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before

    as_json = CliRunner().invoke(main, ["install", agent, "--project", str(project), "--json"])
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "bad_config_file" and error["exit"] == 4
    assert error["file"] == str(broken) and problem in error["problem"] and error["next"]


def test_a_file_that_cannot_be_written_stops_everything_first(project: Path) -> None:
    """.claude is a file: settings.json cannot be written, so .mcp.json is not either."""
    (project / ".claude").write_text("not a directory")
    for args in (["--dry-run"], []):
        result = ccc("install", "claude", "--project", str(project), *args, ok=False)
        assert result.exit_code == 4
        assert "settings.json: cannot be read or written" in result.output
        assert "next: nothing was written; move that file away" in result.output
    assert sorted(p.name for p in project.iterdir()) == [".claude"]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become nobody"
)
def test_a_directory_this_user_cannot_write_is_named_before_anything_is_written() -> None:
    project = Path(tempfile.mkdtemp(prefix="ccc-install-"))  # /tmp: reachable by nobody
    try:
        project.chmod(0o755)
        (project / ".mcp.json").write_text('{"mcpServers": {}}\n')
        (project / ".mcp.json").chmod(0o666)
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             str(BIN / "ccc"), "install", "claude", "--project", str(project)],
            capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": os.environ["PATH"], "HOME": str(project), "XDG_STATE_HOME": str(project)},
        )  # fmt: skip
        assert result.returncode == 4, result.stderr
        assert "is not writable for this user" in result.stderr
        assert "next: nothing was written" in result.stderr
        assert sorted(p.name for p in project.iterdir()) == [".mcp.json"]
        assert (project / ".mcp.json").read_text() == '{"mcpServers": {}}\n'
    finally:
        shutil.rmtree(project)


def test_a_write_that_fails_after_the_checks_names_the_file_and_its_code(project: Path) -> None:
    """A write the checks could not foresee (here: files may not grow, as on a full
    disk) names the file and the stable code, in text and under --json."""
    import resource
    import signal

    def no_room() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))

    for extra in ([], ["--json"]):
        result = subprocess.run(
            [str(BIN / "ccc"), "install", "claude", "--project", str(project), *extra],
            capture_output=True, text=True, timeout=60, check=False, preexec_fn=no_room,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert f"cannot write {project}/" in result.stderr
        assert result.stderr.rstrip().endswith("[write_failed]")
        if extra:
            error = json.loads(result.stdout)["error"]
            assert error["code"] == "write_failed" and error["exit"] == 1
            assert f"cannot write {project}/" in error["message"]
    assert [p for p in project.rglob("*.tmp")] == []


def test_the_installed_command_refuses_a_bad_command_line(project: Path) -> None:
    result = ccc(
        "install", "claude", "--project", str(project), "--command", "'unbalanced", ok=False
    )
    assert result.exit_code == 2 and "not a command line" in result.output
    assert list(project.iterdir()) == []


# --- what was installed really works ----------------------------------------------------


def _relay_env(relay: RunningRelay, agent: str) -> dict[str, str]:
    return {
        "CCC_SOCKET": str(relay.config.socket_path),
        "CCC_CREDENTIAL": str(relay.config.credentials_dir / f"{agent}.cred"),
    }


def _as_agent_starts_it(
    agent: str, entry: dict[str, Any], relay_env: dict[str, str]
) -> dict[str, str]:
    """The environment each agent gives an MCP server, as its docs and code say.

    Claude Code: its own environment. Codex: HOME, PATH, ... and the names in
    env_vars (rmcp-client/src/utils.rs). Gemini: its environment without the
    names that look secret (environmentSanitization.ts), plus ``env`` with
    $VAR expanded (an unset one to "").
    """
    parent = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **relay_env}
    parent["CCC_CONFIG"] = ""
    if agent == "claude":
        return parent
    if agent == "codex":
        forwarded = ("HOME", "LOGNAME", "PATH", "SHELL", "USER", "LANG", "TERM", "TMPDIR")
        names = (*forwarded, *entry["env_vars"])
        return {name: parent[name] for name in names if name in parent}
    secret = ("TOKEN", "SECRET", "PASSWORD", "KEY", "AUTH", "CREDENTIAL", "CREDS", "CERT")
    env = {k: v for k, v in parent.items() if not any(word in k for word in secret)}
    for name, value in entry["env"].items():
        env[name] = parent.get(value.removeprefix("$"), "")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["claude", "codex", "gemini"])
def test_the_installed_mcp_entry_starts_our_server(
    relay: RunningRelay, project: Path, agent: str
) -> None:
    relay.add_agent("alice")
    ccc("install", agent, "--project", str(project), "--command", str(BIN / "ccc"))
    if agent == "claude":
        entry = read_json(project / ".mcp.json")["mcpServers"]["ccc-relay"]
    elif agent == "codex":
        entry = tomllib.loads((project / ".codex" / "config.toml").read_text())["mcp_servers"][
            "ccc-relay"
        ]
    else:
        entry = read_json(project / ".gemini" / "settings.json")["mcpServers"]["ccc-relay"]
    params = StdioServerParameters(
        command=entry["command"],
        args=entry["args"],
        env=_as_agent_starts_it(agent, entry, _relay_env(relay, "alice")),
    )

    async def scenario() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            assert {t.name for t in tools.tools} == TOOLS
            who = await session.call_tool("whoami", {})
            assert not who.is_error and who.structured_content["agent"] == "alice"

    asyncio.run(scenario())


@pytest.mark.slow
def test_the_installed_hook_command_runs(relay: RunningRelay, project: Path) -> None:
    alice = relay.add_agent("alice")
    relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        sent = a.send("bob", "the API changed, see the ticket")
    ccc("install", "claude", "--project", str(project), "--command", str(BIN / "ccc"))
    [group] = read_json(project / ".claude" / "settings.json")["hooks"]["SessionStart"]
    [hook] = group["hooks"]
    # Claude Code's documented SessionStart input, on stdin of a shell command.
    payload = {
        "session_id": "abc123",
        "transcript_path": str(project / "transcript.jsonl"),
        "cwd": str(project),
        "hook_event_name": "SessionStart",
        "source": "startup",
    }
    done = subprocess.run(
        hook["command"],
        shell=True,
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=hook["timeout"],
        cwd=project,
        env={"PATH": os.environ["PATH"], **_relay_env(relay, "bob"), "CCC_CONFIG": ""},
        check=True,
    )
    out = json.loads(done.stdout)["hookSpecificOutput"]
    assert out["hookEventName"] == "SessionStart"
    [fenced] = [f for f in parse_fences(out["additionalContext"].split("\n\n", 1)[1])]
    assert (fenced.sender, fenced.message_id) == ("alice", sent.id)


def test_gemini_settings_with_comments_are_left_alone_and_said_why(project: Path) -> None:
    settings = project / ".gemini" / "settings.json"
    settings.parent.mkdir()
    content = '{\n  // my theme\n  "theme": "GitHub" /* dark later */\n}\n'
    settings.write_text(content)
    done = subprocess.run([str(BIN / "ccc"), "install", "gemini", "--project", str(project)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 4
    assert done.stderr.startswith(
        f"error: {settings}: has comments (line 2 column 3), which Gemini CLI allows but ccc "
        "install cannot keep: it edits plain JSON only\n  next: nothing was written; add this "
        'by hand: "mcpServers": {"ccc-relay": {"command": "ccc", "args": ["mcp"]'
    ), done.stderr
    assert "not valid JSON" not in done.stderr
    assert settings.read_text() == content
