"""Whether the ``ccc`` a sandbox would run works in there, found out before an agent relies on it.

A sandbox sees the host's ``/usr`` and nothing of ``/opt``, ``/root`` or
``/home``. A ``ccc`` from a virtual environment made by a pyenv or home
directory ``python3`` starts with a ``#!`` line pointing outside ``/usr``:
inside, ``ccc send`` fails, and the MCP server and hooks that ``ccc install
claude`` wrote fail without a word. The rule this module owns: ``probe_ccc``
runs ``ccc --version`` in a throwaway sandbox of the same runtime and ids
(the only test that cannot be wrong), and ``why_not_visible`` says from the
host side what is in the way, so the message can name the fix.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ccc_relay.containers.engine_errors import engine_problem
from ccc_relay.containers.sandbox import run_sandbox
from ccc_relay.containers.spec import SandboxSpec, SandboxSpecError
from ccc_relay.containers.staging import LaunchError
from ccc_relay.daemon.privileges import sudo

# Where the sandbox's PATH looks, as host paths (its /bin and /sbin are links into /usr).
SANDBOX_BIN_DIRS = (
    Path("/usr/local/sbin"),
    Path("/usr/local/bin"),
    Path("/usr/sbin"),
    Path("/usr/bin"),
)
_VISIBLE_ROOTS = tuple(Path(p) for p in ("/usr", "/bin", "/sbin", "/lib", "/lib64"))
PROBE_TIMEOUT = 60.0  # podman's first start on a cold cache takes seconds; a hang is not a probe
MAX_DETAIL = 400  # characters of the sandbox's own error kept for the message
INSTALL_DIR = "/usr/local/lib/ccc-relay"


class EngineFailed(LaunchError):
    """podman or docker itself failed (no daemon, no image, broken storage or runtime):
    not a question of ``ccc``. The message says what to do; ``returncode`` and
    ``engine_text`` are the engine's own."""

    def __init__(self, message: str, returncode: int, engine_text: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.engine_text = engine_text


def install_recipe(source: str | None = None) -> list[str]:
    """The commands that install ``ccc`` where bubblewrap and podman sandboxes see it.

    ``source`` is what pip installs (default: this checkout, when running from one).
    Raises nothing.
    """
    source = source or _checkout() or "ccc-relay"
    as_root = sudo()
    return [
        f"{as_root}/usr/bin/python3 -m venv {INSTALL_DIR}",
        f"{as_root}{INSTALL_DIR}/bin/pip install {source}",
        f"{as_root}ln -sf {INSTALL_DIR}/bin/ccc /usr/local/bin/ccc",
    ]


def visible_ccc(bin_dirs: Sequence[Path] = SANDBOX_BIN_DIRS) -> Path | None:
    """The ``ccc`` the sandbox's PATH would find first, as a host path, or None. Raises nothing."""
    for directory in bin_dirs:
        candidate = directory / "ccc"
        if os.path.lexists(candidate):
            return candidate
    return None


def why_not_visible(ccc: Path | None, *, bound: bool = False) -> str | None:
    """What keeps ``ccc`` (from ``visible_ccc``, or with ``bound`` the one --sandbox-ccc
    binds in) from running in a sandbox, as far as the host can tell; None when
    nothing is in the way that the host can see. Raises nothing."""
    if ccc is None:
        dirs = ", ".join(str(d) for d in SANDBOX_BIN_DIRS)
        return f"there is no ccc in {dirs}, the only places a sandbox's PATH looks"
    target = Path(os.path.realpath(ccc))
    if not bound and not _visible(target):
        return f"{ccc} is a link to {target}, outside /usr, which the sandbox cannot see"
    interpreter = _interpreter(target)
    if interpreter is None:
        return None
    if not _visible(Path(interpreter)):
        return f"{ccc} runs {interpreter}, outside /usr, which the sandbox cannot see"
    real = Path(os.path.realpath(interpreter))
    if not _visible(real):
        return (
            f"{ccc} runs {interpreter}, which is {real}: outside /usr, so the sandbox cannot "
            "run it (a virtual environment made by a pyenv, conda or home-directory python3 "
            "keeps linking to it)"
        )
    return None


def probe_ccc(
    runtime: str,
    *,
    as_root: bool,
    uid: int,
    gid: int,
    extra_gids: tuple[int, ...] = (),
    rootfs_dir: Path | None = None,
    image: str | None = None,
    ccc_path: Path | None = None,
    timeout: float = PROBE_TIMEOUT,
) -> str | None:
    """Run ``ccc --version`` in a throwaway sandbox like the agent's; None when it works,
    else what went wrong (the sandbox's own words, shortened).

    Raises EngineFailed when podman or docker could not start any container, so
    that is said before anything about ``ccc`` or the image's contents.
    """
    with tempfile.TemporaryDirectory(prefix="ccc-probe-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # the sandbox uid walks in (bubblewrap resolves paths as that uid)
        project = base / "workspace"
        project.mkdir(mode=0o755)
        for stand_in in ("socket", "credential"):
            (base / stand_in).write_bytes(b"")
            (base / stand_in).chmod(0o644)
        try:
            spec = SandboxSpec(
                agent=f"probe-{secrets.token_hex(4)}",
                project_dir=project,
                socket_path=base / "socket",
                credential_path=base / "credential",
                uid=uid,
                gid=gid,
                extra_gids=extra_gids,
                command=("ccc", "--version"),
                runtime=runtime,
                image=image,
                ccc_path=ccc_path,
            )
            result = run_sandbox(spec, as_root=as_root, rootfs_dir=rootfs_dir, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"'ccc --version' did not finish in {timeout:.0f} s"
        except (LaunchError, SandboxSpecError, OSError) as exc:
            return f"the probe sandbox could not start: {exc}"
    if runtime != "bwrap":
        text = result.stderr.decode(errors="replace")
        engine = engine_problem(runtime, result.returncode, text, spec)
        if engine is not None:
            raise EngineFailed(
                f"{runtime} is not usable: {engine}", result.returncode, text[-MAX_DETAIL:]
            )
    out = result.stdout.decode(errors="replace").strip()
    if result.returncode == 0 and out.startswith("ccc"):
        return None
    said = (result.stderr.decode(errors="replace").strip() or out)[-MAX_DETAIL:]
    return f"'ccc --version' exited {result.returncode}" + (f": {said}" if said else "")


def not_runnable_message(
    runtime: str, problem: str, *, image: str | None = None, ccc_path: Path | None = None
) -> str:
    """The whole explanation for a ``ccc`` that does not run inside, with what to do."""
    lead = (
        f"ccc does not run inside the {runtime} sandbox ({problem}). Inside, 'ccc send', "
        "the MCP server and the hooks of 'ccc install claude' would all fail."
    )
    if runtime == "docker":
        return (
            f"{lead} Install ccc-relay into the image {image or ''} (pip install ccc-relay "
            "in its Dockerfile), or pass --no-ccc-check to start without it."
        )
    static = why_not_visible(ccc_path, bound=True) if ccc_path else why_not_visible(visible_ccc())
    because = f" Here, {static}." if static else ""
    steps = "\n".join(f"  {line}" for line in install_recipe())
    return (
        f"{lead} A sandbox sees only the host's /usr.{because} Install ccc there "
        f"(docs/containers.md, 'Installing ccc for sandboxes'):\n{steps}\n"
        "or pass --no-ccc-check to start without it."
    )


# --- internals ----------------------------------------------------------------


def _visible(path: Path) -> bool:
    # The sandbox's /bin, /sbin, /lib and /lib64 are links into its /usr.
    return any(path.is_relative_to(root) for root in _VISIBLE_ROOTS)


def _interpreter(script: Path) -> str | None:
    try:
        with script.open("rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if not words:
        return None
    if Path(words[0]).name == "env" and len(words) > 1:
        return None  # found on PATH inside: the probe itself tells
    return words[0]


def _checkout() -> str | None:
    root = Path(__file__).resolve().parents[3]
    return str(root) if (root / "pyproject.toml").is_file() else None
