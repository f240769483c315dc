"""podman's and docker's failures in the user's words, with the next step.

An engine that cannot start a container exits 125 (its own failure), 126 (the
command cannot be run) or 127 (the command is not there) and prints its own
text. The rule this module owns: each known failure becomes one sentence that
says what happened and what to do; anything else still gets a sentence and
the way on (``ccc doctor``). The raw text stays available as detail. Pure:
text in, text out.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ccc_relay.containers.spec import SandboxSpec

# Exit codes with which podman and docker report that they, not the agent, failed.
ENGINE_FAILED = 125
COMMAND_NOT_RUNNABLE = 126
COMMAND_NOT_FOUND = 127
ENGINE_EXIT_CODES = frozenset({ENGINE_FAILED, COMMAND_NOT_RUNNABLE, COMMAND_NOT_FOUND})

_Explain = Callable[[str, SandboxSpec], str]


def _name_in_use(engine: str, spec: SandboxSpec) -> str:
    name = spec.container_name
    return (
        f"a container named {name} already exists: another 'ccc run {spec.agent}' is running, "
        f"or an earlier one left it behind. See it with: {engine} ps -a --filter name={name}; "
        f"if it is a leftover, remove it with: {engine} rm -f {name}"
    )


def _no_image(engine: str, spec: SandboxSpec) -> str:
    return (
        f"the image {spec.image} is not there and could not be pulled: build it or pull it "
        f"({engine} pull {spec.image}), or name another with --image"
    )


def _no_daemon(engine: str, spec: SandboxSpec) -> str:
    return (
        f"{engine} cannot reach its daemon: start it (sudo systemctl start {engine}), "
        f"or, if it runs, check that you may use it ({engine} info)"
    )


def _daemon_denied(engine: str, spec: SandboxSpec) -> str:
    return (
        f"you may not use {engine}'s daemon: run ccc run as root, or join its group "
        f"(sudo usermod -aG {engine} $USER, then log in again)"
    )


def _no_network(engine: str, spec: SandboxSpec) -> str:
    create = (
        "docker network create -o com.docker.network.bridge.name=ccc0 ccc-egress"
        if engine == "docker"
        else "podman network create --interface-name ccc0 ccc-egress"
    )
    return (
        f"--network egress joins the network ccc-egress, which {engine} does not have: "
        f"create it once ({create}) and load its firewall (ccc firewall --apply); "
        "see docs/containers.md, '--network egress and the firewall'"
    )


def _mount_gone(engine: str, spec: SandboxSpec) -> str:
    return (
        f"a path the sandbox mounts is gone ({spec.socket_path}, {spec.project_dir} or the "
        f"credential): is the relay running? 'ccc doctor' checks each link"
    )


def _command_missing(engine: str, spec: SandboxSpec) -> str:
    command = (spec.command or ("bash",))[0]
    where = "in the image" if engine == "docker" else "under the host's /usr"
    return (
        f"the command {command!r} is not installed where the sandbox can see it ({where}): "
        "install it there, or give another command after --"
    )


def _runtime_failed(engine: str, spec: SandboxSpec) -> str:
    return (
        f"{engine}'s container runtime could not start the sandbox (often cgroups or a "
        f"missing runc): check '{engine} info', that runc is installed (apt-get install "
        "runc), and 'ccc doctor'"
    )


def _storage(engine: str, spec: SandboxSpec) -> str:
    return (
        f"{engine}'s storage is not usable: check '{engine} info'; as a normal user, "
        "'podman system migrate' repairs it after an upgrade"
    )


# First match wins; the patterns are the engines' own words (podman 4/5, docker 24+).
# Those of the engine itself (no daemon, no image, broken storage or runtime)
# come first: they are also what a failed probe sandbox is about (ENGINE_LEVEL).
_KNOWN: tuple[tuple[re.Pattern[str], _Explain], ...] = (
    (
        re.compile(r"name .* is already in use|already in use by|Conflict\. The container name"),
        _name_in_use,
    ),
    (re.compile(r"Cannot connect to the Docker daemon|Is the docker daemon running"), _no_daemon),
    (re.compile(r"permission denied while trying to connect to the Docker daemon"), _daemon_denied),
    (
        re.compile(
            r"Unable to find image|manifest unknown|pull access denied|image not known|"
            r"repository .* not found|initializing source"
        ),
        _no_image,
    ),
    (
        re.compile(r"network not found|No such network|network .* not found", re.I),
        _no_network,
    ),
    (
        re.compile(r"executable file not found|no such file or directory: OCI runtime attempted"),
        _command_missing,
    ),
    (
        re.compile(r"(statfs|stat|lstat|mount) .*(no such file or directory|not found)", re.I),
        _mount_gone,
    ),
    (re.compile(r"storage|overlay|graph driver", re.I), _storage),
    (re.compile(r"OCI runtime|runc|crun|cgroup", re.I), _runtime_failed),
)


ENGINE_LEVEL = frozenset({_no_daemon, _daemon_denied, _no_image, _storage, _runtime_failed})


def engine_problem(engine: str, returncode: int, text: str, spec: SandboxSpec) -> str | None:
    """The sentence for a failure of the engine itself (not of a container, a mount or
    a command in it), or None. Raises nothing."""
    explain = _explainer(returncode, text)
    return explain(engine, spec) if explain in ENGINE_LEVEL else None


def explain_engine_failure(
    engine: str, returncode: int, text: str, spec: SandboxSpec
) -> str | None:
    """One sentence for an engine's own failure, or None when ``returncode`` is the agent's.

    Raises nothing.
    """
    if returncode not in ENGINE_EXIT_CODES:
        return None
    explain = _explainer(returncode, text)
    if explain is not None:
        return f"{engine} could not start {spec.agent}'s sandbox: {explain(engine, spec)}"
    if returncode != ENGINE_FAILED:
        return None  # 126 and 127 may as well be the agent's own command's
    return (
        f"{engine} could not start {spec.agent}'s sandbox (exit {returncode}); 'ccc doctor' "
        "checks the relay, the sockets and the sandbox tools one by one"
    )


def _explainer(returncode: int, text: str) -> _Explain | None:
    """The first known failure ``text`` shows, when ``returncode`` is an engine's."""
    if returncode not in ENGINE_EXIT_CODES:
        return None
    return next((explain for pattern, explain in _KNOWN if pattern.search(text)), None)
