"""``ccc-statusd``: run and control the host relay daemon."""

from __future__ import annotations

import logging
import shlex
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import click

from ccc_relay import __version__
from ccc_relay.audit.log import AuditLogError
from ccc_relay.audit.signing import SigningKeyError
from ccc_relay.cli.common import (
    EXIT_CONFIG,
    EXIT_CONFLICT,
    EXIT_UNAVAILABLE,
    config_option,
    emit_json,
    fail,
    handle_errors,
    load_host_config,
)
from ccc_relay.cli.progress import spinner
from ccc_relay.cli.systemd_unit import systemd_unit
from ccc_relay.client.admin import AdminClient
from ccc_relay.daemon.landlock import LandlockError
from ccc_relay.daemon.preflight import (
    check_host,
    prepare_admin_dir,
    run_account,
    socket_activated,
)
from ccc_relay.daemon.privileges import PrivilegeError
from ccc_relay.daemon.sockets import SocketPathError, remove_bound_sockets
from ccc_relay.policy.config import Config, ConfigError, load_config
from ccc_relay.policy.units import format_duration, format_size


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ccc-statusd")
def main() -> None:
    """The ccc relay daemon: agents in containers message each other through it.

    Without --config it runs on embedded defaults: state in $CCC_CACHE_DIR,
    else $XDG_CACHE_HOME/ccc-status, else ~/.cache/ccc-status, with the agents'
    socket daemon.sock and the operator's admin.sock there.
    """


# The Config fields effective_settings prints under another name (field path -> key).
SETTING_NAMES = {
    "source": "config",
    "limits.rate_per_minute": "rate_limit",
    "limits.agent_rate_per_minute": "agent_rate_limit",
    "limits.pair_rate_per_minute": "pair_rate_limit",
    "limits.global_rate_per_minute": "global_rate_limit",
    "limits.frames_per_minute": "frame_rate_limit",
    "limits.audit_body_bytes_per_minute_total": "audit_body_bytes_per_minute",
    "limits.sanitize.enabled": "sanitize",
    "limits.sanitize.paths": "sanitize_paths",
    "limits.sanitize.redact_secrets": "redact_secrets",
    "rules": "policy",
    "federation.tls_ca": "federation.tls",
    "federation.tls_cert": "federation.tls",
    "federation.tls_key": "federation.tls",
    "federation.nkey_seed": "federation.auth",
    "federation.credentials": "federation.auth",
}


