"""What every command shares: finding the config, printing, turning errors into exits.

Exit codes: 0 success, 1 the relay refused (its code and sentence are
printed), 2 usage errors (click), 3 no relay reachable, 4 bad config or
credential.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from ccc_relay.cli.terminal import shown
from ccc_relay.client.base import RelayError, RelayUnavailable
from ccc_relay.client.endpoint import host_config
from ccc_relay.credentials import CredentialError
from ccc_relay.policy.config import Config, ConfigError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 3
EXIT_CONFIG = 4

config_option = click.option(
    "--config",
    "config_path",
    envvar="CCC_CONFIG",
    type=click.Path(dir_okay=False),
    help="The relay's YAML config (env CCC_CONFIG); default: embedded defaults.",
)


def load_host_config(config_path: str | None) -> Config:
    try:
        return host_config(config_path)
    except ConfigError as exc:
        fail(f"invalid config: {exc}", EXIT_CONFIG)


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {shown(message, one_line=True)}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Map library errors to one line on stderr and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        json_mode = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except RelayUnavailable as exc:
            _report(exc, json_mode)
            sys.exit(EXIT_UNAVAILABLE)
        except RelayError as exc:
            _report(exc, json_mode)
            sys.exit(EXIT_REFUSED)
        except (CredentialError, ConfigError) as exc:
            fail(str(exc), EXIT_CONFIG)

    return wrapper  # type: ignore[return-value]


def _report(exc: RelayError, json_mode: bool) -> None:
    if json_mode:
        click.echo(json.dumps({"error": exc.as_dict()}))
    text = f"error: {shown(exc.message, one_line=True)} [{shown(exc.code, one_line=True)}]"
    if exc.retry_after is not None:
        text += f" (retry after {exc.retry_after:g}s)"
    click.echo(text, err=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, sort_keys=True))
