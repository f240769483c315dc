"""``ccc audit``: verify, tail, search and export the checkpoint key, on the relay's host.

These commands only read files -- the audit dir, relay.db (read-only) and the
signing key -- and never talk to the relay, so they work while it is stopped
and cannot change anything. The dirs come from ``--config`` / CCC_CONFIG or the
embedded defaults, like every operator command.

Exit codes: 0 fine, 1 the chain is broken (verify), 2 usage, 4 something could
not be read (config, log, relay.db, key).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ccc_relay.cli.common import EXIT_CONFIG, config_option, emit_json, fail, load_host_config
from ccc_relay.policy.config import Config

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# The audit modules are imported inside each command: ``ccc`` is also the agents'
# command, and ``ccc send`` should not pay for hashing, signing and search code.

EXIT_BROKEN = 1
FOLLOW_INTERVAL = 0.5  # seconds between looks at the log for -f


def _config(config_path: str | None) -> Config:
    if config_path is None:  # ``ccc --config FILE audit ...`` puts it on the root context
        config_path = getattr(click.get_current_context().find_root().obj, "config_path", None)
    return load_host_config(config_path)


def _print(records: Iterable[dict[str, Any]], as_json: bool) -> None:
    from ccc_relay.audit.query import human_line, json_line

    for record in records:
        click.echo(json_line(record) if as_json else human_line(record))


@click.group("audit")
def audit() -> None:
    """Verify, read and search the relay's hash-chained audit log.

    \b
      ccc audit verify --pubkey audit.pub   check every line, file and checkpoint
      ccc audit tail -f                     watch decisions as they are made
      ccc audit search --from alice --since 1h --code rate_limited
      ccc audit pubkey > audit.pub          keep this copy away from the host
    """


@audit.command()
@config_option
@click.option("--pubkey", "pubkey_path", type=click.Path(dir_okay=False),
              help="Public key (from 'ccc audit pubkey') to check checkpoint signatures with; "
                   "default: the relay's own key, if readable.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(config_path: str | None, pubkey_path: str | None, as_json: bool) -> None:
    """Check the whole chain; exit 1 naming the first edited, missing or moved line."""
    from ccc_relay.audit.recorded import HeadUnavailable, read_outbox, read_recorded_head
    from ccc_relay.audit.verify import verify_log

    config = _config(config_path)
    notes: list[str] = []
    try:
        # Read the head before the files: the log only ever runs ahead of relay.db.
        recorded = read_recorded_head(config.db_path)
        outbox = read_outbox(config.db_path)
    except HeadUnavailable as exc:
        fail(str(exc), EXIT_CONFIG)
    if recorded is None:
        notes.append(f"no head recorded in {config.db_path}: a cut tail cannot be detected")
    key, key_source = _public_key(config, pubkey_path, notes)
    try:
        report = verify_log(config.audit.log_path, recorded=recorded, public_key=key, outbox=outbox)
    except OSError as exc:
        fail(f"cannot read the audit log: {exc}", EXIT_CONFIG)
    notes = report.notes + notes
    if key is None and report.checkpoints:
        notes.append("checkpoint signatures were not checked: no key (pass --pubkey)")
    if as_json:
        emit_json({**report.as_dict(), "notes": notes, "key": key_source,
                   "recorded_head": None if recorded is None else str(recorded)})  # fmt: skip
    elif report.problem is not None:
        click.echo(f"FAIL: {report.problem}")
    else:
        click.echo(f"OK: {report.lines} lines, {report.files} files, head {report.head.hash}")
        signed = f", {report.signatures} signatures verified with {key_source}" if key else ""
        click.echo(f"seq {report.head.seq}; {report.checkpoints} checkpoints{signed}")
    if not as_json:
        for note in notes:
            click.echo(f"note: {note}", err=True)
    sys.exit(EXIT_BROKEN if report.problem is not None else 0)


def _public_key(
    config: Config, pubkey_path: str | None, notes: list[str]
) -> tuple[Ed25519PublicKey | None, str | None]:
    from ccc_relay.audit.signing import (
        SigningKeyError,
        SigningKeyMissing,
        key_id,
        load_public_key,
        load_signing_key,
    )

    if pubkey_path is not None:
        try:
            key = load_public_key(Path(pubkey_path))
        except SigningKeyError as exc:
            fail(str(exc), EXIT_CONFIG)
        return key, f"{pubkey_path} (key {key_id(key)})"
    try:
        key = load_signing_key(config.state_dir).public_key()
    except SigningKeyMissing:
        return None, None
    except SigningKeyError as exc:
        notes.append(f"the relay's signing key is not usable here: {exc}")
        return None, None
    notes.append(
        "signatures were checked with the relay's own key, which an intruder on this host "
        "could use too: keep a copy of the public key elsewhere (--pubkey)"
    )
    return key, f"the relay's own key {key_id(key)}"


@audit.command()
@config_option
@click.option("--raw", is_flag=True, help="The raw 32-byte key in base64 instead of PEM.")
def pubkey(config_path: str | None, raw: bool) -> None:
    """Print the public key that verifies the log's signed checkpoints."""
    from ccc_relay.audit.signing import (
        SigningKeyError,
        SigningKeyMissing,
        load_signing_key,
        public_base64,
        public_pem,
    )

    config = _config(config_path)
    try:
        key = load_signing_key(config.state_dir).public_key()
    except SigningKeyMissing as exc:
        fail(f"{exc}: ccc-statusd creates it when it starts", EXIT_CONFIG)
    except SigningKeyError as exc:
        fail(str(exc), EXIT_CONFIG)
    click.echo(public_base64(key) if raw else public_pem(key).rstrip("\n"))


