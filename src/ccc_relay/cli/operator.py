"""Operator commands (``ccc agent ...``, ``ccc allow``, ``ccc status``...).

They speak to the admin socket, which only the relay's own user can open.
Credentials are made here, on the operator's side: the credential file is
written locally and only its SHA-256 travels to the daemon.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from ccc_relay.cli.common import (
    EXIT_CONFLICT,
    EXIT_UNAVAILABLE,
    OperatorClient,
    config_option,
    emit_json,
    fail,
    handle_errors,
    load_host_config,
    start_command,
)
from ccc_relay.client.base import RelayError, RelayUnavailable
from ccc_relay.credentials import Credential, write_credential_file
from ccc_relay.policy.config import Config
from ccc_relay.protocol.names import agent_name_problem


def _admin(config_path: str | None) -> tuple[Config, OperatorClient]:
    config = load_host_config(config_path)
    return config, OperatorClient(config)


def _check_name(name: str) -> None:
    problem = agent_name_problem(name)
    if problem:
        raise click.BadParameter(problem, param_hint="NAME")


def _credential_path(config: Config, name: str, given: str | None) -> Path:
    if given:
        return Path(given).absolute()
    if not config.state_dir.is_dir():
        raise RelayUnavailable(
            f"the relay's state dir {config.state_dir} does not exist; start the relay first "
            f"with '{start_command(config)}'"
        )
    # Made by whoever administers (root or the relay's user); never group/world readable.
    config.credentials_dir.mkdir(mode=0o700, exist_ok=True)
    return config.credentials_dir / f"{name}.cred"


@click.group()
def agent() -> None:
    """Register, list, rotate and remove agents."""


@agent.command("add")
@click.argument("name")
@click.option(
    "--credential-file",
    type=click.Path(dir_okay=False),
    help="Where to write the credential (default: in the relay's state dir).",
)
@click.option("--uid", type=int, help="Accept this agent only from this peer uid.")
@click.option("--gid", type=int, help="Accept this agent only from this peer gid.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@config_option
@handle_errors
def agent_add(
    name: str,
    credential_file: str | None,
    uid: int | None,
    gid: int | None,
    as_json: bool,
    config_path: str | None,
) -> None:
    """Create agent NAME with a fresh 256-bit credential and print the file's path.

    Mount that file read-only into NAME's container (ccc run does) and nowhere else.
    """
    _check_name(name)
    config, admin = _admin(config_path)
    path = _credential_path(config, name, credential_file)
    credential = Credential.generate()
    try:
        write_credential_file(path, name, credential)
    except FileExistsError:
        fail(
            f"agent {name}'s credential file {path} already exists; to give {name} a new "
            f"credential use 'ccc agent rotate {name}', to start over 'ccc agent remove {name}'",
            EXIT_CONFLICT,
            code="conflict",
        )
    try:
        admin.request("agent_add", name=name, cred_hash=credential.digest(), uid=uid, gid=gid)
    except RelayError:
        with contextlib.suppress(OSError):
            path.unlink()  # the relay refused: leave no orphan credential behind
        raise
    if as_json:
        emit_json({"agent": name, "credential_file": str(path)})
    else:
        click.echo(f"agent {name} added; credential file: {path}")


@agent.command("rotate")
@click.argument("name")
@click.option(
    "--credential-file",
    type=click.Path(dir_okay=False),
    help="The file to rewrite (default: NAME's file in the state dir).",
)
@config_option
@handle_errors
def agent_rotate(name: str, credential_file: str | None, config_path: str | None) -> None:
    """Give NAME a new credential; the old one stops working and its sessions end."""
    _check_name(name)
    config, admin = _admin(config_path)
    path = _credential_path(config, name, credential_file)
    credential = Credential.generate()
    admin.request("agent_rotate", name=name, cred_hash=credential.digest())
    write_credential_file(path, name, credential, replace=True)
    click.echo(f"agent {name} rotated; new credential file: {path}")


@agent.command("remove")
@click.argument("name")
@config_option
@handle_errors
def agent_remove(name: str, config_path: str | None) -> None:
    """Remove NAME, its rules, sessions and queued messages, and its stored credential file."""
    _check_name(name)
    config, admin = _admin(config_path)
    admin.request("agent_remove", name=name)
    default_file = config.credentials_dir / f"{name}.cred"
    with contextlib.suppress(FileNotFoundError):
        default_file.unlink()
    click.echo(f"agent {name} removed")


@agent.command("release")
@click.argument("name")
@config_option
@handle_errors
def agent_release(name: str, config_path: str | None) -> None:
    """Lift NAME's quarantine (set by an anomaly rule with quarantine: true)."""
    _check_name(name)
    _, admin = _admin(config_path)
    admin.request("agent_release", name=name)
    click.echo(f"agent {name} released from quarantine")


@agent.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@config_option
@handle_errors
def agent_list(as_json: bool, config_path: str | None) -> None:
    """Registered agents, online state and queue depth."""
    _, admin = _admin(config_path)
    rows = admin.request("agent_list")
    if as_json:
        emit_json({"agents": rows})
        return
    from ccc_relay.cli.render import print_agents

    print_agents(rows)


