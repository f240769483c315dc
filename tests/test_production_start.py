"""The README's "Production" path as a newcomer follows it: the seed's config pasted
as it is, the user and group created as the relay asks, ``check-config`` then
``start`` as root. What cannot work is refused before anything is bound, with the
cause and the fix: a directory the relay's user cannot reach or own, a venv whose
python that user cannot run. Real commands, a throwaway system user and group.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccc_relay.policy.config import PRODUCTION_STATE_DIR
from tests.support import run_cli
from tests.test_config import SEED_BLOCK

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
PRODUCTION_DIRS = (Path("/var/lib/ccc-statusd"), Path("/var/log/claude-ipc"))

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None,
    reason="creates a system user and starts the relay as root: needs root, useradd, runuser",
)


@pytest.fixture
def account() -> Iterator[tuple[str, str]]:
    """A throwaway system user and the agents' group, made as the README's Production
    section says (the user is not in the group: a relay started as root keeps it)."""
    suffix = secrets.token_hex(3)
    user, group = f"ccc-test-p{suffix}", f"ccc-test-q{suffix}"
    subprocess.run(["groupadd", "--system", group], check=True)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
        check=True,
    )
    try:
        yield user, group
    finally:
        subprocess.run(["userdel", user], check=False, capture_output=True)
        for name in (group, user):
            subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may walk through (pytest's own tmp is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ccc-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def statusd(*args: str, python: Path | None = None, user: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``ccc-statusd ARGS`` run by an interpreter the relay's user may read (this
    test venv's may be a pyenv's under /root), with this checkout's code."""
    argv = [str(python or _system_python()), "-m", "ccc_relay.cli.statusd", *args]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(
        argv, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _system_python() -> Path:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"no {SYSTEM_PYTHON} of this test's Python version")
    for path in (SRC, *map(Path, site.getsitepackages())):
        if not all(os.stat(p).st_mode & 0o005 == 0o005 for p in [path, *path.parents]):
            pytest.skip(f"{path} is not readable by other users")
    return SYSTEM_PYTHON


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(SRC), *site.getsitepackages()])
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": path, "LANG": "C.UTF-8"}


