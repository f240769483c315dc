"""``ccc audit``: verify, tail, search, export the checkpoint and seal keys, acknowledge
tamper alarms, on the relay's host.

These commands read files -- the audit dir, relay.db (read-only) and the keys
-- and never talk to the relay, so they work while it is stopped. Two change
something: ``seal-key export`` destroys the seed it prints, and
``acknowledge`` asks the running relay (admin socket) to record that a tamper
alarm was looked into. The dirs come from ``--config`` / CCC_CONFIG or the
embedded defaults, like every operator command.

Exit codes are ``ccc``'s (docs/cli.md): 0 fine, 1 the chain is broken or a seal
forged or a tamper alarm open (verify), or refused (seal-key export), 3 the
relay is not running (acknowledge), 4 something could not be read (config,
log, relay.db, key), 5 the log verifies but ends in an unsealed tail (verify
with --seal-key, unless --allow-unsealed-tail), 6 no such alarm (acknowledge).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ccc_relay.cli.common import (
    EXIT_CONFIG,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_UNSEALED,
    OperatorClient,
    config_option,
    emit_json,
    fail,
    handle_errors,
    load_host_config,
)
from ccc_relay.cli.progress import spinner
from ccc_relay.policy.config import Config

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from ccc_relay.audit.sealing import SealKey

# The audit modules are imported inside each command: ``ccc`` is also the agents'
# command, and ``ccc send`` should not pay for hashing, signing and search code.

EXIT_BROKEN = EXIT_REFUSED
FOLLOW_INTERVAL = 0.5  # seconds between looks at the log for -f


def _config(config_path: str | None) -> Config:
    return load_host_config(config_path)


def _require_log(config: Config, exit_code: int, code: str) -> Path:
    """The log directory, or exit saying there is no log there and what to check.

    An empty or missing log must not read as a clean one: a wrong --config or the
    wrong user looks in another place, where nothing can fail verification.
    """
    from ccc_relay.audit.files import audit_files

    log_dir = config.audit.log_path
    try:
        if audit_files(log_dir):
            return log_dir
    except OSError as exc:
        fail(f"cannot read the audit log in {log_dir}: {exc.strerror or exc}", EXIT_CONFIG)
    what = "does not exist" if not log_dir.exists() else "holds no audit-DAY.jsonl file"
    source = f"the config {config.source}" if config.source else "the embedded defaults"
    fail(
        f"no audit log in {log_dir} (the directory {what}): that is where {source} put "
        f"it for uid {os.geteuid()}; check that this is the relay's config ('ccc --config "
        "FILE audit ...' or CCC_CONFIG) and that you run this as the relay's user",
        exit_code,
        code=code,
    )


def _print(records: Iterable[dict[str, Any]], as_json: bool) -> None:
    from ccc_relay.audit.query import human_line, json_line

    for record in records:
        click.echo(json_line(record) if as_json else human_line(record))


@click.group("audit")
def audit() -> None:
    """Verify, read and search the relay's hash-chained audit log.

    \b
      ccc audit seal-key export             once, at set-up: keep its line off the host
      ccc audit verify --seal-key KEY --pubkey audit.pub
                                            check every line, file, seal and checkpoint
      ccc audit tail -f                     watch decisions as they are made
      ccc audit search --from alice --since 1h --code rate_limited
      ccc audit pubkey > audit.pub          keep this copy away from the host
      ccc audit acknowledge SEQ --note ...  after looking into a tamper alarm
    """


@audit.command()
@config_option
@click.option("--pubkey", "pubkey_path", type=click.Path(dir_okay=False),
              help="Public key (from 'ccc audit pubkey') to check checkpoint signatures with; "
                   "default: the relay's own key, if readable.")  # fmt: skip
@click.option(
    "--seal-key",
    "seal_key_arg",
    metavar="KEY|FILE",
    help="The seal key from 'ccc audit seal-key export' (the line itself, or a file "
    "holding it): verify every seal, and report lines after the last one.",
)
@click.option(
    "--allow-unsealed-tail",
    is_flag=True,
    help="Exit 0 when the log verifies but lines follow its last seal (a running "
    "relay seals every 5 minutes).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(
    config_path: str | None, pubkey_path: str | None, seal_key_arg: str | None,
    allow_unsealed_tail: bool, as_json: bool,
) -> None:  # fmt: skip
    """Check the whole chain; exit 1 naming the first edited, missing or moved line,
    forged or missing seal, or open tamper alarm; exit 5 for an unsealed tail."""
    from ccc_relay.audit.recorded import (
        HeadUnavailable,
        read_clean_stop,
        read_outbox,
        read_recorded_head,
    )
    from ccc_relay.audit.verify import verify_log

    config = _config(config_path)
    log_dir = _require_log(config, EXIT_BROKEN, "no_audit_log")
    notes: list[str] = []
    try:
        # Read the head before the files: the log only ever runs ahead of relay.db.
        recorded = read_recorded_head(config.db_path)
        outbox = read_outbox(config.db_path)
        clean_stop = read_clean_stop(config.db_path)
    except HeadUnavailable as exc:
        fail(str(exc), EXIT_CONFIG)
    if recorded is None:
        notes.append(f"no head recorded in {config.db_path}: a cut tail cannot be detected")
    key, key_source = _public_key(config, pubkey_path, notes)
    seal_key = _seal_key(seal_key_arg)
    try:
        with spinner(f"verifying the audit log in {log_dir}"):
            report = verify_log(
                log_dir, recorded=recorded, public_key=key, outbox=outbox, seal_key=seal_key,
                stopped_cleanly=clean_stop is not None and clean_stop == recorded
                and _relay_stopped(log_dir),
            )  # fmt: skip
    except OSError as exc:
        fail(f"cannot read the audit log: {exc}", EXIT_CONFIG)
    notes = report.notes + notes
    if key is None and report.checkpoints:
        notes.append("checkpoint signatures were not checked: no key (pass --pubkey)")
    if seal_key is None:
        notes.append("seals were not verified: pass --seal-key with the key exported at set-up "
                     "('ccc audit seal-key export'); only seals prove the past was not rewritten "
                     "by someone holding this host's keys")  # fmt: skip
    tail = report.unsealed if report.problem is None else None
    if tail is not None and allow_unsealed_tail:
        notes.append(f"{_unsealed(tail)} (allowed)")
    if as_json:
        emit_json({**report.as_dict(), "notes": notes, "key": key_source,
                   "seal_key": None if seal_key is None else seal_key.key_id,
                   "recorded_head": None if recorded is None else str(recorded)})  # fmt: skip
    elif report.problem is not None:
        click.echo(f"FAIL: {report.problem}")
    else:
        click.echo(
            f"OK: {plural(report.lines, 'line')}, {plural(report.files, 'file')}, "
            f"head {report.head.hash}"
        )
        signed = f", {report.signatures} signatures verified with {key_source}" if key else ""
        click.echo(f"seq {report.head.seq}; {report.checkpoints} checkpoints{signed}")
        click.echo(_seals_line(report, seal_key))
        if tail is not None and not allow_unsealed_tail:
            click.echo(f"UNSEALED TAIL: {_unsealed(tail)}")
    if not as_json:
        for note in notes:
            click.echo(f"note: {note}", err=True)
    if report.problem is not None:
        sys.exit(EXIT_BROKEN)
    sys.exit(EXIT_UNSEALED if tail is not None and not allow_unsealed_tail else 0)


def _seals_line(report: Any, seal_key: SealKey | None) -> str:
    if seal_key is None:
        return f"{report.seals} seals (not verified)"
    epochs = report.sealed_epochs
    which = "" if epochs is None else f", epochs {epochs[0]}..{epochs[1]}"
    return (f"{report.seals} seals, {report.seals_verified} verified with seal key "
            f"{seal_key.key_id}{which}")  # fmt: skip


def _unsealed(tail: tuple[int, int]) -> str:
    first, last = tail
    return (f"seq {first}..{last} ({last - first + 1} line(s)) follow the last verified seal: "
            "nothing vouches for them. A running relay seals every 5 minutes and at a clean "
            "stop, a crashed one at its next start; lines after the seal of a stopped relay "
            "were appended by someone else")  # fmt: skip


def _seal_key(arg: str | None) -> SealKey | None:
    """``--seal-key``: the exported line itself, or a file holding it."""
    from ccc_relay.audit.sealing import EXPORT_PREFIX, SealKey, SealKeyError

    if arg is None:
        return None
    text = arg
    if not arg.startswith(EXPORT_PREFIX):
        try:
            text = Path(arg).read_text(encoding="ascii", errors="replace")[:4096]
        except OSError as exc:
            fail(f"--seal-key: cannot read {arg}: {exc.strerror}", EXIT_CONFIG)
    try:
        return SealKey.parse(text)
    except SealKeyError as exc:
        fail(f"--seal-key: {exc}", EXIT_CONFIG)


def _relay_stopped(log_dir: Path) -> bool:
    """Whether no relay holds the log's lock now (so nothing may follow the recorded head).

    Only tries the lock and lets go at once; False when that cannot be told.
    """
    try:
        fd = os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


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


@audit.group("seal-key")
def seal_key_group() -> None:
    """The key that verifies the log's forward-secure seals."""


