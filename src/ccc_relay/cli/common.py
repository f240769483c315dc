"""What every command shares: finding the config, printing, turning errors into exits.

One table of exit codes for ``ccc`` and ``ccc-statusd`` (``EXIT_CODES``,
documented in docs/cli.md, whose table a test compares with this one). The
same error always leaves with the same code: a relay refusal by its stable
code (``CODE_EXITS``), a local problem by what it is.

One JSON convention: ``--json`` prints exactly one JSON document, an object
(lists go inside it), through :func:`emit_json`; commands that print a stream
of events (``watch``, ``audit tail``, ``audit search``) print JSON Lines, one
object per event, through :func:`emit_json_line`. An error under ``--json``
is one more object, ``{"error": {"code", "message", "exit"}}``, on stdout,
besides the human line on stderr.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn, TypeVar

import click

from ccc_relay.cli.terminal import shown
from ccc_relay.client.admin import AdminClient
from ccc_relay.client.endpoint import host_config
from ccc_relay.client.errors import RelayError, RelayUnavailable, credential_refusal
from ccc_relay.credentials import CredentialError
from ccc_relay.policy.config import Config, ConfigError
from ccc_relay.protocol.plain import plain_words

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_REFUSED = 1  # the relay refused, or a check failed (the answer is "no")
EXIT_USAGE = 2  # click's own: a wrong option or argument
EXIT_UNAVAILABLE = 3  # no relay reachable
EXIT_CONFIG = 4  # a config, key or file that cannot be used as it is
EXIT_UNSEALED = 5  # audit verify: the log verifies but ends in an unsealed tail
EXIT_NOT_FOUND = 6  # no such agent, held message, alarm, audit log; no rule to remove
EXIT_CONFLICT = 7  # it exists already, or is not in the state the command needs
EXIT_CREDENTIAL = 8  # a credential missing or refused, a socket this user may not open

# (code, label, meaning): the table docs/cli.md shows (tests/test_cli_conventions.py).
EXIT_CODES: tuple[tuple[int, str, str], ...] = (
    (EXIT_OK, "ok", "done"),
    (EXIT_REFUSED, "refused", "the relay refused (its code and sentence are printed), "
     "or a check failed"),
    (EXIT_USAGE, "usage", "a wrong option or argument"),
    (EXIT_UNAVAILABLE, "relay_unavailable", "no relay is running or reachable"),
    (EXIT_CONFIG, "bad_config", "a config, key or file that cannot be used as it is"),
    (EXIT_UNSEALED, "unsealed_tail", "audit verify: the log verifies but lines follow "
     "its last seal"),
    (EXIT_NOT_FOUND, "not_found", "no such agent, held message, alarm, rule to remove or "
     "audit log"),
    (EXIT_CONFLICT, "conflict", "it exists already, or is not in the state the command needs"),
    (EXIT_CREDENTIAL, "credential", "a credential missing or refused, or a socket this user "
     "may not open"),
)  # fmt: skip

# Relay (and client) error codes that are not a plain refusal.
CODE_EXITS = {
    "relay_unavailable": EXIT_UNAVAILABLE,
    "peer_unavailable": EXIT_UNAVAILABLE,
    "unavailable": EXIT_UNAVAILABLE,
    "not_found": EXIT_NOT_FOUND,
    "conflict": EXIT_CONFLICT,
    "auth_failed": EXIT_CREDENTIAL,
    "credential_missing": EXIT_CREDENTIAL,
    "credential_invalid": EXIT_CREDENTIAL,
    "permission_denied": EXIT_CREDENTIAL,
}

# The next step for a refusal whose sentence does not already say it.
HINTS = {
    # The relay answers an unknown name and a known one alike (it tells an agent
    # nothing about who exists), so the hint must not assume the name is right.
    "forbidden": "check the name (the operator's 'ccc agent list' shows them); if it is "
    "right, the operator must allow the pair: ccc allow SENDER RECIPIENT",
    "auth_failed": "the credential was rotated or its agent removed: ask the operator for "
    "a new one ('ccc agent rotate NAME')",
    "quarantined": "the operator lifts a quarantine with 'ccc agent release NAME'",
    "session_expired": "run the command again: it starts a new session",
    "queue_full": "the recipient has too much waiting; try again once it has read its inbox",
}

config_option = click.option(
    "--config",
    "config_path",
    envvar="CCC_CONFIG",
    type=click.Path(dir_okay=False),
    help="The relay's YAML config (env CCC_CONFIG); default: embedded defaults.",
)

# Options ``ccc`` takes before the subcommand that a subcommand may take again.
ROOT_OPTIONS = {"config_path": "--config", "socket_path": "--socket"}
_GIVEN = click.core.ParameterSource.COMMANDLINE


def _same(a: object, b: object) -> bool:
    return os.path.realpath(str(a)) == os.path.realpath(str(b))


# How a value that is not UTF-8 is named in the error (else by its flag or metavar).
_INPUT_NAMES = {"text": "the message"}


def not_utf8(what: str, data: bytes) -> str | None:
    """The sentence for ``data`` that is not UTF-8 (None when it is)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{what} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
    return None


