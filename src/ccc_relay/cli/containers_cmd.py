"""``ccc run`` and ``ccc firewall``: arguments in, a checked sandbox spec or ruleset out.

The rule this module owns: nothing is started until every host path the
sandbox needs has been found and checked, and each missing piece is reported
with the command that provides it. The command lines themselves come from
``ccc_relay.containers``.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import replace
from pathlib import Path

import click

from ccc_relay.containers.detect import (
    HostError,
    Identity,
    access_problem,
    capped_ulimits,
    choose_identity,
    detect_runtime,
    group_id,
    needs_new_session,
    present_etc_files,
)
from ccc_relay.containers.firewall import (
    DEFAULT_BRIDGE,
    FirewallError,
    IPAddress,
    apply_ruleset,
    host_addresses,
    nft_ruleset,
    parse_address,
)
from ccc_relay.containers.sandbox import exec_sandbox, launch_command, print_line
from ccc_relay.containers.spec import (
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_PIDS_LIMIT,
    DEFAULT_TMP_SIZE,
    NETWORKS,
    RUNTIMES,
    SandboxSpec,
    SandboxSpecError,
)
from ccc_relay.containers.staging import LaunchError, prepare_podman_rootfs, stage_credential
from ccc_relay.policy.config import Config, ConfigError, embedded_defaults, load_config
from ccc_relay.policy.units import UnitError, parse_size
from ccc_relay.protocol.names import agent_name_problem


def _config(path: str | None) -> Config:
    try:
        return load_config(path) if path else embedded_defaults()
    except ConfigError as exc:
        raise click.ClickException(f"invalid config: {exc}") from None


# Where a root launcher keeps what it lays out for sandboxes (podman's root
# skeleton, credential copies for container engines): root's own, on tmpfs,
# never inside the relay's state dir, which the relay's user could rearrange.
ROOT_LAUNCHER_DIR = Path("/run/ccc-run")


def launcher_dir(config: Config, as_root: bool) -> Path:
    """The private directory for the launcher's own files (see ``staging.private_dir``)."""
    return ROOT_LAUNCHER_DIR if as_root else config.state_dir / "launcher"


