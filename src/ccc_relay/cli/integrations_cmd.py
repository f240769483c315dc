"""``ccc mcp``, ``ccc hook EVENT`` and ``ccc install claude``: the Claude Code side."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ccc_relay.client.endpoint import Endpoint


def _endpoint_factory(ctx: click.Context) -> object:
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

    build_server(_endpoint_factory(ctx)).run("stdio")  # type: ignore[arg-type]


@click.command()
@click.argument("event", type=click.Choice(["session-start", "user-prompt-submit", "stop"]))
@click.pass_context
def hook(ctx: click.Context, event: str) -> None:
    """Claude Code hook: read the hook JSON on stdin, print what Claude Code expects.

    session-start / user-prompt-submit add waiting messages (fenced) as context;
    stop keeps the turn going while messages wait. Never fails the session: with
    no relay reachable it prints nothing and exits 0.
    """
    from ccc_relay.integrations.hooks import run_hook

    try:
        stdin_text = sys.stdin.read(1024 * 1024) if not sys.stdin.isatty() else ""
    except (OSError, UnicodeDecodeError):
        stdin_text = ""
    output = run_hook(event, stdin_text, _endpoint_factory(ctx))  # type: ignore[arg-type]
    if output:
        click.echo(output)


@click.group()
def install() -> None:
    """Set up integrations."""


@install.command("claude")
@click.option(
    "--project",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The Claude Code project to set up.",
)
@click.option(
    "--command",
    "command",
    default="ccc",
    show_default=True,
    help="How Claude Code should invoke ccc (e.g. a full path).",
)
def install_claude_cmd(project: Path, command: str) -> None:
    """Add the ccc-relay MCP server (.mcp.json) and hooks (.claude/settings.json).

    Merges with what is there; running it again changes nothing.
    """
    from ccc_relay.integrations.install import InstallError, install_claude

    if not project.is_dir():
        raise click.ClickException(f"{project} is not a directory")
    try:
        changes = install_claude(project, command=command)
    except InstallError as exc:
        raise click.ClickException(str(exc)) from None
    for change in changes:
        click.echo(change)
    if not changes:
        click.echo("already set up; nothing changed")
