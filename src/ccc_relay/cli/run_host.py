"""What ``ccc run`` finds and checks on the host before anything starts.

The relay's config, the agent's socket and credential, the project directory,
whether the sandbox's uid can reach them, and the option values (--memory,
--tmp-size, --env) turned into spec values. Each missing piece is reported
with the command that provides it, as a ``click`` error.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import click

from ccc_relay.containers.detect import Identity, access_problem
from ccc_relay.policy.config import Config, ConfigError, embedded_defaults, load_config
from ccc_relay.policy.units import UnitError, parse_size


def load_run_config(path: str | None) -> Config:
    try:
        return load_config(path) if path else embedded_defaults()
    except ConfigError as exc:
        raise click.ClickException(f"invalid config: {exc}") from None


def agent_socket(config: Config, name: str) -> Path:
    """The socket to mount for ``name``: its own when the relay made one, else the shared one."""
    own = config.agent_socket(name)
    return own if config.per_agent_sockets or own.exists() else config.socket_path


def host_paths(config: Config, name: str, project: Path) -> tuple[Path, Path, Path]:
    try:
        project_dir = project.expanduser().resolve(strict=True)
    except OSError:
        raise click.ClickException(f"project directory {project} does not exist") from None
    if not project_dir.is_dir():
        raise click.ClickException(f"project {project} is not a directory")
    credential = config.credentials_dir / f"{name}.cred"
    if not credential.is_file():
        raise click.ClickException(
            f"no credential for agent {name!r} at {credential}: run 'ccc agent add {name}' first"
        )
    socket_path = agent_socket(config, name)
    try:
        is_socket = stat.S_ISSOCK(socket_path.stat().st_mode)
    except OSError:
        raise click.ClickException(
            f"the relay socket {socket_path} does not exist: start the relay with "
            "'ccc-statusd start' (with the same --config)"
        ) from None
    if not is_socket:
        raise click.ClickException(f"{socket_path} is not a socket; is the config right?")
    return project_dir, socket_path, credential


def check_reachable(runtime: str, ident: Identity, project: Path, socket_path: Path) -> None:
    # bwrap runs as the sandbox uid and walks host paths itself; an engine
    # mounts as root, so only the final inode's permission matters there.
    walk = runtime == "bwrap"
    socket_fix = (
        "set daemon.socket_group in the relay's config (docs/deploy.md, 'The sockets'), "
        "or pass --group"
    )
    if walk and access_problem(socket_path.parent, ident, 1, traverse=True):
        # The socket sits in a directory the sandbox uid cannot enter (a
        # config that keeps it in the private 0700 state dir).
        socket_fix = (
            "give sandboxes a socket outside the relay's private state dir: in the "
            "relay's config set daemon.per_agent_sockets: true with daemon.agent_socket_dir "
            "in a directory whose parents others may enter (or leave the config out: "
            "the defaults do this), plus daemon.socket_group; see docs/deploy.md, "
            "'The sockets', and 'ccc doctor'"
        )
    for path, want, fix in (
        (project, 7, f"chown {ident.uid} {project} (or pick --uid)"),
        (socket_path, 6, socket_fix),
    ):
        problem = access_problem(path, ident, want, traverse=walk)
        if problem:
            raise click.ClickException(f"the sandbox could not use {path}: {problem}; {fix}")


def size_option(option: str, text: str) -> int:
    try:
        return parse_size(text)
    except UnitError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def env_pairs(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    term = os.environ.get("TERM")
    if term and sys.stdin.isatty():
        pairs.append(("TERM", term))
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            if name not in os.environ:
                raise click.BadParameter(f"{name} is not set on the host", param_hint="--env")
            value = os.environ[name]
        pairs = [p for p in pairs if p[0] != name]
        pairs.append((name, value))
    return tuple(pairs)
