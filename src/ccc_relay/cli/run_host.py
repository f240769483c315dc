"""What ``ccc run`` finds and checks on the host before anything starts.

The relay's config, the agent's socket and credential, the project directory,
whether the sandbox's uid can reach them, and the option values (--memory,
--tmp-size, --env) turned into spec values. Each missing piece is reported
with the command that provides it, as one ``error:`` line and the exit code
of docs/cli.md's table (``run_fail``).
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path
from typing import NoReturn

import click

from ccc_relay.cli.common import (
    EXIT_CONFIG,
    EXIT_CREDENTIAL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    credential_names,
    did_you_mean,
)
from ccc_relay.cli.terminal import shown
from ccc_relay.containers.detect import Identity, access_problem, blocking_step
from ccc_relay.policy.config import Config, ConfigError, embedded_defaults, load_config
from ccc_relay.policy.units import UnitError, parse_size


def run_fail(message: str, exit_code: int) -> NoReturn:
    """``error: MESSAGE`` on stderr (further lines, such as a recipe, as they are), then exit.

    Like ``common.fail``, but a message may go on over several lines.
    """
    first, *rest = message.split("\n")
    lines = [
        f"error: {shown(first, one_line=True)}",
        *(shown(line, one_line=True) for line in rest),
    ]
    click.echo("\n".join(lines), err=True)
    sys.exit(exit_code)


def load_run_config(path: str | None) -> Config:
    try:
        return load_config(path) if path else embedded_defaults()
    except ConfigError as exc:
        run_fail(f"invalid config: {exc}", EXIT_CONFIG)


def agent_socket(config: Config, name: str) -> Path:
    """The socket to mount for ``name``: its own when the relay made one, else the shared one."""
    own = config.agent_socket(name)
    return own if config.per_agent_sockets or own.exists() else config.socket_path


def host_paths(config: Config, name: str, project: Path) -> tuple[Path, Path, Path]:
    try:
        project_dir = project.expanduser().resolve(strict=True)
    except OSError:
        run_fail(f"project directory {project} does not exist", EXIT_USAGE)
    if not project_dir.is_dir():
        run_fail(f"project {project} is not a directory", EXIT_USAGE)
    credential = config.credentials_dir / f"{name}.cred"
    if not credential.is_file():
        ccc = "ccc" if config.source is None else f"ccc --config {shlex.quote(str(config.source))}"
        run_fail(
            f"no credential for agent {name!r} at {credential}: "
            + did_you_mean(name, credential_names(config))
            + f"'{ccc} agent list' shows the agents; '{ccc} agent add {name}' makes this one",
            EXIT_CREDENTIAL,
        )
    socket_path = agent_socket(config, name)
    try:
        is_socket = stat.S_ISSOCK(socket_path.stat().st_mode)
    except OSError:
        run_fail(
            f"the relay socket {socket_path} does not exist: start the relay with "
            "'ccc-statusd start' (with the same --config)",
            EXIT_UNAVAILABLE,
        )
    if not is_socket:
        run_fail(f"{socket_path} is not a socket; is the config right?", EXIT_CONFIG)
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
    found = blocking_step(project, ident, 7, traverse=walk)
    if found:
        step, problem = found
        if step == project:
            fix = f"chown {ident.uid} {project} (or pick --uid)"
        else:
            # A parent is in the way (/root, a 0700 home): no chown of the project helps.
            fix = (
                f"{step} does not let uid {ident.uid} pass: keep the project in a directory "
                "every user may enter, outside /root and private homes (as root: "
                "docs/containers.md's as-root recipe: a user per agent owning /srv/ccc/NAME)"
            )
        run_fail(f"the sandbox could not use {project}: {problem}; {fix}", EXIT_USAGE)
    socket_problem = access_problem(socket_path, ident, 6, traverse=walk)
    if socket_problem:
        run_fail(
            f"the sandbox could not use {socket_path}: {socket_problem}; {socket_fix}",
            EXIT_CREDENTIAL,
        )


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


def sandbox_ccc(path: Path | None) -> Path | None:
    """The host ``ccc`` that --sandbox-ccc (CCC_SANDBOX_CCC) names, as the file it is;
    a usage error when it is not an executable file."""
    if path is None or not str(path):
        return None
    try:
        real = path.expanduser().resolve(strict=True)
    except OSError:
        run_fail(f"--sandbox-ccc {path} does not exist", EXIT_USAGE)
    if not real.is_file() or not os.access(real, os.X_OK):
        run_fail(f"--sandbox-ccc {path} is not an executable file", EXIT_USAGE)
    return real
