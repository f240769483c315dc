"""``ccc mcp``, ``ccc hook EVENT``, ``ccc install`` and ``ccc uninstall``: the agents' side.

``install``/``uninstall`` map flags to the planners in ``integrations/install_*``,
print one line per file (or one JSON object) and write only when every file
was understood and ``--dry-run`` is not given.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ccc_relay.client.endpoint import Endpoint

if TYPE_CHECKING:
    from ccc_relay.integrations.install import FileEdit


def _endpoint_factory(ctx: click.Context) -> Callable[[], Endpoint]:
    obj = ctx.find_root().obj

    def factory() -> Endpoint:
        from ccc_relay.client.endpoint import host_config

        return Endpoint.resolve(
            socket_path=obj.socket_path,
            credential_file=obj.credential,
            as_agent=obj.as_agent,
            config=host_config(obj.config_path),
        )

    return factory


@click.command()
@click.pass_context
def mcp(ctx: click.Context) -> None:
    """Serve the relay as MCP tools on stdin/stdout (for Claude Code's .mcp.json).

    Tools: send_message, read_inbox, wait_for_message, list_agents, whoami.
    Uses CCC_SOCKET and CCC_CREDENTIAL like every other agent-side command.
    """
    from ccc_relay.integrations.mcp_server import build_server

    build_server(_endpoint_factory(ctx)).run("stdio")


@click.command()
@click.argument("event", type=click.Choice(["session-start", "user-prompt-submit", "stop"]))
@click.pass_context
def hook(ctx: click.Context, event: str) -> None:
    """Claude Code hook: read the hook JSON on stdin, print what Claude Code expects.

    session-start / user-prompt-submit add waiting messages (fenced) as context;
    stop keeps the turn going while messages wait. Never fails the session: with
    no relay reachable it prints nothing and exits 0.
    """
    from ccc_relay.integrations.hooks import main as hook_main

    hook_main(event, _endpoint_factory(ctx))


# --- install / uninstall ------------------------------------------------------------


def _command_words(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from ccc_relay.integrations.install import command_words

    try:
        command_words(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


_project = click.option(
    "--project",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The project directory.",
)
_command = click.option(
    "--command",
    "command",
    default="ccc",
    show_default=True,
    callback=_command_words,
    help="How the agent should start ccc: a full path such as /opt/ccc-relay/bin/ccc, "
    "split into words as a shell would (an earlier install with another --command is "
    "replaced).",
)
_dry_run = click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
_json = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
_user = click.option(
    "--user",
    is_flag=True,
    help="Change the user's own config (in the home directory) instead of the project's.",
)


def _run(
    agent: str, action: str, plan: Callable[[], list[FileEdit]], *, dry_run: bool, as_json: bool
) -> None:
    """Plan every file, then write all or nothing, then report one line per file."""
    from ccc_relay.cli.common import EXIT_CONFIG, EXIT_REFUSED, emit_json, fail
    from ccc_relay.cli.terminal import shown
    from ccc_relay.integrations.install import InstallError, apply, check_writable

    try:
        edits = [edit for edit in plan() if edit.old is not None or edit.new is not None]
        if dry_run:
            check_writable(edits)
        else:
            apply(edits)
    except InstallError as exc:
        if as_json:
            error = {**exc.as_dict(), "file": str(exc.path.absolute()), "exit": EXIT_CONFIG}
            emit_json({"error": error})
        problem = shown(f"{exc.path}: {exc.problem}", one_line=True)
        click.echo(f"error: {problem}\n  next: {exc.next_step}", err=True)
        sys.exit(EXIT_CONFIG)
    except OSError as exc:
        message = f"cannot write {exc.filename or 'a file'}: {exc.strerror or exc}"
        fail(message, EXIT_REFUSED, code="write_failed")
    if as_json:
        emit_json(
            {
                "agent": agent,
                "action": action,
                "dry_run": dry_run,
                "changed": any(edit.change != "unchanged" for edit in edits),
                "files": [{**edit.as_dict(), "file": str(edit.path.absolute())} for edit in edits],
            }
        )
        return
    for edit in edits:
        click.echo(f"{edit.path}: {edit.change} ({edit.detail})")
    if not edits:
        click.echo(f"nothing to {action}: no file holds ccc-relay's entries")
    if dry_run:
        click.echo("dry run: nothing was written")


@click.group()
def install() -> None:
    """Give an agent the relay: the MCP server (and, for Claude Code, the hooks).

    Each command merges into the agent's own config files, keeps everything the
    user wrote, replaces what an earlier install wrote (whatever its flags) and
    changes nothing when run again. A malformed file stops it before anything
    is written. 'ccc uninstall AGENT' takes it all out again.
    """


@click.group()
def uninstall() -> None:
    """Take out what 'ccc install AGENT' added; everything else stays as it was."""


@install.command("claude")
@_project
@_command
@click.option(
    "--settings",
    "scope",
    type=click.Choice(["shared", "local"]),
    default=None,
    help="Where the hooks go: 'shared' is .claude/settings.json (committed, for "
    "everyone on the project; the default), 'local' is .claude/settings.local.json "
    "(personal, not committed).",
)
@click.option("--local", is_flag=True, help="Same as --settings local.")
@_dry_run
@_json
def install_claude_cmd(
    project: Path,
    command: str,
    scope: str | None,
    local: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Add the MCP server and the hooks to a Claude Code project.

    The MCP server 'ccc-relay' ('ccc mcp') goes to .mcp.json, the one project
    file Claude Code reads MCP servers from. The hooks (SessionStart,
    UserPromptSubmit, Stop: 'ccc hook EVENT') go to the shared settings file or,
    with --local, the personal one, and out of the other, so each runs once.
    """
    from ccc_relay.integrations import install_claude

    if local and scope == "shared":
        raise click.UsageError("--local and --settings shared contradict each other")
    chosen: install_claude.Scope = "local" if local or scope == "local" else "shared"
    _run(
        "claude",
        "install",
        lambda: install_claude.install(project, command=command, scope=chosen),
        dry_run=dry_run,
        as_json=as_json,
    )


@uninstall.command("claude")
@_project
@click.option(
    "--command",
    "command",
    default="ccc",
    show_default=True,
    help="The --command given to install, if its program is not called ccc.",
)
@_dry_run
@_json
def uninstall_claude_cmd(project: Path, command: str, dry_run: bool, as_json: bool) -> None:
    """Remove the MCP server and the hooks from a Claude Code project.

    Both settings files (shared and local) are cleaned; a file install created
    and that is left empty is deleted.
    """
    from ccc_relay.integrations import install_claude

    _run(
        "claude",
        "uninstall",
        lambda: install_claude.uninstall(project, command=command),
        dry_run=dry_run,
        as_json=as_json,
    )


@install.command("codex")
@_project
@_user
@_command
@_dry_run
@_json
def install_codex_cmd(
    project: Path, user: bool, command: str, dry_run: bool, as_json: bool
) -> None:
    """Add the MCP server to OpenAI Codex CLI's config.toml.

    It is the table [mcp_servers.ccc-relay] in .codex/config.toml (or, with
    --user, $CODEX_HOME/config.toml); Codex reads a project's file only once
    you trust the project. Codex has no hooks: messages reach the model through the MCP tools only.
    The entry forwards CCC_SOCKET, CCC_CREDENTIAL and the other relay variables
    by name (env_vars); comments and layout of the file are kept.
    """
    from ccc_relay.integrations import install_codex

    _run(
        "codex",
        "install",
        lambda: install_codex.install(project, command=command, user=user),
        dry_run=dry_run,
        as_json=as_json,
    )


@uninstall.command("codex")
@_project
@_user
@_dry_run
@_json
def uninstall_codex_cmd(project: Path, user: bool, dry_run: bool, as_json: bool) -> None:
    """Remove [mcp_servers.ccc-relay] from Codex's config.toml."""
    from ccc_relay.integrations import install_codex

    _run(
        "codex",
        "uninstall",
        lambda: install_codex.uninstall(project, user=user),
        dry_run=dry_run,
        as_json=as_json,
    )


@install.command("gemini")
@_project
@_user
@_command
@_dry_run
@_json
def install_gemini_cmd(
    project: Path, user: bool, command: str, dry_run: bool, as_json: bool
) -> None:
    """Add the MCP server to Gemini CLI's settings.json.

    It is mcpServers.ccc-relay in .gemini/settings.json (or, with --user,
    ~/.gemini/settings.json). Gemini CLI starts it only in a folder it trusts. Gemini has no hooks:
    messages reach the model through the MCP tools only. The entry passes
    CCC_SOCKET, CCC_CREDENTIAL and CCC_RELAY_PUBKEY explicitly (Gemini hides
    variables named like secrets from MCP servers).
    """
    from ccc_relay.integrations import install_gemini

    _run(
        "gemini",
        "install",
        lambda: install_gemini.install(project, command=command, user=user),
        dry_run=dry_run,
        as_json=as_json,
    )


@uninstall.command("gemini")
@_project
@_user
@_dry_run
@_json
def uninstall_gemini_cmd(project: Path, user: bool, dry_run: bool, as_json: bool) -> None:
    """Remove mcpServers.ccc-relay from Gemini CLI's settings.json."""
    from ccc_relay.integrations import install_gemini

    _run(
        "gemini",
        "uninstall",
        lambda: install_gemini.uninstall(project, user=user),
        dry_run=dry_run,
        as_json=as_json,
    )
