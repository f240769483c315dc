"""``ccc run``: arguments in, a checked sandbox spec out.

The rule this module owns: nothing is started until every host path the
sandbox needs has been found and checked, and each missing piece is reported
with the command that provides it. The checks are in ``run_host``; the
command lines themselves come from ``ccc_relay.containers``. ``ccc firewall``
lives in ``firewall_cmd`` and is re-exported here with ``agent_socket``, so
``ccc`` and the tests import both commands from this one place.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from ccc_relay.cli.common import EXIT_REFUSED, EXIT_USAGE
from ccc_relay.cli.firewall_cmd import firewall
from ccc_relay.cli.run_host import (
    agent_socket,
    check_reachable,
    env_pairs,
    host_paths,
    load_run_config,
    run_fail,
    sandbox_ccc,
    size_option,
)
from ccc_relay.cli.terminal import shown
from ccc_relay.containers.detect import (
    LIMITS_NEXT_STEP,
    HostError,
    IdentityError,
    access_problem,
    capped_ulimits,
    choose_identity,
    detect_runtime,
    group_id,
    limits_problem,
    needs_new_session,
    present_etc_files,
)
from ccc_relay.containers.probe import EngineFailed, not_runnable_message, probe_ccc
from ccc_relay.containers.sandbox import (
    exec_sandbox,
    launch_command,
    print_line,
    run_engine,
    run_in_terminal,
)
from ccc_relay.containers.spec import (
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_PIDS_LIMIT,
    DEFAULT_TMP_SIZE,
    NETWORKS,
    RUNTIMES,
    SandboxSpec,
    SandboxSpecError,
)
from ccc_relay.containers.staging import (
    LaunchError,
    grant_socket,
    prepare_podman_rootfs,
    remove_staged,
    stage_credential,
    sweep_staged,
)
from ccc_relay.policy.config import Config
from ccc_relay.protocol.names import agent_name_problem

__all__ = ["ROOT_LAUNCHER_DIR", "agent_socket", "firewall", "launcher_dir", "run"]


# Where a root launcher keeps what it lays out for sandboxes (podman's root
# skeleton, credential copies for container engines): root's own, on tmpfs,
# never inside the relay's state dir, which the relay's user could rearrange.
# It stays in this module, next to the command that reads it, because tests
# move it with monkeypatch.setattr(containers_cmd, "ROOT_LAUNCHER_DIR", ...).
ROOT_LAUNCHER_DIR = Path("/run/ccc-run")


def launcher_dir(config: Config, as_root: bool) -> Path:
    """The private directory for the launcher's own files (see ``staging.private_dir``)."""
    return ROOT_LAUNCHER_DIR if as_root else config.state_dir / "launcher"


