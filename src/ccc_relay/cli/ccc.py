"""``ccc``: the agents' and the operator's command line.

Agent side (in a container; the socket from CCC_SOCKET, the identity from the
credential file in CCC_CREDENTIAL): send, inbox, watch, agents, whoami.
Operator side (on the relay's host, through the admin socket): agent, allow,
deny, policy, status.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from ccc_relay import __version__
from ccc_relay.cli.common import (
    adopt_command_tree,
    config_option,
    credential_names,
    did_you_mean,
    emit_json,
    emit_json_line,
    handle_errors,
    load_host_config,
    read_stdin_text,
)
from ccc_relay.cli.terminal import shown
from ccc_relay.cli.when import Delay, DeliverAt, delivery_fields, delivery_words
from ccc_relay.client.base import message_dict
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.client.errors import RelayError
from ccc_relay.client.reconnect import Backoff
from ccc_relay.client.sync import RelayClient
from ccc_relay.credentials import CredentialMissing
from ccc_relay.policy.config import Config
from ccc_relay.protocol.frames import Accepted, GroupAccepted, Held


class Context:
    def __init__(
        self,
        config_path: str | None,
        socket_path: str | None,
        credential: str | None,
        as_agent: str | None,
    ) -> None:
        self.config_path = config_path
        self.socket_path = socket_path
        self.credential = credential
        self.as_agent = as_agent

    @contextmanager
    def client(self, reconnect: Backoff | None = None) -> Iterator[RelayClient]:
        """A connected client; with ``reconnect`` it outlives a relay restart,
        saying so on stderr."""
        config = load_host_config(self.config_path, operator=False)
        try:
            endpoint = Endpoint.resolve(
                socket_path=self.socket_path,
                credential_file=self.credential,
                as_agent=self.as_agent,
                config=config,
            )
        except CredentialMissing as exc:
            if self.as_agent is None or self.credential is not None:
                raise
            raise self._no_such_agent(config, exc) from None
        client = RelayClient(
            endpoint,
            reconnect=reconnect,
            on_reconnect=lambda exc: click.echo(
                f"ccc: {shown(exc.message, one_line=True)}; reconnecting", err=True
            ),
        )
        client.connect()
        try:
            yield client
        finally:
            client.close()

    def _no_such_agent(self, config: Config, exc: CredentialMissing) -> RelayError:
        """--as NAME with no credential file: most often a typo, so name the near ones
        before suggesting to create NAME."""
        name = self.as_agent
        near = did_you_mean(name or "", credential_names(config))
        return RelayError(
            "credential_missing",
            f"no agent {name!r} here ({exc}); {near}'ccc agent list' shows the agents, "
            f"and 'ccc agent add {name}' makes a new one",
        )


pass_context = click.make_pass_decorator(Context)
_MESSAGE_ID = re.compile(r"m_[A-Za-z0-9_-]{8,64}")


def _message_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _MESSAGE_ID.fullmatch(value):
        raise click.BadParameter(
            f"{shown(value, one_line=True)!r} is not a message id; ids look like "
            "m_Ab3dEf9h1 (ccc inbox prints them)",
            ctx,
            param,
        )
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ccc")
@config_option
@click.option(
    "--socket",
    "socket_path",
    envvar="CCC_SOCKET",
    type=click.Path(),
    help="The relay's socket (env CCC_SOCKET).",
)
@click.option(
    "--credential",
    envvar="CCC_CREDENTIAL",
    type=click.Path(dir_okay=False),
    help="This agent's credential file (env CCC_CREDENTIAL).",
)
@click.option(
    "--as",
    "as_agent",
    metavar="NAME",
    help="On the relay's host: act as agent NAME using its stored credential.",
)
@click.pass_context
def main(
    ctx: click.Context,
    config_path: str | None,
    socket_path: str | None,
    credential: str | None,
    as_agent: str | None,
) -> None:
    """Message other agents through the ccc relay, and administer it.

    \b
    In a container (CCC_SOCKET and CCC_CREDENTIAL set by 'ccc run'):
      ccc send bob "the API changed, please update the client"
      ccc inbox            print waiting messages and acknowledge them
      ccc watch            print messages as they arrive
    On the relay's host, as its operator:
      ccc agent add alice  create alice's credential file
      ccc allow alice bob --both
      ccc status
    """
    if as_agent is not None and credential is not None:
        # Explicit beats implicit: --as wins over CCC_CREDENTIAL, and both flags
        # at once are a contradiction, not a choice to make silently.
        if ctx.get_parameter_source("credential") is click.core.ParameterSource.ENVIRONMENT:
            credential = None
        else:
            raise click.UsageError("use --as NAME or --credential FILE, not both")
    ctx.obj = Context(config_path, socket_path, credential, as_agent)


# --- agent side ------------------------------------------------------------


@main.command()
@click.argument("to")
@click.argument("text", required=False)
@click.option("--thread", help="Thread id to group a conversation.")
@click.option("--reply-to", callback=_message_id, help="Id of the message this answers (m_...).")
@click.option(
    "--at",
    "deliver_at",
    type=DeliverAt(),
    help="Deliver later: in 10m / 2h / 1d, at an ISO 8601 time (2026-12-24T09:00, Z for "
    "UTC), or at a Unix time.",
)
@click.option("--in", "delay", type=Delay(), help="Deliver after this delay (90s, 10m, 2h).")
@click.option("--json", "as_json", is_flag=True, help="Print the relay's answer as JSON.")
@click.option(
    "--direct",
    is_flag=True,
    help="Skip the relay: send over the shared peer socket (unaudited; docs/direct-mode.md).",
)
@pass_context
@handle_errors
def send(
    obj: Context,
    to: str,
    text: str | None,
    thread: str | None,
    reply_to: str | None,
    deliver_at: float | None,
    delay: float | None,
    as_json: bool,
    direct: bool,
) -> None:
    """Send TEXT (or standard input) to agent TO, or to @GROUP: one copy to
    each member you may write to, one line per recipient ('ccc group').

    TO may be NAME@HOST, an agent of another relay this one federates with; if
    the federation link is down, the message is stored here and goes out when
    the link is back (a note on stderr says so; --json has "forwarded": false).

    If the relay changed the text (secrets redacted, file-system paths escaped,
    invisible characters removed), the text TO receives is printed after the
    message id, each line quoted with "> ", and each change is noted on stderr.

    With CCC_FALLBACK=direct (or --direct) and no relay reachable, the message
    goes over the direct peer socket instead, with a warning: never silently.
    """
    from ccc_relay.peer import DirectReceipt, relay_or_direct

    if delay is not None and deliver_at is not None:
        raise click.UsageError("give --at or --in, not both: they both say when to deliver")
    body = text if text is not None else read_stdin_text()
    if delay is not None:
        deliver_at = time.time() + delay
    if to.startswith("@"):
        _send_to_group(obj, to, body, thread, reply_to, deliver_at, as_json=as_json, direct=direct)
        return

    def via_relay() -> Accepted | Held:
        with obj.client() as client:
            answer = client.send(to, body, thread=thread, reply_to=reply_to, deliver_at=deliver_at)
        assert not isinstance(answer, GroupAccepted)  # "@group" went to _send_to_group
        return answer

    used = [
        name
        for name, value in (
            ("--thread", thread),
            ("--reply-to", reply_to),
            ("--at/--in", deliver_at),
        )
        if value is not None
    ]
    answer = relay_or_direct(
        via_relay,
        to,
        body,
        direct=direct,
        relay_only_options=used,
        me=obj.as_agent,
        credential_file=obj.credential,
        warn=lambda line: click.echo(line, err=True),
    )
    went_direct = isinstance(answer, DirectReceipt)
    held = isinstance(answer, Held)
    # The body the recipient gets, when the relay changed it (None: as sent).
    delivered = None if isinstance(answer, DirectReceipt) else answer.delivered
    # Only for another relay's agent (name@host): whether that relay's stream has it yet.
    forwarded = answer.forwarded if isinstance(answer, Accepted) else None
    if as_json:
        emit_json(
            {
                "id": answer.id,
                "seq": answer.seq,
                "to": to,
                "changes": answer.changes,
                "delivered": delivered,
                "held": held,
                "direct": went_direct,
                **({"forwarded": forwarded} if forwarded is not None else {}),
                **delivery_fields(deliver_at),
            }
        )
    else:
        if held:
            click.echo(f"held {answer.id} -> {to}: it waits for the operator's approval")
        else:
            click.echo(
                f"accepted {answer.id} -> {to}"
                + (" (direct)" if went_direct else "")
                + delivery_words(deliver_at)
            )
        if forwarded is False:
            click.echo(
                f"note: stored on this relay; it goes to {to.partition('@')[2]} when the "
                "federation link is back (the relay retries on its own)",
                err=True,
            )
        if delivered is not None:
            click.echo(f"the relay changed your message; {to} receives:")
            click.echo(shown("\n".join("> " + line for line in delivered.split("\n"))))
        for change in answer.changes:
            click.echo(f"note: {change}", err=True)


def _send_to_group(
    obj: Context,
    group: str,
    body: str,
    thread: str | None,
    reply_to: str | None,
    deliver_at: float | None,
    *,
    as_json: bool,
    direct: bool,
) -> None:
    from ccc_relay.cli.group_cmd import print_group_answer

    if direct:
        raise click.UsageError(
            f"--direct reaches one agent; {group} is a group: send through the relay"
        )
    with obj.client() as client:
        answer = client.send(group, body, thread=thread, reply_to=reply_to, deliver_at=deliver_at)
    assert isinstance(answer, GroupAccepted)  # the relay answers a send to a group so
    print_group_answer(answer, as_json=as_json, deliver_at=deliver_at)


@main.command()
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--peek", is_flag=True, help="Show without acknowledging (they stay queued).")
@click.option("--json", "as_json", is_flag=True, help='Print {"messages": [...]} for scripts.')
@pass_context
@handle_errors
def inbox(obj: Context, limit: int, peek: bool, as_json: bool) -> None:
    """Print waiting messages, then acknowledge them (unless --peek)."""
    from ccc_relay.cli.render import print_messages

    with obj.client() as client:
        messages = client.fetch(limit)
        if as_json:
            emit_json({"messages": [message_dict(m) for m in messages]})
        elif messages:
            print_messages(messages)
        else:
            click.echo("no messages", err=True)
        # Acknowledge only after printing: a crash in between means a redelivery,
        # never a lost message.
        if messages and not peek:
            client.ack([m.id for m in messages])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message (JSON Lines).")
@click.option("--count", type=int, help="Exit after this many messages.")
@click.option("--timeout", type=float, help="Exit 0 after this many seconds without a message.")
@pass_context
@handle_errors
def watch(obj: Context, as_json: bool, count: int | None, timeout: float | None) -> None:
    """Print messages as they arrive (acknowledging each), until Ctrl-C.

    When the relay goes away (a restart, a crash) it connects again by itself,
    with backoff, resuming its session: messages sent meanwhile are printed
    once the relay is back, each once.
    """
    from ccc_relay.cli.progress import spinner
    from ccc_relay.cli.render import print_messages

    seen = 0
    with obj.client(reconnect=Backoff()) as client:
        client.subscribe()
        try:
            while count is None or seen < count:
                with spinner("waiting for messages (Ctrl-C stops)"):
                    message = client.wait_for_message(timeout)
                if message is None:
                    return
                if as_json:
                    emit_json_line(message_dict(message))
                else:
                    print_messages([message])
                sys.stdout.flush()
                client.ack([message.id])
                seen += 1
        except KeyboardInterrupt:
            pass


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_context
@handle_errors
def agents(obj: Context, as_json: bool) -> None:
    """Agents this one may talk to, and whether they are online."""
    from ccc_relay.cli.render import online

    with obj.client() as client:
        rows = client.agents()
    if as_json:
        emit_json(
            {
                "agents": [
                    {
                        "name": a.name,
                        "online": a.online,
                        "may_send": a.may_send,
                        "may_receive": a.may_receive,
                    }
                    for a in rows
                ]
            }
        )
        return
    if not rows:
        click.echo("no agents you may talk to (ask the operator: ccc allow ...)", err=True)
    for a in rows:
        direction = {(True, True): "<->", (True, False): "->", (False, True): "<-"}[
            (a.may_send, a.may_receive)
        ]
        click.echo(f"{direction} {a.name}  online: {online(a.online)}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_context
@handle_errors
def whoami(obj: Context, as_json: bool) -> None:
    """The agent name and session this credential authenticates as."""
    with obj.client() as client:
        welcome = client.welcome
    assert welcome is not None
    data: dict[str, Any] = {
        "agent": welcome.agent,
        "session": welcome.session,
        "expires_at": welcome.expires_at,
        "max_message_size": welcome.max_message_size,
        "rate_limit_per_minute": welcome.rate_limit_per_minute,
        "socket": str(obj.socket_path or ""),
    }
    if as_json:
        emit_json(data)
    else:
        click.echo(f"{welcome.agent} (session {welcome.session})")


def _register_commands() -> None:
    from ccc_relay.cli import operator
    from ccc_relay.cli.audit_cmd import audit
    from ccc_relay.cli.completion import completion
    from ccc_relay.cli.containers_cmd import firewall, run
    from ccc_relay.cli.doctor import doctor
    from ccc_relay.cli.federation_cmd import federation
    from ccc_relay.cli.group_cmd import group
    from ccc_relay.cli.integrations_cmd import hook, install, mcp, uninstall
    from ccc_relay.cli.manpages import manpages
    from ccc_relay.cli.peer_cmd import peer

    for command in (*operator.COMMANDS, audit, run, firewall, mcp, hook, install, uninstall,
                    peer, completion, manpages):  # fmt: skip
        main.add_command(command)
    main.add_command(doctor)
    main.add_command(group)
    main.add_command(federation)
    adopt_command_tree(main)


_register_commands()