def seed_config(tmp_path: Path, user: str, group: str, socket: Path, extra: str = "") -> Path:
    """The seed's block as the README pastes it, with this test's user, group and
    socket (the host's /run/claude-ipc.sock is left alone), plus ``extra`` keys."""
    text = (
        SEED_BLOCK.replace("claude-ipc  ", user)
        .replace("claude-agents", group)
        .replace("/var/run/claude-ipc.sock", str(socket))
    )
    if extra:
        text = text.replace("  security:\n", f"{extra}  security:\n", 1)
    path = tmp_path / "ccc-statusd.yaml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def started(config: Path, pid_file: Path) -> Iterator[subprocess.Popen[str]]:
    """``ccc-statusd start --config CONFIG`` as root, once ``pid_file`` is there;
    killed afterwards if the test did not stop it."""
    proc = subprocess.Popen(
        [str(_system_python()), "-m", "ccc_relay.cli.statusd", "start", "--config", str(config)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the relay did not start"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def problems_of(config: Path) -> tuple[int, list[str], list[dict[str, object]]]:
    result = statusd("check-config", str(config), "--json")
    document = json.loads(result.stdout)
    return result.returncode, document["problems"], document["directories"]


@pytest.mark.slow
@needs_root
def test_the_seed_config_pasted_as_the_readme_says_starts(
    account: tuple[str, str], open_dir: Path, tmp_path: Path
) -> None:
    if any(os.path.lexists(p) for p in PRODUCTION_DIRS):
        pytest.skip("this host has a production relay's directories already")
    user, group = account
    config = seed_config(tmp_path, user, group, open_dir / "claude-ipc.sock")
    code, problems, directories = problems_of(config)
    assert (code, problems) == (0, [])
    states = {d["path"]: d["state"] for d in directories}
    assert states["/var/lib/ccc-statusd"] == f"created at start (owner {user}, mode 0700)"
    assert states["/var/log/claude-ipc"] == f"created at start (owner {user}, mode 0700)"
    try:
        with started(config, Path("/var/lib/ccc-statusd/daemon.pid")) as proc:
            uid = pwd.getpwnam(user).pw_uid
            for directory in PRODUCTION_DIRS:  # like systemd's StateDirectory=/LogsDirectory=
                info = os.stat(directory)
                assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (uid, 0o700), directory
            assert os.stat(open_dir / "claude-ipc.sock").st_gid == grp.getgrnam(group).gr_gid

            again = statusd("start", "--config", str(config))
            assert again.returncode == 7, again.stderr  # conflict, docs/cli.md
            assert f"stop it first with: ccc-statusd stop --config {config}" in again.stderr

            stopped = statusd("stop", "--config", str(config))
            assert stopped.returncode == 0, stopped.stderr
            assert proc.wait(15) == 0
    finally:
        for directory in PRODUCTION_DIRS:
            shutil.rmtree(directory, ignore_errors=True)


@needs_root
def test_a_venv_whose_python_the_relay_user_cannot_run_is_refused_before_binding(
    account: tuple[str, str], open_dir: Path
) -> None:
    user, group = account
    # A python under a directory only root may enter, as pyenv's under /root, and
    # a venv made with it in a place everybody may read, as /opt/ccc-relay.
    closed = Path(tempfile.mkdtemp(prefix="ccc-test-root-"))
    try:
        closed.chmod(0o700)
        interpreter = closed / "pyenv" / "bin" / "python3"
        interpreter.parent.mkdir(parents=True)
        shutil.copy2(_system_python(), interpreter)
        venv = open_dir / "venv"
        made = subprocess.run(
            [str(interpreter), "-m", "venv", "--without-pip", str(venv)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        state = open_dir / "state"
        config = seed_config(
            open_dir, user, group, open_dir / "claude-ipc.sock",
            extra=f"  state_dir: {state}\n  admin_socket_path: {open_dir}/admin.sock\n",
        )  # fmt: skip
        said = (
            f"the relay's user {user} cannot run {venv}/bin/python3: it links to "
            f"{interpreter}, and {closed} (owner root, mode 0700) is closed to {user}; "
            f"make the venv with /usr/bin/python3 (/usr/bin/python3 -m venv --clear {venv})"
        )
        checked = statusd("check-config", str(config), python=venv / "bin" / "python3")
        assert checked.returncode == 4
        assert said in checked.stderr, checked.stderr
        started = statusd("start", "--config", str(config), python=venv / "bin" / "python3")
        assert started.returncode == 4
        assert said in started.stderr, started.stderr
        # Refused before anything was made or bound.
        left = [p.name for p in open_dir.iterdir()]
        assert sorted(left) == ["ccc-statusd.yaml", "venv"]
    finally:
        shutil.rmtree(closed, ignore_errors=True)


@needs_root
def test_check_config_names_each_directory_the_relay_cannot_use_and_its_fix(
    account: tuple[str, str], open_dir: Path
) -> None:
    user, group = account
    taken = open_dir / "state"
    taken.mkdir(mode=0o700)  # root's, as `mkdir` under sudo leaves it
    in_home = Path("/root/.cache") / f"ccc-test-{secrets.token_hex(3)}"
    config = seed_config(
        open_dir,
        user,
        group,
        open_dir / "claude-ipc.sock",
        extra=f"  state_dir: {taken}\n",
    ).read_text()
    config = config.replace("/var/log/claude-ipc/", str(in_home))
    path = open_dir / "ccc-statusd.yaml"
    path.write_text(config)
    code, problems, directories = problems_of(path)
    assert code == 4
    assert (
        f"daemon.state_dir {taken}: belongs to root, not to {user} that the relay runs as; "
        f"fix it with: chown -R {user}: {taken}"  # root types no sudo
    ) in problems
    assert (
        f"daemon.audit.log_path {in_home}: the relay's user {user} cannot reach it (it lies "
        f"in the home of root (/root)): /root (owner root, mode 0700) is closed to {user}; "
        "set daemon.audit.log_path to a directory of the relay's own, e.g. /var/log/claude-ipc"
    ) in problems
    assert not any("chown" in p and str(in_home) in p for p in problems)
    assert {d["key"] for d in directories if d["problem"]} == {
        "daemon.state_dir",
        "daemon.audit.log_path",
    }
    started = statusd("start", "--config", str(path))
    assert started.returncode == 4
    assert all(p in started.stderr for p in problems), started.stderr
    assert not in_home.exists()
    assert sorted(p.name for p in open_dir.iterdir()) == ["ccc-statusd.yaml", "state"]
    assert os.stat(taken).st_uid == 0 and not any(taken.iterdir())


@needs_root
def test_the_relay_user_is_told_how_to_make_what_it_may_not(
    account: tuple[str, str], open_dir: Path
) -> None:
    """Started by its own user (not root), the relay can create nothing in /var/lib
    or bind in /run: check-config (and start) say so, with sudo before the fix."""
    user, group = account
    state = Path("/var/lib") / f"ccc-test-{secrets.token_hex(3)}"
    log = open_dir / "log"
    log.mkdir(mode=0o700)
    os.chown(log, pwd.getpwnam(user).pw_uid, -1)
    config = seed_config(
        open_dir, user, group, Path("/run/ccc-test-never.sock"),
        extra=f"  state_dir: {state}\n  admin_socket_path: {log}/admin.sock\n",
    )  # fmt: skip
    config.write_text(config.read_text().replace("/var/log/claude-ipc/", str(log)))
    config.chmod(0o644)
    checked = statusd("check-config", str(config), "--json", user=user)
    assert checked.returncode == 4, checked.stderr
    problems = json.loads(checked.stdout)["problems"]
    assert (
        f"daemon.state_dir {state}: does not exist, and {user} may not create it in /var/lib; "
        f"create it with: sudo install -d -o {user} -g {user} -m 0700 {state}"
    ) in problems
    assert any(
        p.startswith(f"daemon.socket_path: {user} may not create its socket in /run ")
        and "start the relay as root" in p
        for p in problems
    ), problems
    assert not any(str(log) in p for p in problems)  # its own
    started = statusd("start", "--config", str(config), user=user)
    assert started.returncode == 4, started.stderr
    assert not state.exists() and not os.path.lexists("/run/ccc-test-never.sock")


def test_a_start_that_fails_after_binding_removes_its_sockets(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "relay.db").write_bytes(b"not a database, " * 400)
    (state / "relay.db").chmod(0o600)
    config = tmp_path / "relay.yaml"
    config.write_text(
        f"daemon:\n  state_dir: {state}\n  socket_path: {tmp_path}/agents.sock\n"
        f"  admin_socket_path: {tmp_path}/admin.sock\n"
    )
    result = run_cli("ccc-statusd", "start", "--config", str(config), "--allow-root")
    assert result.returncode == 4, result.stderr
    assert f"cannot use the relay's database {state}/relay.db" in result.stderr
    assert "move it aside" in result.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.suffix == ".sock"]


@pytest.mark.slow
@needs_root
def test_a_missing_admin_socket_directory_is_made_as_runtime_directory_would(
    account: tuple[str, str], open_dir: Path
) -> None:
    # packaging/config's admin socket is in /run/ccc-statusd, which systemd makes
    # (RuntimeDirectory=) and a reboot empties; started by hand, the relay makes it.
    user, group = account
    run = open_dir / "run"
    config = seed_config(
        open_dir, user, group, open_dir / "claude-ipc.sock",
        extra=f"  state_dir: {open_dir}/state\n  admin_socket_path: {run}/admin.sock\n",
    )  # fmt: skip
    config.write_text(config.read_text().replace("/var/log/claude-ipc/", f"{open_dir}/log"))
    code, problems, directories = problems_of(config)
    assert (code, problems) == (0, [])
    assert {"key": "daemon.admin_socket_path", "path": str(run), "problem": False,
            "state": f"created at start (owner {user}, mode 0700)"} in directories  # fmt: skip
    with started(config, open_dir / "state" / "daemon.pid") as proc:
        info = os.stat(run)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (pwd.getpwnam(user).pw_uid, 0o700)
        assert stat.S_ISSOCK(os.stat(run / "admin.sock").st_mode)
        stopped = statusd("stop", "--config", str(config))
        assert stopped.returncode == 0, stopped.stderr
        assert proc.wait(15) == 0


def test_the_docs_say_where_the_state_goes_and_which_python_to_use() -> None:
    readme = (ROOT / "README.md").read_text()
    production = readme[readme.index("## Production") : readme.index("## Commands")]
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    for text in (production, deploy):
        assert str(PRODUCTION_STATE_DIR) in text
        assert "sudo /usr/bin/python3 -m venv /opt/ccc-relay" in text
    assert "sudo python3 -m venv" not in readme + deploy  # root's python3 may be pyenv's
    section = deploy[deploy.index("## 2. The package") : deploy.index("## 3.")]
    assert "pyenv" in section and "check-config" in section