class NotUtf8(click.UsageError):
    """An argument that is not UTF-8: refused before anything is sent (exit 2)."""


def _checked(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    # Python keeps undecodable argv bytes as lone surrogates; they would fail only
    # when sent, as an internal error. Turn them back into bytes to name the first one.
    for item in value if isinstance(value, tuple) else (value,):
        if isinstance(item, str) and not item.isascii():
            raw = item.encode("utf-8", "surrogateescape")
            name = _INPUT_NAMES.get(param.name or "", param.get_error_hint(ctx))
            problem = not_utf8(name, raw)
            if problem:
                raise NotUtf8(problem, ctx)
    return value


def _adopted(param: click.Parameter, inner: Callable[..., Any] | None) -> Callable[..., Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        value = _checked(ctx, param, value)
        if param.name in ROOT_OPTIONS:
            value = _from_root(ctx, param.name, value)
        return inner(ctx, param, value) if inner is not None else value

    return callback


def _from_root(ctx: click.Context, name: str, value: Any) -> Any:
    """``value`` of option ``name``, or what ``ccc`` was given before the subcommand.

    Typed is stronger than the environment: ``ccc --config A CMD`` uses A even with
    CCC_CONFIG set; typed twice with different values is a contradiction, not a choice.
    """
    root = ctx.find_root()
    if root is ctx or name not in root.params:
        return value
    outer = root.params[name]
    outer_given = root.get_parameter_source(name) is _GIVEN
    inner_given = ctx.get_parameter_source(name) is _GIVEN
    if outer_given and inner_given and not _same(outer, value):
        flag = ROOT_OPTIONS[name]
        raise click.UsageError(
            f"{flag} {outer} before the command and {flag} {value} after it: give one", ctx
        )
    if outer_given and not inner_given:
        return outer
    return value


def adopt_command_tree(command: click.Command) -> None:
    """Give every parameter of ``command`` and its subcommands the shared checks.

    An argument that is not UTF-8 is a usage error naming it; a subcommand's own
    ``--config`` (or ``--socket``) reads the value given before the subcommand when
    it was not given one itself, so no command can silently fall back to the
    default relay. Done once on the whole tree, whoever defined the parameter.
    """
    for param in command.params:
        if not getattr(param, "_ccc_adopted", False):
            param.callback = _adopted(param, param.callback)
            param._ccc_adopted = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            adopt_command_tree(sub)


def root_socket() -> str | None:
    """The ``--socket`` typed before the subcommand, if any (not CCC_SOCKET)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    root = ctx.find_root()
    if "socket_path" not in root.params or root.get_parameter_source("socket_path") is not _GIVEN:
        return None
    return str(root.params["socket_path"])


def exit_code_for(exc: RelayError) -> int:
    """The exit code of an error: by its stable code, a refusal unless named there."""
    default = EXIT_UNAVAILABLE if isinstance(exc, RelayUnavailable) else EXIT_REFUSED
    return CODE_EXITS.get(exc.code, default)


def load_host_config(config_path: str | None, *, operator: bool = True) -> Config:
    """The relay's config, or exit 4 naming the file and its problem.

    An ``operator`` command reaches the relay through the admin socket the config
    names, so a ``--socket`` typed before it must be that config's socket: it cannot
    pick another relay, and it is never silently ignored either (exit 2).
    """
    try:
        config = host_config(config_path)
    except ConfigError as exc:
        fail(config_problem(config_path or os.environ.get("CCC_CONFIG"), exc), EXIT_CONFIG)
    socket = root_socket() if operator else None
    if socket is not None and not _same(socket, config.socket_path):
        where = f"the config {config.source}" if config.source else "the default config"
        raise click.UsageError(
            f"--socket {socket} is not the socket of {where} ({config.socket_path}); "
            "operator commands reach a relay through the admin socket its config names: "
            "use 'ccc --config FILE ...' to choose the relay"
        )
    return config


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """ "did you mean 'alice'? " for a near miss among ``known`` (empty when none is near)."""
    close = difflib.get_close_matches(name, sorted(set(known) - {name}), n=3, cutoff=0.6)
    if not close:
        return ""
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "? "


def credential_names(config: Config) -> list[str]:
    """The agents whose credential files this user can see in the relay's state dir."""
    try:
        return [p.stem for p in config.credentials_dir.glob("*.cred")]
    except OSError:
        return []


_NO_AGENT = re.compile(r"no agent named '([^']+)'")


def start_command(config: Config) -> str:
    """The command that starts the relay ``config`` describes (its --config included)."""
    if config.source is None:
        return "ccc-statusd start"
    return f"ccc-statusd start --config {shlex.quote(str(config.source))}"


class OperatorClient(AdminClient):
    """The admin client of one config: "not running" names that relay's start command."""

    def __init__(self, config: Config) -> None:
        super().__init__(config.admin_socket_path)
        self.config = config

    def request(self, op: str, **args: Any) -> Any:
        try:
            return super().request(op, **args)
        except RelayUnavailable as exc:
            self._unavailable(exc)
        except RelayError as exc:
            missing = _NO_AGENT.fullmatch(exc.message) if exc.code == "not_found" else None
            if missing is None:
                raise
            raise RelayError(
                "not_found", exc.message + self._near(missing[1]), retry_after=exc.retry_after
            ) from None

    def _near(self, name: str) -> str:
        """For a mistyped name: the registered ones like it, and where all are listed."""
        try:
            rows = super().request("agent_list")
        except RelayError:
            rows = []
        known = [row["name"] for row in rows if isinstance(row, dict) and "name" in row]
        return f"; {did_you_mean(name, known)}'ccc agent list' shows the agents"

    def _unavailable(self, exc: RelayUnavailable) -> NoReturn:
        if exc.code != "relay_unavailable" or not exc.message.startswith("no relay is"):
            raise exc
        raise RelayUnavailable(
            f"no relay is running (admin socket {self.path}); start it with "
            f"'{start_command(self.config)}'"
        ) from None


def config_problem(path: str | None, exc: ConfigError) -> str:
    """'invalid config FILE: problem' on one line, the file named once."""
    problem = " ".join(str(exc).split())
    if not path:
        return f"invalid config: {problem}"
    shown_path = os.path.abspath(path)
    for prefix in (f"{path}: ", f"{shown_path}: "):
        problem = problem.removeprefix(prefix)
    return f"invalid config {shown_path}: {problem}"


def _label(exit_code: int) -> str:
    return next((label for code, label, _ in EXIT_CODES if code == exit_code), "error")


def json_requested() -> bool:
    """Whether the command being run was given ``--json``."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("as_json"))


def fail(message: str, exit_code: int, *, code: str | None = None) -> NoReturn:
    """One line on stderr (and the error object on stdout under --json), then exit.

    A specific ``code`` is shown in brackets, as a relay's refusal shows its code.
    """
    suffix = f" [{code}]" if code else ""
    code = code or _label(exit_code)
    if json_requested():
        emit_json({"error": {"code": code, "message": message, "exit": exit_code}})
    click.echo(f"error: {shown(message, one_line=True)}{suffix}", err=True)
    sys.exit(exit_code)


def handle_errors(fn: F) -> F:
    """Map library errors to one line on stderr and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RelayError as exc:
            report(exc)
        except CredentialError as exc:
            report(credential_refusal(exc))
        except ConfigError as exc:
            fail(f"invalid config: {exc}", EXIT_CONFIG)

    return wrapper  # type: ignore[return-value]


def report(exc: RelayError) -> NoReturn:
    """Print a refusal in the user's words, with its code and next step, and exit."""
    exit_code = exit_code_for(exc)
    message = humane(exc.message)
    if json_requested():
        data = {**exc.as_dict(), "message": message, "exit": exit_code}
        emit_json({"error": data})
    text = f"error: {shown(message, one_line=True)} [{shown(exc.code, one_line=True)}]"
    if exc.retry_after is not None:
        text += f" (retry after {exc.retry_after:g}s)"
    hint = HINTS.get(exc.code)
    if hint:
        text += f"\n  next: {hint}"
    click.echo(text, err=True)
    sys.exit(exit_code)


# A field the relay names (protocol/plain.py) in the words of the command line.
_FIELDS = {
    "thread": "--thread",
    "reply_to": "--reply-to",
    "deliver_at": "--at",
    "to": "the recipient",
    "body": "the message text",
}
_NAMED = re.compile(r"'(\w+)' (.*)", re.S)
# A field named without quotes ("deliver_at lies more than 30 days ahead"); only the
# names with an underscore, which no sentence starts with.
_BARE_FIELD = re.compile(r"(\w+_\w+) (.*)", re.S)


def humane(message: str) -> str:
    """``message`` with a schema checker's jargon in plain words and a field as its flag."""
    prefix, sep, rest = message.partition(": ")
    if not sep:
        prefix, rest = "", message
    rest = plain_words(rest)  # an older relay sends the checker's own words
    # The relay tells a protocol client it hung up; the command is over anyway.
    rest = rest.removesuffix("; the connection is closed")
    named = _NAMED.fullmatch(rest) or _BARE_FIELD.fullmatch(rest)
    if named and named[1] in _FIELDS:
        rest = f"{_FIELDS[named[1]]} {named[2]}"
    return f"{prefix}{sep}{rest}"


def read_stdin_text(what: str = "the message") -> str:
    """Standard input as text, or exit 2 saying where it is not UTF-8."""
    data = sys.stdin.buffer.read()
    problem = not_utf8(f"{what} (standard input)", data)
    if problem:
        fail(problem, EXIT_USAGE)
    return data.decode("utf-8")


def emit_json(data: Mapping[str, Any]) -> None:
    """The one JSON document a command prints with --json: an object."""
    if not isinstance(data, Mapping):
        raise TypeError("--json prints one object; put lists inside it")
    click.echo(json.dumps(data, ensure_ascii=False, sort_keys=True))


def emit_json_line(data: Mapping[str, Any]) -> None:
    """One event of a stream (JSON Lines): one object on one line, flushed."""
    click.echo(json.dumps(data, ensure_ascii=False, sort_keys=True))
    sys.stdout.flush()


def _json_in_argv() -> bool:
    args = sys.argv[1:]
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def show_click_error(exc: click.ClickException) -> None:
    """A usage or click error in the same shape as every other: ``error: ...``, the next
    step, and the error object under --json (the command's context may not exist yet)."""
    message = exc.format_message()
    exit_code = exc.exit_code
    if _json_in_argv():
        emit_json({"error": {"code": _label(exit_code), "message": message, "exit": exit_code}})
    text = f"error: {shown(message, one_line=True)}"
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        text += f"\n  next: see '{ctx.command_path} --help'"
    click.echo(text, err=True)


def run_main(command: click.Command) -> None:
    """Run a top-level command with no traceback for what escapes it.

    A defect still says what it was and how to see the traceback
    (CCC_DEBUG=1), and exits 70 (EX_SOFTWARE).
    """
    adopt_command_tree(command)
    try:
        rv = command.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        show_click_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (| head): nothing more to say, and nothing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:
        if os.environ.get("CCC_DEBUG"):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", EXIT_REFUSED, code="os_error")
    except Exception as exc:
        if os.environ.get("CCC_DEBUG"):
            raise
        click.echo(
            f"error: internal error: {type(exc).__name__}: {shown(str(exc), one_line=True)}\n"
            "  next: run again with CCC_DEBUG=1 for the traceback, and report it",
            err=True,
        )
        sys.exit(70)
    # ctx.exit(N) and --help come back as a return value without standalone mode.
    if isinstance(rv, int):
        sys.exit(rv)
