"""``ccc doctor``: every link from the relay to a sandboxed agent, checked one by one.

The rule this module owns: one line per check, ``ok`` or ``problem`` and what
to do, in the order a message travels -- the config, the relay's socket (there,
connectable, answering), the sockets' modes and groups, the credential, the
sandbox tools, ``ccc`` inside a sandbox, the Claude Code files of a project.
Each check looks at the host as it is and changes nothing; exit 0 when all
pass, 1 otherwise. ``--json`` prints one object: ``{"ok", "checks": [...]}``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import click

from ccc_relay.cli.common import emit_json, start_command
from ccc_relay.containers.detect import (
    LIMITS_NEXT_STEP,
    HostError,
    detect_runtime,
    limits_problem,
    missing_tools,
)
from ccc_relay.containers.probe import (
    EngineFailed,
    install_recipe,
    probe_ccc,
    visible_ccc,
    why_not_visible,
)
from ccc_relay.containers.spec import RUNTIMES, SANDBOX_PATH
from ccc_relay.containers.staging import LaunchError, prepare_podman_rootfs
from ccc_relay.integrations.install import SERVER_NAME
from ccc_relay.integrations.install_claude import HOOK_EVENTS
from ccc_relay.policy.config import Config, ConfigError

CONNECT_TIMEOUT = 5.0  # seconds for the relay to accept and answer: it answers in milliseconds
TOOL_TIMEOUT = 20.0  # seconds for 'podman info' and a bubblewrap start
NOBODY = 65534  # the probe's uid when root has no project owner to run it as


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok       {self.name}: {self.detail}"
        return f"problem  {self.name}: {self.detail}" + (
            f"\n         do: {self.fix}" if self.fix else ""
        )


@click.command("doctor", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--project",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also check this project's Claude Code files (.mcp.json, .claude/settings*.json), "
    "and probe the sandbox as its owner.",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    help="The sandbox runtime to check (default: the one 'ccc run' would pick).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
@click.pass_context
def doctor(ctx: click.Context, project: Path | None, runtime: str | None, as_json: bool) -> None:
    """Check the whole chain from the relay to a sandboxed agent, one line per link.

    \b
    The relay: its socket there, connectable and answering; the sockets'
    modes and groups. The credential (with --as NAME, --credential FILE or
    CCC_CREDENTIAL): readable and accepted. The sandbox: bubblewrap or podman
    usable, and 'ccc' runnable inside. With --project DIR: the MCP server and
    hooks of 'ccc install claude'. Exit 0 when every check passes, 1 otherwise.
    """
    options = ctx.obj
    checks: list[Check] = []
    for check in _all_checks(options, project, runtime):
        checks.append(check)
        if not as_json:
            click.echo(check.line())
    ok = all(c.ok for c in checks)
    if as_json:
        emit_json({"ok": ok, "checks": [c._asdict() for c in checks]})
    elif ok:
        click.echo("all checks passed")
    else:
        failed = sum(not c.ok for c in checks)
        click.echo(f"{failed} of {len(checks)} checks found a problem", err=True)
    ctx.exit(0 if ok else 1)


def _all_checks(options: Any, project: Path | None, runtime: str | None) -> Iterator[Check]:
    config_path = getattr(options, "config_path", None) or os.environ.get("CCC_CONFIG") or None
    try:
        from ccc_relay.client.endpoint import host_config

        config = host_config(config_path)
    except ConfigError as exc:
        yield Check(
            "config", False, str(exc), "fix the key it names (ccc-statusd check-config FILE)"
        )
        return
    yield Check("config", True, str(config.source) if config.source else "embedded defaults")
    socket_path = Path(getattr(options, "socket_path", None) or config.socket_path)
    reachable = yield from _relay_checks(config, socket_path)
    yield from _socket_mode_checks(config, socket_path)
    as_agent = getattr(options, "as_agent", None)
    if as_agent and config.per_agent_sockets:
        yield _own_socket_check(config, as_agent)
    credential = _credential_file(options, config)
    if credential is not None:
        yield _credential_check(credential, socket_path, reachable)
    chosen = yield from _tool_checks(runtime)
    if chosen is not None:
        yield _ccc_inside_check(config, chosen, project)
    if project is not None:
        yield from _project_checks(project)


# --- the relay -------------------------------------------------------------------


def _relay_checks(config: Config, path: Path) -> Generator[Check, None, bool]:
    """Returns (as the generator's value) whether the relay answered."""
    start = f"start the relay: {start_command(config)}"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        yield Check("relay socket", False, f"{path} does not exist", start)
        return False
    except PermissionError:
        yield Check(
            "relay socket", False, f"this user may not reach {path}", "run this as the relay's user"
        )
        return False
    if not stat.S_ISSOCK(mode):
        yield Check(
            "relay socket", False, f"{path} is not a socket", "check the config's socket_path"
        )
        return False
    yield Check("relay socket", True, str(path))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(str(path))
    except PermissionError:
        yield Check(
            "relay connect",
            False,
            f"permission denied on {path}",
            _group_fix(path),
        )
        return False
    except OSError as exc:
        yield Check(
            "relay connect",
            False,
            f"{path}: {exc.strerror or exc}",
            f"the relay is not listening: {start}",
        )
        return False
    finally:
        sock.close()
    yield Check("relay connect", True, "connects")
    answered = _admin_status(config)
    if answered is not None:
        yield answered
        return answered.ok
    return True


def _admin_status(config: Config) -> Check | None:
    """The relay's own status over the admin socket, when this user is its operator."""
    from ccc_relay.client.admin import AdminClient
    from ccc_relay.client.errors import RelayError

    admin = config.admin_socket_path
    if not os.access(admin, os.W_OK):
        return None  # not the operator: the credential check shows the relay answers
    try:
        data = AdminClient(admin, timeout=CONNECT_TIMEOUT).request("status")
    except RelayError as exc:
        return Check(
            "relay answers", False, exc.message, f"look at the relay's log; {_restart(config)}"
        )
    agents = data.get("agents") if isinstance(data, dict) else None
    count = f"{len(agents)} agents" if isinstance(agents, list | dict) else "status answered"
    return Check("relay answers", True, count)


def _socket_mode_checks(config: Config, shared: Path) -> Iterator[Check]:
    if shared.exists():
        yield _mode_check("relay socket mode", shared, config.socket_group)
    if not config.per_agent_sockets:
        return
    directory = config.agent_sockets
    try:
        info = directory.stat()
    except OSError as exc:
        yield Check("agent sockets", False, f"{directory}: {exc.strerror}", _restart(config))
        return
    blocked = _unwalkable_parent(directory)
    if blocked is not None and os.geteuid() == 0:
        yield Check(
            "agent sockets",
            False,
            f"sandboxes cannot walk to {directory}: {blocked} is mode "
            f"{stat.S_IMODE(blocked.stat().st_mode):04o}",
            "set daemon.agent_socket_dir to a directory whose parents others may enter "
            "(docs/deploy.md, 'Sockets for sandboxes')",
        )
        return
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022 or mode & 0o001 == 0:
        yield Check(
            "agent sockets",
            False,
            f"{directory} is mode {mode:04o}, not 0711",
            f"chmod 711 {directory}",
        )
        return
    yield Check("agent sockets", True, f"{directory} (mode {mode:04o})")


def _own_socket_check(config: Config, agent: str) -> Check:
    """NAME's own socket, alone in the directory ``ccc run`` mounts into its sandbox."""
    path = config.agent_socket(agent)
    directory = path.parent
    try:
        info = directory.lstat()
    except OSError as exc:
        return Check(
            "agent socket",
            False,
            f"{directory}: {exc.strerror}",
            f"add the agent (ccc agent add {agent}), or {_restart(config)}",
        )
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        return Check(
            "agent socket", False, f"{directory} is not a directory", f"{_restart(config)}"
        )
    if mode & 0o022 or mode & 0o001 == 0:
        return Check(
            "agent socket",
            False,
            f"{directory} is mode {mode:04o}, not 0711",
            f"chmod 711 {directory}",
        )
    try:
        is_socket = stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        return Check(
            "agent socket", False, f"no socket at {path}", f"the relay is not serving {agent}: "
            f"{_restart(config)}"
        )  # fmt: skip
    detail = f"{path} (directory mode {mode:04o}"
    if mode & stat.S_ISGID:
        # Set by a root ccc run: the relay's sockets there are born with this group.
        detail += f", group {_group_name(info.st_gid)} for its sandbox"
    return Check("agent socket", True, detail + ")")


def _mode_check(name: str, path: Path, group: str | None) -> Check:
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    detail = f"{path} mode {mode:04o}, group {_group_name(info.st_gid)}"
    if mode & 0o007:
        return Check(
            name, False, f"{detail}: any local user may connect", "set daemon.socket_mode: 0660"
        )
    if group is not None and _group_name(info.st_gid) != group:
        return Check(
            name,
            False,
            f"{detail}, not {group}",
            "restart the relay so it applies daemon.socket_group",
        )
    return Check(name, True, detail)


def _credential_file(options: Any, config: Config) -> Path | None:
    as_agent = getattr(options, "as_agent", None)
    if as_agent:
        return config.credentials_dir / f"{as_agent}.cred"
    given = getattr(options, "credential", None) or os.environ.get("CCC_CREDENTIAL")
    return Path(given) if given else None


def _credential_check(path: Path, socket_path: Path, reachable: bool) -> Check:
    from ccc_relay.client import Endpoint, RelayClient
    from ccc_relay.client.errors import RelayError
    from ccc_relay.credentials import CredentialError, read_credential_file

    try:
        agent, credential = read_credential_file(path)
    except CredentialError as exc:
        return Check(
            "credential",
            False,
            str(exc),
            "on the relay's host: ccc agent add NAME (or rotate NAME)",
        )
    if not reachable:
        return Check(
            "credential",
            False,
            f"{path} ({agent}) is readable; the relay could not be asked",
            "fix the relay first (above)",
        )
    try:
        with RelayClient(
            Endpoint(socket_path, agent, credential), timeout=CONNECT_TIMEOUT
        ) as client:
            client.connect()
    except RelayError as exc:
        return Check(
            "credential",
            False,
            f"{agent}'s credential ({path}) was refused: {exc.message} [{exc.code}]",
            f"on the relay's host: ccc agent rotate {agent}",
        )
    return Check("credential", True, f"{agent} ({path}) accepted")


# --- the sandbox -----------------------------------------------------------------


def _tool_checks(runtime: str | None) -> Generator[Check, None, str | None]:
    """Returns (as the generator's value) the runtime 'ccc run' would use, if usable."""
    as_root = os.geteuid() == 0
    wanted = (
        [runtime]
        if runtime
        else [r for r in ("bwrap", "podman") if not missing_tools(r, as_root=as_root)]
    )
    if not wanted:
        yield Check(
            "sandbox tools",
            False,
            "neither bubblewrap nor podman is installed",
            "apt-get install bubblewrap util-linux (or podman runc)",
        )
        return None
    usable: list[str] = []
    for name in wanted:
        check = _runtime_check(name, as_root)
        yield check
        if check.ok:
            usable.append(name)
    if not usable:
        return None
    try:
        default = detect_runtime(runtime, as_root=as_root)
    except HostError:
        return usable[0]
    return default if default in usable else usable[0]


def _runtime_check(name: str, as_root: bool) -> Check:
    missing = missing_tools(name, as_root=as_root)
    if missing:
        return Check(
            name, False, "not usable; missing: " + "; ".join(missing), "install what is named"
        )
    if name == "bwrap":
        argv = ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin",
                "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                "--", "/usr/bin/true"]  # fmt: skip
        fix = (
            "let unprivileged users make user namespaces (sysctl "
            "kernel.unprivileged_userns_clone=1; on Ubuntu also the AppArmor userns "
            "restriction), or run ccc run as root"
        )
    elif name == "podman":
        argv = ["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"]
        fix = (
            "see 'podman info'; as a normal user 'podman system migrate' repairs its "
            "storage after an upgrade"
        )
    else:
        argv = ["docker", "info", "--format", "{{.ServerVersion}}"]
        fix = "start the docker daemon, or join the docker group"
    try:
        result = subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(name, False, f"{argv[0]} did not run: {exc}", fix)
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace").strip().splitlines()
        return Check(
            name, False, f"{argv[0]} failed: {said[-1] if said else result.returncode}", fix
        )
    unlimited = limits_problem(name, as_root=as_root)
    if unlimited:
        return Check(
            name, False, f"runs, but {unlimited}; ccc run refuses it without --no-limits",
            LIMITS_NEXT_STEP,
        )  # fmt: skip
    return Check(name, True, "usable")


def _ccc_inside_check(config: Config, runtime: str, project: Path | None) -> Check:
    as_root = os.geteuid() == 0
    uid, gid = os.getuid(), os.getgid()
    if as_root:
        owner = project.stat().st_uid if project is not None and project.is_dir() else 0
        uid = gid = owner or NOBODY
        if owner:
            import pwd

            try:
                gid = pwd.getpwuid(owner).pw_gid
            except KeyError:
                gid = owner
    rootfs = None
    if runtime == "podman":
        from ccc_relay.cli.containers_cmd import launcher_dir

        try:
            rootfs = prepare_podman_rootfs(launcher_dir(config, as_root) / "podman-rootfs")
        except LaunchError as exc:
            return Check("ccc in a sandbox", False, str(exc), "fix the directory it names")
    chosen = os.environ.get("CCC_SANDBOX_CCC") or None  # what ccc run would give the sandbox
    ccc_path = Path(os.path.realpath(chosen)) if chosen else None
    try:
        problem = probe_ccc(
            runtime, as_root=as_root, uid=uid, gid=gid, rootfs_dir=rootfs, ccc_path=ccc_path
        )
    except EngineFailed as exc:
        return Check("ccc in a sandbox", False, str(exc), f"see '{runtime} info'")
    if problem is None:
        return Check(
            "ccc in a sandbox", True, f"'ccc --version' runs in a {runtime} sandbox as uid {uid}"
        )
    static = why_not_visible(ccc_path, bound=True) if ccc_path else why_not_visible(visible_ccc())
    detail = f"{problem}" + (f"; {static}" if static else "")
    return Check(
        "ccc in a sandbox",
        False,
        detail,
        "install ccc under /usr: " + " && ".join(install_recipe()),
    )


# --- the project -----------------------------------------------------------------


def _project_checks(project: Path) -> Iterator[Check]:
    if not project.is_dir():
        yield Check(
            "project", False, f"{project} is not a directory", "pass an existing --project DIR"
        )
        return
    install = f"ccc install claude --project {project}"
    mcp = project / ".mcp.json"
    data = _json_object(mcp)
    server = (
        (data.get("mcpServers") or {}).get(SERVER_NAME)
        if isinstance(data.get("mcpServers"), dict)
        else None
    )
    if not isinstance(server, dict):
        yield Check("MCP server", False, f"{mcp} has no '{SERVER_NAME}' server", install)
    else:
        yield _program_check("MCP server", f"{mcp}: ", str(server.get("command", "")), install)
    events: dict[str, str] = {}
    for name in ("settings.json", "settings.local.json"):
        hooks = _json_object(project / ".claude" / name).get("hooks")
        if isinstance(hooks, dict):
            for event, verb in HOOK_EVENTS.items():
                command = _hook_command(hooks.get(event), verb)
                if command is not None:
                    events.setdefault(event, command)
    missing = [event for event in HOOK_EVENTS if event not in events]
    if missing:
        yield Check(
            "hooks",
            False,
            f"no ccc hook for {', '.join(missing)} in {project}/.claude/settings*.json",
            install,
        )
        return
    program = next(iter(events.values())).split()[0] if events else "ccc"
    yield _program_check("hooks", "", program, install)


def _program_check(name: str, where: str, program: str, install: str) -> Check:
    path = Path(program)
    if path.is_absolute() and not Path(os.path.realpath(path)).is_relative_to("/usr"):
        return Check(
            name,
            False,
            f"{where}runs {program}, which a sandbox cannot see (only /usr is there)",
            f"install ccc under /usr, then: {install} --command ccc",
        )
    if (
        not path.is_absolute()
        and path.name != "ccc"
        and shutil.which(program, path=SANDBOX_PATH) is None
    ):
        return Check(
            name, False, f"{where}runs {program}, which is not on a sandbox's PATH", install
        )
    return Check(name, True, f"{where}runs {program}")


def _hook_command(groups: object, verb: str) -> str | None:
    for group in groups if isinstance(groups, list) else []:
        for entry in group.get("hooks", []) if isinstance(group, dict) else []:
            command = entry.get("command") if isinstance(entry, dict) else None
            if isinstance(command, str) and command.endswith(f"hook {verb}"):
                return command
    return None


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- helpers ---------------------------------------------------------------------


def _restart(config: Config) -> str:
    # stop takes the same --config as start: without it, it would stop the default relay.
    flag = start_command(config).removeprefix("ccc-statusd start")
    return f"restart the relay: ccc-statusd stop{flag}; ccc-statusd start{flag}"


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _group_fix(path: Path) -> str:
    group = _group_name(path.stat().st_gid)
    return f"join the socket's group: sudo usermod -aG {group} $USER (then log in again)"


def _unwalkable_parent(directory: Path) -> Path | None:
    for parent in reversed(directory.parents):
        try:
            if parent.stat().st_mode & 0o001 == 0:
                return parent
        except OSError:
            return parent
    return None