def effective_settings(config: Config) -> dict[str, Any]:
    """Every setting ``config`` holds, named as in the config file, in people's units.

    The keys are the config file's (``rate_limit``, ``audit.retention``); a
    Config field this function does not know yet is still printed, under its
    field path, so nothing the daemon runs with is left out.
    """
    limits = config.limits
    anomaly = config.anomaly
    settings: dict[str, Any] = {
        "config": str(config.source) if config.source else "(embedded defaults)",
        "state_dir": str(config.state_dir),
        "socket_path": str(config.socket_path),
        "socket_mode": f"0{config.socket_mode:o}",
        "socket_group": config.socket_group,
        "admin_socket_path": str(config.admin_socket_path),
        "user": config.user,
        "per_agent_sockets": config.per_agent_sockets,
        "agent_socket_dir": str(config.agent_sockets),
        "max_message_size": (
            f"{limits.max_message_size} bytes ({format_size(limits.max_message_size)})"
        ),
        "rate_limit": f"{limits.rate_per_minute:g} msg/min/session",
        "agent_rate_limit": f"{limits.agent_rate_per_minute:g} msg/min/agent",
        "pair_rate_limit": f"{limits.pair_rate_per_minute:g} msg/min/pair",
        "global_rate_limit": f"{limits.global_rate_per_minute:g} msg/min",
        "session_timeout": format_duration(limits.session_timeout),
        "require_session_auth": limits.require_session_auth,
        "hello_timeout": format_duration(limits.hello_timeout),
        "max_connections": limits.max_connections,
        "max_unauthenticated": limits.max_unauthenticated,
        "max_unauthenticated_per_uid": limits.max_unauthenticated_per_uid,
        "max_connections_per_agent": limits.max_connections_per_agent,
        "max_sessions_per_agent": limits.max_sessions_per_agent,
        "auth_failures_per_minute": f"{limits.auth_failures_per_minute:g} per uid and name",
        "frame_rate_limit": f"{limits.frame_rate:g} frames/min/agent"
        + ("" if limits.frames_per_minute else " (60 per message an agent may send)"),
        "max_queued_messages": f"{limits.max_queued_messages} per recipient (half per sender)",
        "max_queued_bytes": (
            f"{format_size(limits.max_queued_bytes)} per recipient (half per sender)"
        ),
        "audit_body_bytes_per_minute": (
            f"{format_size(limits.audit_body_bytes_per_minute)} per agent, "
            f"{format_size(limits.audit_body_bytes_per_minute_total)} in all"
        ),
        "max_queued_messages_total": limits.max_queued_messages_total,
        "max_queued_bytes_total": format_size(limits.max_queued_bytes_total),
        "sanitize": limits.sanitize.enabled,
        "sanitize_paths": limits.sanitize.paths,
        "redact_secrets": limits.sanitize.redact_secrets,
        "audit.log_path": str(config.audit.log_path),
        "audit.log_all_messages": config.audit.log_all_messages,
        "audit.retention": format_duration(config.audit.retention),
        "audit.log_group": config.audit.log_group,
        "anomaly.window": format_duration(anomaly.window),
        "anomaly.jump_min_messages": anomaly.jump_min_messages,
        "anomaly.rules": [
            f"{name} >= {rule.threshold:g}" + (" (quarantine)" if rule.quarantine else "")
            for name, rule in sorted(anomaly.rules.items())
        ],
        "policy": [f"{r.sender} -> {r.recipient} ({r.action})" for r in config.rules],
        "groups": [f"@{g.name}: {', '.join(g.members)}" for g in config.groups],
        **_federation_settings(config),
    }
    for path, value in _fields(config):
        if SETTING_NAMES.get(path, path) not in settings and not _covered(path, settings):
            settings[path] = _plain(value)
    return settings


def _federation_settings(config: Config) -> dict[str, Any]:
    federation = config.federation
    if federation is None:
        return {"federation": "(none: this relay talks to no other and opens no network socket)"}
    tls = [
        f"{name} {path}"
        for name, path in (
            ("ca", federation.tls_ca),
            ("cert", federation.tls_cert),
            ("key", federation.tls_key),
        )
        if path is not None
    ]
    auth = (
        f"nkey_seed {federation.nkey_seed}"
        if federation.nkey_seed is not None
        else f"credentials {federation.credentials}"
    )
    return {
        "federation.host": federation.host,
        "federation.servers": list(federation.servers),
        "federation.tls": tls or None,
        "federation.auth": auth,
        "federation.stream": federation.stream,
        "federation.publish_timeout": format_duration(federation.publish_timeout),
        "federation.peers": [
            f"{host} (key {key})" for host, key in sorted(federation.peers.items())
        ],
    }


