"""``ccc peer``: direct mode, the seed's shared-socket fallback, from the command line.

The verbs follow who does what. The agent that wants to receive runs the
listener; the other one sends to it; the receiver reads its own inbox::

    ccc peer pair alice bob            on the host: the pair key and the shared dir
    ccc peer listen          (alice)   receive on <dir>/alice.sock into alice's inbox
    ccc peer send alice TEXT (bob)     send to alice's listener
    ccc peer inbox           (alice)   print what alice's listener received

For the other direction bob runs ``ccc peer listen`` too and alice sends to
bob. Like the rest of ``ccc``, the command is a thin mapper from arguments to
``PeerConfig`` and calls into ``ccc_relay.peer``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ccc_relay.cli.common import (
    EXIT_CONFIG,
    EXIT_CONFLICT,
    emit_json,
    fail,
    handle_errors,
    read_stdin_text,
)
from ccc_relay.client.base import message_dict
from ccc_relay.daemon.sockets import SocketPathError
from ccc_relay.peer.inbox import PeerStore, Received
from ccc_relay.peer.keys import (
    ENV_DIR,
    PairKey,
    PairKeyError,
    PeerConfig,
    default_keys_dir,
    default_peer_dir,
    pair_file_name,
    write_pair_key,
)
from ccc_relay.peer.listener import PeerListener, Receiver, prepare_shared_dir
from ccc_relay.peer.sender import send_direct
from ccc_relay.protocol.frames import Message

F = TypeVar("F", bound=Callable[..., Any])

NOT_RELAYED = "direct mode: these messages did not pass through a relay (no audit, no policy)"


class PeerOptions:
    def __init__(self, me: str | None, peer_dir: str | None, keys: tuple[str, ...],
                 credential: str | None) -> None:  # fmt: skip
        self.me = me
        self.peer_dir = peer_dir
        self.keys = keys
        self.credential = credential

    def config(self) -> PeerConfig:
        return PeerConfig.resolve(me=self.me, credential_file=self.credential,
                                  peer_dir=self.peer_dir, key_paths=self.keys)  # fmt: skip


pass_options = click.make_pass_decorator(PeerOptions)


def peer_errors(fn: F) -> F:
    """``handle_errors``, plus unsafe paths and a failing inbox file (exit 4)."""
    inner = handle_errors(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        except SocketPathError as exc:
            fail(str(exc), EXIT_CONFIG)
        except sqlite3.Error as exc:
            fail(f"the direct-mode inbox cannot be used: {exc}", EXIT_CONFIG)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.option("--as", "me", metavar="NAME",
              help="This agent's name (env CCC_PEER_NAME; default: the agent of "
                   "CCC_CREDENTIAL).")  # fmt: skip
@click.option("--dir", "peer_dir", type=click.Path(file_okay=False),
              help="The shared socket dir (env CCC_PEER_DIR; "
                   "default: <state>/peer/shared).")  # fmt: skip
@click.option("--key", "keys", multiple=True, type=click.Path(),
              help="A pair key file or a dir of them; repeatable (env CCC_PEER_KEY, "
                   "':'-separated; default: <state>/peer/keys).")  # fmt: skip
@click.pass_context
def peer(ctx: click.Context, me: str | None, peer_dir: str | None, keys: tuple[str, ...]) -> None:
    """Direct mode: talk to one paired agent over a shared socket, without the relay.

    \b
    Messages sent this way are signed and checked (size, schema, sequence,
    sanitisation) but NOT audited or policy-checked by a relay. Use it only
    when the relay cannot run; see docs/direct-mode.md.
    \b
      ccc peer pair alice bob            (host) pair key + shared dir
      ccc peer listen                    (as alice) receive into alice's inbox
      ccc peer send alice "hello"        (as bob) send to alice's listener
      ccc peer inbox                     (as alice) print what arrived
    """
    # `ccc --as NAME peer ...` and `ccc --credential FILE peer ...` work too.
    root = ctx.find_root().params
    ctx.obj = PeerOptions(me or root.get("as_agent"), peer_dir, keys, root.get("credential"))


@peer.command()
@click.argument("a")
@click.argument("b")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write the key here (default: <state>/peer/keys/A+B.key).")  # fmt: skip
@click.option("--rotate", is_flag=True, help="Replace an existing key (restart both listeners).")
@click.option("--group", help="Give the shared dir to this group (the containers' users).")
@pass_options
@peer_errors
def pair(obj: PeerOptions, a: str, b: str, out: str | None, rotate: bool,
         group: str | None) -> None:  # fmt: skip
    """Create the 256-bit pair key of agents A and B, and the shared socket dir."""
    try:
        key = PairKey.generate(a, b)
    except PairKeyError as exc:
        raise click.UsageError(str(exc)) from None
    path = Path(out) if out else default_keys_dir() / pair_file_name(a, b)
    try:
        write_pair_key(path, key, replace=rotate)
    except FileExistsError:
        fail(f"{path} already exists; pass --rotate to replace the key", EXIT_CONFLICT)
    shared = Path(obj.peer_dir or os.environ.get(ENV_DIR) or default_peer_dir()).absolute()
    prepare_shared_dir(shared, group=group)
    first, second = key.pair
    click.echo(f"pair key of {first} and {second}: {path} (mode 0600, secret)")
    click.echo(f"shared socket dir: {shared} (mode 0770)")
    click.echo("mount the key (read-only) and the shared dir into both containers, then:")
    env = f"CCC_PEER_KEY={path} CCC_PEER_DIR={shared}"
    click.echo(f"  {first}: CCC_PEER_NAME={first} {env} ccc peer listen")
    click.echo(f"  {second}: CCC_PEER_NAME={second} {env} ccc peer send {first} TEXT")
    click.echo("and the other way round for replies; relay clients fall back to it only with "
               "CCC_FALLBACK=direct")  # fmt: skip


@peer.command()
@click.option("--group", help="Give the socket to this group (default: this user's group).")
@pass_options
@peer_errors
def listen(obj: PeerOptions, group: str | None) -> None:
    """Receive messages from paired agents into this agent's inbox, until Ctrl-C."""
    config = obj.config()
    keys = config.keys()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s ccc peer %(levelname)s %(message)s")  # fmt: skip
    with PeerStore(config.store_path) as store:
        receiver = Receiver(config.me, keys, store, max_message_size=config.max_message_size)
        listener = PeerListener(receiver, config.socket_path(config.me), group=group)
        click.echo(f"warning: DIRECT mode: messages to {config.me} are not audited or "
                   "policy-checked by a relay", err=True)  # fmt: skip

        def started(path: Path) -> None:
            peers = ", ".join(sorted(keys))
            click.echo(f"listening as {config.me} on {path} for {peers}", err=True)

        try:
            asyncio.run(_serve_until_stopped(listener, started))
        except KeyboardInterrupt:
            pass
        except OSError as exc:  # e.g. a socket path over the kernel's 108 bytes
            fail(f"cannot listen on {listener.socket_path}: {exc.strerror or exc}", EXIT_CONFIG)


