"""The daemon as production runs it: started as root, it becomes daemon.user and confines itself.

A real ``ccc-statusd start`` subprocess with a throwaway system user and socket
group; the test reads the process's ids from /proc, the socket's owner and
group, and the daemon's own report of its Landlock confinement, and shows
agents still exchange messages through it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccc_relay.client import AdminClient, RelayClient
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.credentials import Credential
from tests.support import BIN, run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("useradd") is None,
        reason="needs root and useradd to create the service user",
    ),
]


@pytest.fixture
def service_account() -> Iterator[tuple[str, str]]:
    suffix = secrets.token_hex(3)
    user, group = f"ccc-test-d{suffix}", f"ccc-test-a{suffix}"
    subprocess.run(["groupadd", "--system", group], check=True)
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--groups",
            group,
            user,
        ],
        check=True,
    )
    try:
        yield user, group
    finally:
        subprocess.run(["userdel", user], check=False, capture_output=True)
        for name in (group, user):
            subprocess.run(["groupdel", name], check=False, capture_output=True)


def _world_readable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o005 == 0o005 for p in [path, *path.parents])


def daemon_command() -> tuple[list[str], dict[str, str]]:
    """How to start ccc-statusd so the service user can still read the interpreter.

    Production installs into a world-readable prefix (/usr, /opt). Here the
    test interpreter may live under /root (0700): the daemon could not even
    import lazily after dropping to the service user, so the test then runs
    the same code with the system's python3 of the same version.
    """
    import site
    import sys

    if _world_readable(Path(sys.base_prefix)):
        return [str(BIN / "ccc-statusd")], {}
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.skip(f"{sys.base_prefix} is not readable by other users and {system} is absent")
    src = Path(__file__).resolve().parents[1] / "src"
    paths = [str(src), *site.getsitepackages()]
    for p in map(Path, paths):
        if not _world_readable(p):
            pytest.skip(f"{p} is not readable by the service user")
    return [str(system), "-m", "ccc_relay.cli.statusd"], {"PYTHONPATH": os.pathsep.join(paths)}


@contextlib.contextmanager
def started_as_root(config: Path, state: Path) -> Iterator[subprocess.Popen[str]]:
    """``ccc-statusd start --config CONFIG`` as root, once its pid file is in ``state``;
    killed afterwards if the test did not stop it."""
    command, env = daemon_command()
    proc = subprocess.Popen(
        [*command, "start", "--config", str(config)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (state / "daemon.pid").exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def ids_of(pid: int) -> dict[str, list[int]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups", "NoNewPrivs"):
            fields[key] = [int(x) for x in value.split()]
    return fields


def test_root_start_drops_to_the_user_and_confines_itself(
    service_account: tuple[str, str], state_dir: Path
) -> None:
    user, group = service_account
    os.chmod(state_dir, 0o755)  # the parent of the relay's dirs must be traversable
    state = state_dir / "relay"
    config = state_dir / "relay.yaml"
    config.write_text(
        f"daemon:\n  user: {user}\n  socket_group: {group}\n  socket_mode: 0660\n"
        f"  state_dir: {state}\n  socket_path: {state_dir}/claude-ipc.sock\n"
        f"  audit:\n    log_path: {state_dir}/log\n"
    )
    with started_as_root(config, state) as proc:
        account = pwd.getpwnam(user)
        ids = ids_of(proc.pid)
        assert ids["Uid"] == [account.pw_uid] * 4  # real, effective, saved, fs
        assert ids["Gid"] == [account.pw_gid] * 4
        assert grp.getgrnam(group).gr_gid in ids["Groups"] and 0 not in ids["Groups"]
        assert ids["NoNewPrivs"] == [1]

        sock = os.stat(state_dir / "claude-ipc.sock")
        assert (sock.st_mode & 0o777, sock.st_gid) == (0o660, grp.getgrnam(group).gr_gid)
        assert os.stat(state).st_uid == account.pw_uid
        assert os.stat(state_dir / "log").st_uid == account.pw_uid

        admin = AdminClient(state / "admin.sock")
        status = admin.request("status")
        assert status["uid"] == account.pw_uid
        assert status["sandbox"]["probe"] == "open(/etc/hostname) denied"
        assert status["sandbox"]["landlock"].startswith("Landlock enforced")

        creds = {n: Credential.generate() for n in ("alice", "bob")}
        for name, cred in creds.items():
            admin.request("agent_add", name=name, cred_hash=cred.digest())
        # The policy comes from the config file, re-read on SIGHUP by the
        # confined daemon (Landlock keeps exactly that file readable).
        config.write_text(config.read_text() + "policy:\n  allow: [alice -> bob]\n")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not admin.request("policy_show"):
            assert time.monotonic() < deadline, "SIGHUP did not reload the policy"
            time.sleep(0.05)
        sock_path = state_dir / "claude-ipc.sock"
        with RelayClient(Endpoint(sock_path, "alice", creds["alice"])) as a:
            sent = a.send("bob", "through a confined relay")
        with RelayClient(Endpoint(sock_path, "bob", creds["bob"])) as b:
            assert [m.id for m in b.inbox()] == [sent.id]
        stopped = run_cli("ccc-statusd", "stop", "--config", str(config))
        assert stopped.returncode == 0, stopped.stderr
        assert proc.wait(10) == 0


def status_fields(pid: int, *names: str) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in names:
            fields[key] = value.strip()
    return fields


def test_the_started_daemon_runs_under_its_seccomp_filter(
    service_account: tuple[str, str], state_dir: Path
) -> None:
    # Not under systemd: the relay loads the filter itself, after dropping to
    # the user and Landlock, before it serves; its probe is a call the filter refuses.
    user, group = service_account
    os.chmod(state_dir, 0o755)
    state = state_dir / "relay"
    config = state_dir / "relay.yaml"
    config.write_text(
        f"daemon:\n  user: {user}\n  socket_group: {group}\n"
        f"  state_dir: {state}\n  socket_path: {state_dir}/claude-ipc.sock\n"
        f"  audit:\n    log_path: {state_dir}/log\n"
    )
    with started_as_root(config, state) as proc:
        fields = status_fields(proc.pid, "Seccomp", "Seccomp_filters", "NoNewPrivs")
        assert fields == {"Seccomp": "2", "Seccomp_filters": "2", "NoNewPrivs": "1"}
        status = AdminClient(state / "admin.sock").request("status")
        assert status["sandbox"]["seccomp_probe"] == "unshare(0) refused: EPERM"
        assert status["sandbox"]["seccomp"].startswith("filter loaded:")
        # Still a working relay: an agent authenticates over its Unix socket.
        cred = Credential.generate()
        AdminClient(state / "admin.sock").request(
            "agent_add", name="alice", cred_hash=cred.digest()
        )
        with RelayClient(Endpoint(state_dir / "claude-ipc.sock", "alice", cred)) as alice:
            assert alice.inbox() == []
        stopped = run_cli("ccc-statusd", "stop", "--config", str(config))
        assert stopped.returncode == 0, stopped.stderr
        assert proc.wait(10) == 0


def test_root_without_a_user_is_refused(state_dir: Path) -> None:
    result = run_cli(
        "ccc-statusd", "start", env={"CCC_CACHE_DIR": str(state_dir / "x"), "CCC_CONFIG": ""}
    )
    assert result.returncode == 4
    assert "--allow-root" in result.stderr and "daemon.user" in result.stderr
    assert not (state_dir / "x").exists()