@audit.command("tail")
@config_option
@click.option(
    "-n",
    "--lines",
    "count",
    default=20,
    show_default=True,
    type=click.IntRange(0, None),
    help="How many of the last lines to print.",
)
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing new lines, across day files, until Ctrl-C."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def tail_command(config_path: str | None, count: int, follow: bool, as_json: bool) -> None:
    """Print the last audit lines (time, seq, event, who->whom, code, summary)."""
    from ccc_relay.audit.query import Follower, tail

    log_dir = _config(config_path).audit.log_path
    try:
        follower = Follower(log_dir) if follow else None
        end = (follower.path, follower.offset) if follower and follower.path else None
        _print(tail(log_dir, count, end=end), as_json)
        if follower is None:
            return
        while True:
            sys.stdout.flush()
            time.sleep(FOLLOW_INTERVAL)
            _print(follower.poll(), as_json)
    except KeyboardInterrupt:
        return
    except OSError as exc:
        fail(f"cannot read the audit log: {exc}", EXIT_CONFIG)


@audit.command("search")
@config_option
@click.option("--from", "sender", metavar="AGENT", help="Lines where AGENT acted or sent.")
@click.option("--to", "recipient", metavar="AGENT", help="Lines about messages to AGENT.")
@click.option("--since", metavar="WHEN", help="1h, 2d (ago), 2024-05-01, ISO time, Unix time.")
@click.option("--until", metavar="WHEN", help="As --since.")
@click.option("--code", help="An error code, e.g. rate_limited, forbidden, replay.")
@click.option("--text", metavar="WORDS", help="Words that must all appear (any case).")
@click.option("--event", "events", multiple=True, help="Only this event (repeatable).")
@click.option("--limit", type=click.IntRange(1, None), help="Stop after this many lines.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def search_command(
    config_path: str | None, sender: str | None, recipient: str | None, since: str | None,
    until: str | None, code: str | None, text: str | None, events: tuple[str, ...],
    limit: int | None, as_json: bool,
) -> None:  # fmt: skip
    """Print the audit lines that match every condition given, oldest first."""
    from ccc_relay.audit.query import Query, search

    log_dir = _config(config_path).audit.log_path
    now = time.time()
    query = Query(
        sender=sender, recipient=recipient, code=code, events=events,
        words=tuple(text.split()) if text else (),
        since=_when(since, now, "--since"), until=_when(until, now, "--until"),
    )  # fmt: skip
    try:
        for shown, record in enumerate(search(log_dir, query)):
            if limit is not None and shown >= limit:
                break
            _print([record], as_json)
    except OSError as exc:
        fail(f"cannot read the audit log: {exc}", EXIT_CONFIG)


def _when(value: str | None, now: float, option: str) -> float | None:
    from ccc_relay.audit.query import parse_when

    if value is None:
        return None
    try:
        return parse_when(value, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