@click.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name")
@click.option(
    "--project",
    "project",
    required=True,
    type=click.Path(path_type=Path),
    help="The agent's project directory; it appears read-write at /workspace.",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    help="Default: the first installed of bwrap, podman, docker.",
)
@click.option(
    "--network",
    type=click.Choice(NETWORKS),
    default="none",
    show_default=True,
    help="egress: podman/docker bridge network 'ccc-egress' (see 'ccc firewall').",
)
@click.option(
    "--print",
    "print_only",
    is_flag=True,
    help="Print the command (shell-quoted) instead of running it. The podman root "
    "skeleton and credential copies are still prepared, so the printed command works.",
)
@click.option(
    "--uid",
    type=click.IntRange(min=1),
    help="Host uid to run as (root only). Default: the project directory's owner.",
)
@click.option(
    "--gid",
    type=click.IntRange(min=1),
    help="Host gid to run as (root only). Default: the uid's primary group.",
)
@click.option(
    "--group",
    "groups",
    multiple=True,
    metavar="GROUP",
    help="Extra group (name or id), repeatable (root only). The socket's group "
    "is added by itself when the socket is group read-write.",
)
@click.option(
    "--memory",
    default=f"{DEFAULT_MEMORY_LIMIT // 1024**3}GiB",
    show_default=True,
    help="Memory limit, e.g. 4GiB (bwrap: per process).",
)
@click.option(
    "--pids",
    type=click.IntRange(min=1),
    default=DEFAULT_PIDS_LIMIT,
    show_default=True,
    help="Process limit.",
)
@click.option(
    "--tmp-size",
    default=f"{DEFAULT_TMP_SIZE // 1024**3}GiB",
    show_default=True,
    help="Size of the private /tmp.",
)
@click.option("--image", envvar="CCC_IMAGE", help="Container image (docker; env CCC_IMAGE).")
@click.option(
    "--env",
    "env",
    multiple=True,
    metavar="NAME[=VALUE]",
    help="Pass a variable in (NAME alone takes the host's value). Repeatable.",
)
@click.option(
    "--rootfs",
    type=click.Path(path_type=Path),
    help="Podman's root skeleton; its parent must be mode 0700. "
    "Default: /run/ccc-run/podman-rootfs (root), else STATE_DIR/launcher/podman-rootfs.",
)
@click.option(
    "--config",
    "config_path",
    envvar="CCC_CONFIG",
    type=click.Path(dir_okay=False),
    help="The relay's YAML config (env CCC_CONFIG); default: embedded defaults.",
)
@click.option(
    "--no-ccc-check",
    "skip_ccc_check",
    is_flag=True,
    help="Start even when 'ccc' does not run inside the sandbox (then the agent has no "
    "relay: no 'ccc send', no MCP server, no hooks). By default ccc run checks first.",
)
@click.option(
    "--no-limits",
    "no_limits",
    is_flag=True,
    help="Start without memory and process limits. Needed where the runtime cannot apply "
    "them (rootless podman on cgroups v1), which ccc run otherwise refuses.",
)
@click.option(
    "--sandbox-ccc",
    "ccc_path",
    envvar="CCC_SANDBOX_CCC",
    type=click.Path(path_type=Path),
    help="The host's ccc to give the sandbox (bwrap, podman; env CCC_SANDBOX_CCC), found "
    "first on its PATH. Default: the ccc under /usr/local/bin or /usr/bin.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(
    name: str,
    project: Path,
    runtime: str | None,
    network: str,
    print_only: bool,
    uid: int | None,
    gid: int | None,
    groups: tuple[str, ...],
    memory: str,
    pids: int,
    tmp_size: str,
    image: str | None,
    env: tuple[str, ...],
    rootfs: Path | None,
    config_path: str | None,
    skip_ccc_check: bool,
    no_limits: bool,
    ccc_path: Path | None,
    command: tuple[str, ...],
) -> None:
    """Start agent NAME's sandbox on its project: ccc run NAME --project DIR [-- COMMAND...]

    \b
    Inside: /workspace (the project), /run/ccc.sock (the relay; NAME's own
    socket comes with its directory at /run/ccc-relay, so a relay restart
    does not cut the agent off), /run/ccc/credential (NAME's credential,
    read-only), a read-only /usr, a private /tmp, and nothing else of the
    host. CCC_SOCKET, CCC_CREDENTIAL and CCC_AGENT are set, so 'ccc' works
    inside without flags. From a terminal, a bubblewrap sandbox gets a
    terminal of its own (job control and Ctrl-C work inside; it cannot type
    into yours).
    """
    problem = agent_name_problem(name)
    if problem:
        raise click.BadParameter(problem, param_hint="NAME")
    config = load_run_config(config_path)
    as_root = os.geteuid() == 0
    project_dir, socket_path, credential = host_paths(config, name, project)
    staging = None
    try:
        # bubblewrap has no guarded network, so egress looks only at the engines.
        candidates = ("podman", "docker") if network == "egress" else RUNTIMES
        chosen = detect_runtime(runtime, as_root=as_root, candidates=candidates)
        if not no_limits:
            unlimited = limits_problem(chosen, as_root=as_root)
            if unlimited:
                run_fail(f"{unlimited}: {LIMITS_NEXT_STEP}", EXIT_REFUSED)
        identity = choose_identity(
            euid=os.geteuid(),
            project=project_dir.stat(),
            uid=uid,
            gid=gid,
            groups=[group_id(g) for g in groups],
            socket=socket_path.stat(),
        )
        own_socket = socket_path == config.agent_socket(name)
        if as_root and own_socket:
            # NAME's own socket admits only NAME (with its credential): the
            # sandbox that is NAME may use it, whatever group the relay gave it.
            if access_problem(socket_path, identity, 6, traverse=False):
                grant_socket(socket_path, identity.gid)
        if as_root:
            check_reachable(chosen, identity, project_dir, socket_path)
        spec = SandboxSpec(
            agent=name,
            project_dir=project_dir,
            socket_path=socket_path,
            socket_dir=own_socket,
            credential_path=credential,
            uid=identity.uid,
            gid=identity.gid,
            extra_gids=identity.extra_gids,
            network=network,
            command=command,
            memory_limit=None if no_limits else size_option("--memory", memory),
            pids_limit=None if no_limits else pids,
            tmp_size=size_option("--tmp-size", tmp_size),
            runtime=chosen,
            image=image,
            env=env_pairs(env),
            new_session=needs_new_session(),
            tty=sys.stdin.isatty(),
            ccc_path=sandbox_ccc(ccc_path),
        )
        rootfs_dir = None
        if chosen == "podman":
            rootfs_dir = prepare_podman_rootfs(
                rootfs or launcher_dir(config, as_root) / "podman-rootfs",
                etc_files=present_etc_files(),
            )
        unreadable = access_problem(credential, identity, 4, traverse=False)
        if chosen != "bwrap" and as_root and unreadable:
            credentials_dir = launcher_dir(config, as_root) / "credentials"
            sweep_staged(credentials_dir)  # copies left by runs that were killed
            staging = credentials_dir / name
            staged = stage_credential(
                credential,
                staging,
                identity.uid,
                identity.gid,
                # --print keeps its copy for the printed command; a run removes its own.
                launcher_pid=None if print_only else os.getpid(),
            )
            spec = replace(spec, credential_path=staged)
        argv = launch_command(
            spec,
            as_root=as_root,
            rootfs_dir=rootfs_dir,
            etc_files=present_etc_files(),
            ulimits=capped_ulimits(),
        )
        if print_only:
            click.echo(print_line(spec, argv))
            return
        if not skip_ccc_check:
            problem = probe_ccc(
                chosen,
                as_root=as_root,
                uid=identity.uid,
                gid=identity.gid,
                extra_gids=identity.extra_gids,
                rootfs_dir=rootfs_dir,
                image=image,
                ccc_path=spec.ccc_path,
            )
            if problem is not None:
                run_fail(
                    not_runnable_message(chosen, problem, image=image, ccc_path=spec.ccc_path),
                    EXIT_REFUSED,
                )
        sys.stdout.flush()
        if chosen == "bwrap":
            if spec.tty:
                sys.exit(run_in_terminal(spec, as_root=as_root))
            exec_sandbox(spec, argv)  # bubblewrap's own errors are already plain
        returncode, explained, engine_text = run_engine(spec, argv)
        if explained is not None:
            _engine_said(explained, chosen, engine_text)
        sys.exit(returncode)
    except EngineFailed as exc:
        _engine_said(str(exc), chosen, exc.engine_text)
        sys.exit(exc.returncode)
    except (IdentityError, SandboxSpecError) as exc:
        run_fail(str(exc), EXIT_USAGE)
    except (HostError, LaunchError) as exc:
        run_fail(str(exc), EXIT_REFUSED)
    finally:
        if staging is not None and not print_only:
            remove_staged(staging, launcher_pid=os.getpid())


def _engine_said(explained: str, engine: str, engine_text: str) -> None:
    click.echo(f"error: {shown(explained, one_line=True)}", err=True)
    if engine_text.strip():
        click.echo(f"({engine} said: {shown(engine_text.strip())})", err=True)