@click.command()
@click.argument("sender")
@click.argument("recipient")
@click.option("--both", is_flag=True, help="Also let RECIPIENT send to SENDER.")
@click.option(
    "--hold",
    is_flag=True,
    help="Hold these messages until the operator approves each ('ccc held').",
)
@config_option
@handle_errors
def allow(sender: str, recipient: str, both: bool, hold: bool, config_path: str | None) -> None:
    """Let SENDER send messages to RECIPIENT (everything else is denied).

    Either may be another relay's agent, written NAME@HOST (this relay needs a
    federation: section): 'ccc allow alice bob@build1' lets alice write to bob
    on build1, whose relay must allow 'alice@THIS-HOST bob' too. --hold holds
    messages on the recipient's relay, so it names a local recipient.
    """
    _, admin = _admin(config_path)
    action = "hold" if hold else "allow"
    result = admin.request("allow", sender=sender, recipient=recipient, both=both, action=action)
    for a, b in result["pairs"]:
        click.echo(f"{'held for approval' if hold else 'allowed'} {a} -> {b}")


@click.command()
@click.argument("sender")
@click.argument("recipient")
@click.option("--both", is_flag=True, help="Also deny RECIPIENT -> SENDER.")
@click.option(
    "--ignore-not-found",
    is_flag=True,
    help="Exit 0 when there is no such rule or agent (for scripts that make sure a pair "
    "is denied).",
)
@config_option
@handle_errors
def deny(
    sender: str, recipient: str, both: bool, ignore_not_found: bool, config_path: str | None
) -> None:
    """Withdraw SENDER's permission to send to RECIPIENT (either may be NAME@HOST).

    Removes a rule made with 'ccc allow'. No such rule, or no such agent, exits 6
    (not_found) unless --ignore-not-found; a rule from the config file exits 7
    (edit the file instead).
    """
    _, admin = _admin(config_path)
    try:
        result = admin.request("deny", sender=sender, recipient=recipient, both=both)
    except RelayError as exc:
        if not (ignore_not_found and exc.code == "not_found"):
            raise
        click.echo(f"note: nothing removed: {exc.message}", err=True)
        return
    for a, b in result.get("pairs", ()):
        click.echo(f"denied {a} -> {b} (rule removed)")
    for a, b in result.get("missing", ()):
        click.echo(f"note: there was no rule {a} -> {b} to remove", err=True)
    if result.get("note"):
        click.echo(f"note: {result['note']}", err=True)


@click.group()
def policy() -> None:
    """Show who may talk to whom."""


@policy.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@config_option
@handle_errors
def policy_show(as_json: bool, config_path: str | None) -> None:
    """Every allowed pair, with where it was declared (config file or 'ccc allow')."""
    _, admin = _admin(config_path)
    rows = admin.request("policy_show")
    if as_json:
        emit_json({"rules": rows})
        return
    if not rows:
        click.echo("no agent may message any other (default deny); use 'ccc allow A B'")
    for r in rows:
        click.echo(f"{r['from']} -> {r['to']}  {r['action']}  ({r['source']})")


def show_status(config_path: str | None, as_json: bool) -> None:
    """What ``ccc status`` (and ``ccc-statusd status``, the same) prints."""
    config = load_host_config(config_path)
    try:
        data: dict[str, Any] = OperatorClient(config).request("status")
    except RelayUnavailable as exc:
        if exc.code != "relay_unavailable":
            raise  # the relay may be there: this user may not ask it
        if as_json:
            emit_json({"running": False, "socket": str(config.socket_path)})
        else:
            click.echo(
                f"ccc-statusd is not running (socket {config.socket_path}); "
                f"start it with '{start_command(config)}'"
            )
        sys.exit(EXIT_UNAVAILABLE)
    if as_json:
        emit_json({"running": True, **data})
        return
    from ccc_relay.cli.render import print_status

    print_status(data)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@config_option
@handle_errors
def status(as_json: bool, config_path: str | None) -> None:
    """Is the relay running, and how is it doing: agents online and offline, queue
    depths, counters, alerts, the audit's state. Exits 3 when it is not running."""
    show_status(config_path, as_json)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@config_option
@handle_errors
def held(as_json: bool, config_path: str | None) -> None:
    """Messages waiting for the operator's approval (pairs allowed with --hold)."""
    from ccc_relay.cli.render import print_held

    _, admin = _admin(config_path)
    rows = admin.request("held_list")
    if as_json:
        emit_json({"held": rows})
    elif rows:
        print_held(rows)
    else:
        click.echo("no held messages", err=True)


@click.command()
@click.argument("message_id", metavar="ID")
@config_option
@handle_errors
def approve(message_id: str, config_path: str | None) -> None:
    """Deliver held message ID to its recipient."""
    _, admin = _admin(config_path)
    result = admin.request("approve", id=message_id)
    click.echo(f"approved {result['id']} -> {result['to']}")


@click.command()
@click.argument("message_id", metavar="ID")
@click.option("--reason", help="Told to the sender.")
@config_option
@handle_errors
def reject(message_id: str, reason: str | None, config_path: str | None) -> None:
    """Drop held message ID and tell its sender (with --reason, why)."""
    _, admin = _admin(config_path)
    result = admin.request("reject", id=message_id, reason=reason)
    click.echo(f"rejected {result['id']}; {result['notified']} was told")


def _graph() -> click.Command:
    from ccc_relay.cli.graph import graph

    return graph


policy.add_command(_graph())


def _top() -> click.Command:
    from ccc_relay.cli.top import top

    return top


COMMANDS = [agent, allow, deny, policy, status, held, approve, reject, _top()]

__all__ = ["COMMANDS"]
