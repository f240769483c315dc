"""What the newcomer tests share: docs/containers.md's own commands, a relay started the
way ``./dev.sh start`` starts it, throwaway users, and a ``ccc`` that cannot run in a sandbox.

The documented install recipe is run as written but for its directory: each run
installs into a prefix of its own under /usr/local/lib (where sandboxes see it),
leaves /usr/local/bin/ccc alone, and names its ``ccc`` to ``ccc run`` and ``ccc
doctor`` with CCC_SANDBOX_CCC. So tests touch no file they did not make, and
concurrent runs do not meet; whatever a test made is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_MD = ROOT / "docs" / "containers.md"
DOC_INSTALL_DIR = "/usr/local/lib/ccc-relay"  # as docs/containers.md's recipe has it
TEST_PREFIX = "/usr/local/lib/ccc-relay-test-"  # + a token: this run's own
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def doc_block(marker: str) -> str:
    """The shell block that follows ``<!-- marker -->`` in docs/containers.md."""
    text = CONTAINERS_MD.read_text()
    found = re.search(rf"<!-- {re.escape(marker)} -->\n```sh\n(.*?)```", text, re.S)
    assert found, f"docs/containers.md has no block marked {marker}"
    return found.group(1)


def bash(script: str, *, env: Mapping[str, str], user: str | None = None, cwd: Path = ROOT,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    argv = ["bash", "-euo", "pipefail", "-c", script]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(
        argv, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def need_root_and_bwrap() -> None:
    if os.geteuid() != 0:
        pytest.skip("installs ccc under /usr/local and makes users: needs root")
    for tool in ("bwrap", "setpriv", "prlimit", "runuser", "useradd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 to make the sandboxes' ccc with")


def install_script(prefix: Path) -> str:
    """docs/containers.md's install recipe for ``prefix``, without its /usr/local/bin link."""
    recipe = doc_block("install-recipe")
    assert DOC_INSTALL_DIR in recipe
    lines = [line for line in recipe.splitlines() if not line.startswith("ln ")]
    assert len(lines) == len(recipe.splitlines()) - 1, "the recipe's link line moved"
    return "\n".join(lines).replace(DOC_INSTALL_DIR, str(prefix)) + "\n"


@contextlib.contextmanager
def installed_ccc() -> Iterator[Path]:
    """docs/containers.md's install recipe, into a prefix of this run's own; yields its bin.

    Export ``sandbox_ccc(bin)`` (CCC_SANDBOX_CCC) to the ``ccc run`` that should use it.
    """
    need_root_and_bwrap()
    prefix = Path(f"{TEST_PREFIX}{secrets.token_hex(4)}")
    result = bash(install_script(prefix), env={"PATH": HOST_PATH, "HOME": "/root"})
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        yield prefix / "bin"
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def sandbox_ccc(bin_dir: Path) -> dict[str, str]:
    """The environment that gives ``ccc run``'s sandboxes the ``ccc`` in ``bin_dir``."""
    return {"CCC_SANDBOX_CCC": str(bin_dir / "ccc")}


@contextlib.contextmanager
def throwaway_user(prefix: str = "ccct") -> Iterator[str]:
    name = f"{prefix}{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    try:
        yield name
    finally:
        uid = pwd.getpwnam(name).pw_uid
        # Rootless podman leaves its pause process behind; it is ours, found by its pid file.
        pause = Path(f"/tmp/podman-run-{uid}/libpod/tmp/pause.pid")
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pause.read_text().strip()), signal.SIGKILL)
            time.sleep(0.2)
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
        shutil.rmtree(f"/tmp/podman-run-{uid}", ignore_errors=True)


@dataclass
class Relay:
    """A ``ccc-statusd start`` on embedded defaults, as ``./dev.sh start`` runs it."""

    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def state(self) -> Path:
        return Path(self.env["HOME"]) / ".cache" / "ccc-status"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_relay(env: Mapping[str, str], *, user: str | None = None, bin_dir: Path,
                log: Path, extra: tuple[str, ...] = ()) -> Relay:  # fmt: skip
    argv = [str(bin_dir / "ccc-statusd"), "start", *extra]
    if user is None and os.geteuid() == 0:
        argv.append("--allow-root")  # what ./dev.sh start adds for root
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=dict(env), stdout=out, stderr=out)
    relay = Relay(dict(env), proc, log)
    deadline = time.monotonic() + 30
    while not (relay.state / "daemon.pid").exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the relay did not start"
        time.sleep(0.05)
    return relay


@contextlib.contextmanager
def broken_ccc(tmp: Path) -> Iterator[Path]:
    """A ``ccc`` from a virtual environment under /usr/local whose python lives outside
    /usr (as a pyenv's does); give it to ``ccc run`` with ``sandbox_ccc(its.parent)``."""
    outside = tmp / "pyenv" / "bin"
    outside.mkdir(parents=True)
    shutil.copy2("/usr/bin/python3", outside / "python3")
    venv = Path(f"/usr/local/lib/ccc-broken-{secrets.token_hex(3)}")
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(outside / "python3")
    script = venv / "bin" / "ccc"
    script.write_text(f"#!{venv}/bin/python\nfrom ccc_relay.cli.entry import main\nmain()\n")
    script.chmod(0o755)
    try:
        yield script
    finally:
        shutil.rmtree(venv)


def user_env(home: Path, *, bin_dir: Path) -> dict[str, str]:
    env = {"HOME": str(home), "PATH": f"{bin_dir}:{HOST_PATH}", "LANG": "C.UTF-8"}
    return env