async def _serve_until_stopped(listener: PeerListener, started: Callable[[Path], None]) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await listener.serve(started=started)
    except asyncio.CancelledError:
        return  # SIGTERM: the listener has unbound its socket on the way out


@peer.command("send")
@click.argument("to")
@click.argument("text", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the listener's answer as JSON.")
@pass_options
@peer_errors
def send_cmd(obj: PeerOptions, to: str, text: str | None, as_json: bool) -> None:
    """Send TEXT (or standard input) to agent TO's listener, directly."""
    body = text if text is not None else read_stdin_text()
    receipt = send_direct(to, body, config=obj.config(),
                          warn=lambda line: click.echo(line, err=True))  # fmt: skip
    if as_json:
        emit_json({"id": receipt.id, "seq": receipt.seq, "to": to, "changes": receipt.changes,
                   "direct": True})  # fmt: skip
        return
    click.echo(f"accepted {receipt.id} -> {to} (direct)")
    for change in receipt.changes:
        click.echo(f"note: {change}", err=True)


@peer.command()
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--peek", is_flag=True, help="Show without marking them read.")
@click.option("--all", "show_all", is_flag=True, help="Include messages already read.")
@click.option("--json", "as_json", is_flag=True, help='Print {"messages": [...]} for scripts.')
@pass_options
@peer_errors
def inbox(obj: PeerOptions, limit: int, peek: bool, show_all: bool, as_json: bool) -> None:
    """Print what this agent's listener received, then mark it read (unless --peek)."""
    from ccc_relay.cli.render import print_messages

    config = obj.config()
    with PeerStore(config.store_path) as store:
        rows = store.messages(limit, unread_only=not show_all)
        if as_json:
            emit_json({"messages": [{**message_dict(_as_message(row)), "direct": True,
                                     "received_at": row.received_at, "changes": row.changes}
                                    for row in rows]})  # fmt: skip
        elif rows:
            click.echo(f"note: {NOT_RELAYED}", err=True)
            print_messages([_as_message(row) for row in rows])
        else:
            click.echo("no messages", err=True)
        # Marked only after printing: a crash in between shows them again.
        if rows and not peek:
            store.mark_read([row.id for row in rows])


def _as_message(row: Received) -> Message:
    return Message(id=row.id, sender=row.sender, to=row.recipient, sent_at=row.sent_at,
                   body=row.body, delivery=row.n)  # fmt: skip