def _fields(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every leaf field of a dataclass, nested ones walked."""
    import dataclasses

    out: list[tuple[str, Any]] = []
    for field in dataclasses.fields(value):
        inner = getattr(value, field.name)
        path = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(inner) and not isinstance(inner, type):
            out += _fields(inner, f"{path}.")
        else:
            out.append((path, inner))
    return out


def _covered(path: str, settings: dict[str, Any]) -> bool:
    # limits.X is printed as X (the file's daemon.security.X); anomaly.rules as itself.
    for prefix in ("limits.", "limits.sanitize."):
        if path.startswith(prefix) and path.removeprefix(prefix) in settings:
            return True
    return False


def _human(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_human(v) for v in value) or "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_human(v)}" for k, v in value.items())
    return str(value)


def _plain(value: Any) -> Any:
    """A setting as JSON can hold it (and a person can read it)."""
    import dataclasses
    from collections.abc import Mapping
    from pathlib import Path

    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"settings": {...}, "directories": [...], "problems": [...]}.',
)
def check_config(file: str, as_json: bool) -> None:
    """Validate FILE and check this host for it, as the user who will start the relay.

    Prints the settings the daemon would run with, then the directories it needs
    (state, audit log, sockets) and how each stands for the account it will run
    as: daemon.user when started as root. Exits 4 when the file is invalid or
    this host lacks what it needs (a user, a group, a directory it may use, a
    Python that user may run), each problem printed with its fix; 0 otherwise.
    """
    try:
        config = load_config(file)
    except ConfigError as exc:
        fail(f"invalid config: {exc}", EXIT_CONFIG)
    settings = effective_settings(config)
    directories, problems = check_host(config)
    if as_json:
        emit_json(
            {
                "settings": settings,
                "directories": [
                    {"key": d.key, "path": str(d.path), "state": d.state, "problem": d.problem}
                    for d in directories
                ],
                "problems": problems,
            }
        )
    else:
        width = max(len(k) for k in settings)
        for key, value in settings.items():
            click.echo(f"{key:<{width}}  {_human(value)}")
        for directory in directories:
            if not directory.problem:
                click.echo(f"directory {directory.path} ({directory.key}): {directory.state}")
        for problem in problems:
            click.echo(f"problem: {problem}", err=True)
    sys.exit(EXIT_CONFIG if problems else 0)


@main.command()
@config_option
@click.option("--allow-root", is_flag=True, help="Run as root without daemon.user (not advised).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def start(config_path: str | None, allow_root: bool, log_level: str) -> None:
    """Run the relay in the foreground until SIGTERM, Ctrl-C or 'ccc-statusd stop'.

    Before it binds anything it checks what 'ccc-statusd check-config' checks and
    exits 4 with each problem and its fix; exits 7 when a relay already runs there.
    """
    from ccc_relay.daemon.server import run_daemon

    config = load_host_config(config_path)
    _, problems = check_host(config, allow_root=allow_root, socket_activated=socket_activated())
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(EXIT_CONFIG)
    running = _running_relay(config)
    if running is not None:
        fail(_already_running(config, running), EXIT_CONFLICT)
    try:
        prepare_admin_dir(config, run_account(config))
    except (OSError, PrivilegeError) as exc:
        fail(f"cannot create {config.admin_socket_path.parent}: {exc}", EXIT_CONFIG)
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s ccc-statusd %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        run_daemon(config)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        _start_failed(config, exc)
        raise


def _start_failed(config: Config, exc: BaseException) -> None:
    """Say why the relay did not start, and the next step, after removing what it
    left; returns (for the caller to re-raise) only for an unexpected error."""
    running = _running_relay(config) if isinstance(exc, SocketPathError) else None
    if running is not None:
        fail(_already_running(config, running), EXIT_CONFLICT)
    left = _left_behind()
    if isinstance(exc, sqlite3.DatabaseError):
        fail(
            f"cannot use the relay's database {config.db_path}: {exc}; if it is damaged, "
            "move it aside and restore it from a backup (without one the relay starts "
            f"empty: agents and rules must be added again){left}",
            EXIT_CONFIG,
        )
    known = (
        SocketPathError,
        PermissionError,
        PrivilegeError,
        LandlockError,
        AuditLogError,
        SigningKeyError,
    )
    if isinstance(exc, known):
        fail(f"{exc}{left}", EXIT_CONFIG)


def _running_relay(config: Config) -> Path | None:
    """The socket of ``config`` on which a relay answers, or None. Raises nothing.

    The agents' socket counts only when it is not systemd's to hand over: a
    socket systemd holds accepts connections before the relay runs.
    """
    paths = [config.admin_socket_path]
    if not socket_activated():
        paths.append(config.socket_path)
    return next((path for path in paths if _answers(path)), None)


def _already_running(config: Config, path: Path) -> str:
    stop = "ccc-statusd stop"
    if config.source is not None:
        stop += f" --config {shlex.quote(str(config.source))}"
    return (
        f"a relay is already running on {path}; stop it first with: {stop} "
        "(or give this one other socket paths)"
    )


def _left_behind() -> str:
    """Remove the sockets this failed start bound; name those it may not remove.

    A relay that failed after dropping to daemon.user may not unlink a socket in a
    directory of root's (/run); the next start replaces such a stale socket.
    """
    left = [str(p) for p in remove_bound_sockets()]
    if not left:
        return ""
    them = "them" if len(left) > 1 else "it"
    return (
        f" ({' and '.join(left)} stayed behind: this user may not remove {them}; "
        f"the next start replaces {them})"
    )


def _answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path``. Raises nothing."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


@main.command()
@config_option
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the exit.")
@handle_errors
def stop(config_path: str | None, timeout: float) -> None:
    """Ask the running relay to shut down, and wait until it has."""
    config = load_host_config(config_path)
    AdminClient(config.admin_socket_path).request("shutdown")
    deadline = time.monotonic() + timeout
    with spinner("waiting for the relay to stop"):
        while time.monotonic() < deadline:
            if not config.pid_path.exists():
                break
            time.sleep(0.05)
    if not config.pid_path.exists():
        click.echo("stopped")
        return
    fail(f"the relay did not stop within {timeout:g}s", EXIT_UNAVAILABLE)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@handle_errors
def status(config_path: str | None, as_json: bool) -> None:
    """The same as 'ccc status': is the relay running, and how is it doing.

    Exits 3 when it is not running.
    """
    from ccc_relay.cli.operator import show_status

    show_status(config_path, as_json)


@main.command()
@config_option
@click.option("--socket", "what", flag_value="socket", default=True, help="The agents' socket.")
@click.option("--admin", "what", flag_value="admin", help="The admin socket.")
@click.option("--state", "what", flag_value="state", help="The state directory.")
@click.option("--audit", "what", flag_value="audit", help="The audit log directory.")
def path(config_path: str | None, what: str) -> None:
    """Print where the relay keeps its socket (or admin socket, state, audit log)."""
    config = load_host_config(config_path)
    paths = {
        "socket": config.socket_path,
        "admin": config.admin_socket_path,
        "state": config.state_dir,
        "audit": config.audit.log_path,
    }
    click.echo(str(paths[what]))


@main.command()
@config_option
@handle_errors
def reload(config_path: str | None) -> None:
    """Re-read the config file the relay runs with (the same as sending it SIGHUP).

    Policy, groups, anomaly rules, sanitisation and audit.log_all_messages change at
    once; anything else (paths, sockets, user, limits) needs a restart, and is
    listed. An invalid file is refused and the running config kept.
    """
    config = load_host_config(config_path)
    result = AdminClient(config.admin_socket_path).request("reload")
    click.echo("applied: " + (", ".join(result["applied"]) or "nothing changed"))
    if result["restart_needed"]:
        click.echo("needs a restart: " + ", ".join(result["restart_needed"]), err=True)


@main.command()
@config_option
def pubkey(config_path: str | None) -> None:
    """Print the relay's message-signing public key (for CCC_RELAY_PUBKEY).

    Agents that set CCC_RELAY_PUBKEY to it get every delivered message signed
    and refuse any message that is unsigned or altered.
    """
    from ccc_relay.daemon.signing import public_key_of

    config = load_host_config(config_path)
    try:
        key = public_key_of(config.state_dir)
    except (OSError, ValueError) as exc:
        fail(f"cannot read the relay's signing key: {exc}", EXIT_CONFIG)
    if key is None:
        fail(
            "the relay has not run yet with this state dir; start it once to create its key",
            EXIT_UNAVAILABLE,
        )
    click.echo(key)


@main.group()
def session() -> None:
    """Inspect sessions and write to agents as the operator."""


@session.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@handle_errors
def session_list(config_path: str | None, as_json: bool) -> None:
    """Authenticated sessions connected right now."""
    config = load_host_config(config_path)
    rows = AdminClient(config.admin_socket_path).request("session_list")
    if as_json:
        emit_json({"sessions": rows})
        return
    from ccc_relay.cli.render import print_sessions

    print_sessions(rows)


@session.command("send")
@click.argument("agent")
@click.argument("text", required=False)
@config_option
@handle_errors
def session_send(agent: str, text: str | None, config_path: str | None) -> None:
    """Send TEXT (or stdin) to AGENT as 'operator'."""
    config = load_host_config(config_path)
    body = text if text is not None else sys.stdin.read()
    result = AdminClient(config.admin_socket_path).request("session_send", to=agent, body=body)
    click.echo(f"accepted {result['id']} -> {agent}")


main.add_command(systemd_unit)

if __name__ == "__main__":
    from ccc_relay.cli.common import run_main

    run_main(main)