@seal_key_group.command("export")
@config_option
@click.option("--force", is_flag=True,
              help="After the one export: print the current epoch's key instead, which "
                   "verifies only the seals from that epoch on.")  # fmt: skip
def seal_key_export(config_path: str | None, force: bool) -> None:
    """Print the seal key once, at set-up, and destroy this host's copy of it.

    Keep the line off this host (a password manager, another machine, paper):
    with it 'ccc audit verify --seal-key' proves that no line before the last
    seal was changed since, even by someone who took over this host. It can
    make seals too, so guard it like a password.
    """
    from ccc_relay.audit.sealing import SealKeyError, destroy_seed, read_seed

    state_dir = _config(config_path).state_dir
    try:
        seed = read_seed(state_dir)
        if seed is not None:
            click.echo(seed.export())
            sys.stdout.flush()
            destroy_seed(state_dir)
            click.echo(f"seal key {seed.key_id} (epoch 0): keep this line off this host; its "
                       "copy here has been destroyed, so it cannot be exported again",
                       err=True)  # fmt: skip
            return
        current = _current_seal_key(state_dir)
    except SealKeyError as exc:
        fail(str(exc), EXIT_CONFIG)
    except OSError as exc:
        fail(f"cannot export the seal key from {state_dir}: {exc}", EXIT_CONFIG)
    if current is None:
        fail(f"no seal key in {state_dir} yet: ccc-statusd makes one when it first starts",
             EXIT_CONFIG)  # fmt: skip
    if not force:
        fail(f"the seal key {current.key_id} was exported already and its epoch-0 copy destroyed "
             "on this host: only that copy verifies every seal, and no one can print it again. "
             f"--force prints the key of the current epoch ({current.epoch}) instead; it "
             f"verifies only the seals from epoch {current.epoch} on, never the ones before "
             "(that is what forward security means)", EXIT_REFUSED)  # fmt: skip
    click.echo(current.export())
    click.echo(f"seal key {current.key_id} from epoch {current.epoch} on: seals before that "
               "epoch cannot be verified with it; keep it off this host", err=True)  # fmt: skip


