"""Groups on the command line: ``ccc group add|remove|list`` for the operator
(over the admin socket, like ``ccc allow``) and what ``ccc send @group`` prints.

A group is written ``@name`` where a message goes and ``name`` where it is
defined; both spellings are taken here.
"""

from __future__ import annotations

import click

from ccc_relay.cli.common import (
    EXIT_USAGE,
    OperatorClient,
    config_option,
    emit_json,
    fail,
    handle_errors,
    load_host_config,
)
from ccc_relay.cli.terminal import shown
from ccc_relay.policy.groups import group_name_problem
from ccc_relay.protocol.frames import GroupAccepted
from ccc_relay.protocol.names import agent_name_problem


def _admin(config_path: str | None) -> OperatorClient:
    return OperatorClient(load_host_config(config_path))


def _group_name(text: str) -> str:
    name = text[1:] if text.startswith("@") else text
    problem = group_name_problem(name)
    if problem:
        fail(f"{text!r} is not a group name: {problem}", EXIT_USAGE, code="invalid")
    return name


def _members(names: tuple[str, ...]) -> list[str]:
    for name in names:
        problem = agent_name_problem(name)
        if problem:
            hint = " (groups do not nest)" if name.startswith("@") else ""
            fail(f"{name!r} is not an agent name: {problem}{hint}", EXIT_USAGE, code="invalid")
    return list(names)


@click.group()
def group() -> None:
    """Named groups of agents: 'ccc send @NAME' writes to each member you may.

    A send to a group reaches only the members the pair policy lets the
    sender write to ('ccc allow'); a group grants nothing by itself. Groups
    are defined here or in the config file's 'groups:' section; a group's
    members are both together.
    """


@group.command("add")
@click.argument("name")
@click.argument("members", nargs=-1, required=True)
@config_option
@handle_errors
def group_add(name: str, members: tuple[str, ...], config_path: str | None) -> None:
    """Add registered agents MEMBERS to group NAME (made with its first members).

    \b
    Example:
      ccc group add reviewers alice bob
      ccc send @reviewers "please review #42"
    """
    result = _admin(config_path).request(
        "group_add", name=_group_name(name), members=_members(members)
    )
    click.echo(f"@{result['group']}: {', '.join(result['members'])}")


@group.command("remove")
@click.argument("name")
@click.argument("members", nargs=-1)
@config_option
@handle_errors
def group_remove(name: str, members: tuple[str, ...], config_path: str | None) -> None:
    """Remove MEMBERS from group NAME; without MEMBERS, remove the group.

    Only what 'ccc group add' made can be removed here; members the config
    file names stay until the file is edited and reloaded.
    """
    args: dict[str, object] = {"name": _group_name(name)}
    if members:
        args["members"] = _members(members)
    result = _admin(config_path).request("group_remove", **args)
    left = result["members"]
    click.echo(
        f"removed {result['removed']} member(s) from @{result['group']}; "
        + (f"left: {', '.join(left)}" if left else "the group is gone")
    )
    if result.get("note"):
        click.echo(f"note: {result['note']}", err=True)


@group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@config_option
@handle_errors
def group_list(as_json: bool, config_path: str | None) -> None:
    """Every group with its members and where they were defined
    (config file, or 'ccc group add': admin)."""
    rows = _admin(config_path).request("group_list")
    if as_json:
        emit_json({"groups": rows})
        return
    if not rows:
        click.echo("no groups; define one with 'ccc group add NAME AGENT...'")
    for row in rows:
        click.echo(f"@{row['group']}  {', '.join(row['members'])}  ({row['source']})")


def print_group_answer(
    answer: GroupAccepted, *, as_json: bool, deliver_at: float | None = None
) -> None:
    """What ``ccc send @group`` prints: one line per recipient, then the skipped."""
    from ccc_relay.cli.when import delivery_fields, delivery_words

    if as_json:
        emit_json(
            {
                "group": answer.group,
                "seq": answer.seq,
                "sent": [{"to": c.to, "id": c.id, "held": c.held} for c in answer.sent],
                "skipped": [{"to": s.to, "code": s.code} for s in answer.skipped],
                "changes": answer.changes,
                "delivered": answer.delivered,
                **delivery_fields(deliver_at),
            }
        )
        return
    for copy in answer.sent:
        if copy.held:
            click.echo(f"held {copy.id} -> {copy.to}: it waits for the operator's approval")
        else:
            click.echo(f"accepted {copy.id} -> {copy.to}{delivery_words(deliver_at)}")
    for skip in answer.skipped:
        click.echo(shown(f"skipped {skip.to}: {skip.code} (you may not send to it)"))
    if answer.delivered is not None:
        click.echo(f"the relay changed your message; {answer.group} receives:")
        click.echo(shown("\n".join("> " + line for line in answer.delivered.split("\n"))))
    for change in answer.changes:
        click.echo(f"note: {change}", err=True)