def agent_socket(config: Config, name: str) -> Path:
    """The socket to mount for ``name``: its own when the relay made one, else the shared one."""
    own = config.agent_socket(name)
    return own if config.per_agent_sockets or own.exists() else config.socket_path


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
    command: tuple[str, ...],
) -> None:
    """Start agent NAME's sandbox on its project: ccc run NAME --project DIR [-- COMMAND...]

    \b
    Inside: /workspace (the project), /run/ccc.sock (the relay),
    /run/ccc/credential (NAME's credential, read-only), a read-only /usr,
    a private /tmp, and nothing else of the host. CCC_SOCKET, CCC_CREDENTIAL
    and CCC_AGENT are set, so 'ccc' works inside without flags.
    """
    problem = agent_name_problem(name)
    if problem:
        raise click.BadParameter(problem, param_hint="NAME")
    config = _config(config_path)
    as_root = os.geteuid() == 0
    project_dir, socket_path, credential = _host_paths(config, name, project)
    try:
        # bubblewrap has no guarded network, so egress looks only at the engines.
        candidates = ("podman", "docker") if network == "egress" else RUNTIMES
        chosen = detect_runtime(runtime, as_root=as_root, candidates=candidates)
        identity = choose_identity(
            euid=os.geteuid(),
            project=project_dir.stat(),
            uid=uid,
            gid=gid,
            groups=[group_id(g) for g in groups],
            socket=socket_path.stat(),
        )
        if as_root:
            _check_reachable(chosen, identity, project_dir, socket_path)
        spec = SandboxSpec(
            agent=name,
            project_dir=project_dir,
            socket_path=socket_path,
            credential_path=credential,
            uid=identity.uid,
            gid=identity.gid,
            extra_gids=identity.extra_gids,
            network=network,
            command=command,
            memory_limit=_size("--memory", memory),
            pids_limit=pids,
            tmp_size=_size("--tmp-size", tmp_size),
            runtime=chosen,
            image=image,
            env=_env(env),
            new_session=needs_new_session(),
            tty=sys.stdin.isatty(),
        )
        rootfs_dir = None
        if chosen == "podman":
            rootfs_dir = prepare_podman_rootfs(
                rootfs or launcher_dir(config, as_root) / "podman-rootfs",
                etc_files=present_etc_files(),
            )
        unreadable = access_problem(credential, identity, 4, traverse=False)
        if chosen != "bwrap" and as_root and unreadable:
            staged = stage_credential(
                credential,
                launcher_dir(config, as_root) / "credentials" / name,
                identity.uid,
                identity.gid,
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
        sys.stdout.flush()
        exec_sandbox(spec, argv)
    except (HostError, SandboxSpecError, LaunchError) as exc:
        raise click.ClickException(str(exc)) from None


def _host_paths(config: Config, name: str, project: Path) -> tuple[Path, Path, Path]:
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


def _check_reachable(runtime: str, ident: Identity, project: Path, socket_path: Path) -> None:
    # bwrap runs as the sandbox uid and walks host paths itself; an engine
    # mounts as root, so only the final inode's permission matters there.
    walk = runtime == "bwrap"
    socket_fix = "set daemon.socket_group in the relay's config, or pass --group"
    if walk and access_problem(socket_path.parent, ident, 1, traverse=True):
        # The socket sits in a directory the sandbox uid cannot enter (the
        # embedded defaults keep it in the private 0700 state dir).
        socket_fix = (
            "give sandboxes a socket outside the relay's private state dir: in the "
            "relay's config set daemon.per_agent_sockets: true with daemon.agent_socket_dir "
            "(a 0711 dir), or daemon.socket_path in a dir others may enter, plus "
            "daemon.socket_group; see docs/containers.md"
        )
    for path, want, fix in (
        (project, 7, f"chown {ident.uid} {project} (or pick --uid)"),
        (socket_path, 6, socket_fix),
    ):
        problem = access_problem(path, ident, want, traverse=walk)
        if problem:
            raise click.ClickException(f"the sandbox could not use {path}: {problem}; {fix}")


def _size(option: str, text: str) -> int:
    try:
        return parse_size(text)
    except UnitError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _env(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
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


@click.command("firewall", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--print",
    "action",
    flag_value="print",
    default=True,
    help="Print the nftables ruleset (the default).",
)
@click.option(
    "--apply",
    "action",
    flag_value="apply",
    help="Load it with 'nft -f -' (root; replaces only table inet ccc_relay_egress).",
)
@click.option(
    "--bridge",
    default=DEFAULT_BRIDGE,
    show_default=True,
    help="The sandbox network's bridge interface.",
)
@click.option(
    "--host-address",
    "extra",
    multiple=True,
    metavar="ADDR",
    help="Another address of this host (e.g. a cloud VM's public one). Repeatable.",
)
@click.option(
    "--detect-host-addresses/--no-detect-host-addresses",
    default=True,
    show_default=True,
    help="Add the addresses this host's interfaces hold now.",
)
@click.option(
    "--allow-dns-to",
    "dns",
    multiple=True,
    metavar="ADDR",
    help="Let DNS (port 53) through to ADDR, e.g. podman's gateway. Repeatable.",
)
def firewall(
    action: str,
    bridge: str,
    extra: tuple[str, ...],
    detect_host_addresses: bool,
    dns: tuple[str, ...],
) -> None:
    """The nftables ruleset for sandboxes on the egress bridge (--network egress).

    \b
    Dropped from the bridge: RFC 1918, 100.64/10, 127/8, 169.254/16 and the
    other special IPv4 ranges, fc00::/7, fe80::/10, ::1, multicast and the
    other special IPv6 ranges, and every address of this host. Public egress
    passes.
    """
    try:
        addresses: list[IPAddress] = [parse_address(a) for a in extra]
        if detect_host_addresses:
            addresses += host_addresses()
        ruleset = nft_ruleset(
            bridge=bridge, host_addresses=addresses, allow_dns_to=[parse_address(a) for a in dns]
        )
        if action == "apply":
            if os.geteuid() != 0:
                raise click.ClickException("--apply needs root (it loads an nftables table)")
            apply_ruleset(ruleset)
            click.echo(f"loaded table inet ccc_relay_egress for bridge {bridge}", err=True)
        else:
            click.echo(ruleset, nl=False)
    except FirewallError as exc:
        raise click.ClickException(str(exc)) from None