def _current_seal_key(state_dir: Path) -> SealKey | None:
    """The relay's current epoch key (read again if the relay was rewriting it)."""
    from ccc_relay.audit.sealing import SealKeyError, read_state

    for attempt in range(3):
        try:
            return read_state(state_dir)
        except SealKeyError:
            if attempt == 2:
                raise
            time.sleep(0.05)
    return None  # pragma: no cover


@audit.command("acknowledge")
@click.argument("seq", type=click.IntRange(1, None))
@click.option("--note", help="What you found; kept in the acknowledgement line.")
@config_option
@handle_errors
def acknowledge(seq: int, note: str | None, config_path: str | None) -> None:
    """Record that the tamper alarm at SEQ was looked into (the relay must be running).

    The alarm's line stays in the log; verify accepts it from then on and
    names it in a note.
    """
    admin = OperatorClient(_config(config_path))
    fields: dict[str, Any] = {"seq": seq} if note is None else {"seq": seq, "note": note}
    result = admin.request("audit_acknowledge", **fields)
    alarm = result.get("acknowledged") or {}
    click.echo(f"acknowledged the tamper alarm at seq {seq}: {alarm.get('detail')}")


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

    log_dir = _require_log(_config(config_path), EXIT_NOT_FOUND, "not_found")
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

    log_dir = _require_log(_config(config_path), EXIT_NOT_FOUND, "not_found")
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


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"
