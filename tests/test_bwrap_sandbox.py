"""Real bubblewrap sandboxes: what an agent inside can and cannot see, write and reach.

Each test starts the command line ``ccc run`` would start (as a non-root uid
through setpriv when the tests run as root) and asks a probe running inside.
Nothing here sends a packet anywhere: the only TCP listener is on the host's
loopback and the point is that the sandbox cannot reach it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from ccc_relay.containers.detect import capped_ulimits, missing_tools, present_etc_files
from ccc_relay.containers.sandbox import launch_command, run_sandbox
from ccc_relay.containers.seccomp import sandbox_filter_fd
from ccc_relay.containers.spec import SandboxSpec
from ccc_relay.containers.staging import open_credential, prepare_podman_rootfs, stage_credential

pytestmark = pytest.mark.slow

SANDBOX_UID = 4321  # no passwd entry on purpose: nothing of the host belongs to it
OTHER_UID = 4322
PYTHON = "/usr/bin/python3"  # the sandbox sees the host's /usr, not this venv
CREDENTIAL_TEXT = "agent: alice\ncredential: ccc1.not-a-real-credential-but-long-enough-xx\n"


def _skip_without_bwrap() -> None:
    missing = [t for t in ("bwrap", "prlimit") if shutil.which(t) is None]
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        missing.append("setpriv")
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install bubblewrap util-linux)")
    if not Path(PYTHON).exists():
        pytest.skip(f"the probe runs {PYTHON} inside the sandbox")


@dataclass
class Host:
    """A host layout like the relay's: two agents' projects, a state dir, a live socket."""

    base: Path
    alice_project: Path
    bob_project: Path
    state_dir: Path
    socket_path: Path
    credential: Path
    uid: int
    gid: int
    peer_uids: list[int]

    def spec(self, *command: str, **changes: object) -> SandboxSpec:
        spec = SandboxSpec(
            agent="alice",
            project_dir=self.alice_project,
            socket_path=self.socket_path,
            credential_path=self.credential,
            uid=self.uid,
            gid=self.gid,
            command=command,
        )
        return replace(spec, **changes)  # type: ignore[arg-type]


def _serve_unix(listener: socket.socket, peers: list[int], stop: threading.Event) -> None:
    # Answers each connection with "pong" and records the uid the kernel reports.
    listener.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            peers.append(struct.unpack("3i", creds)[1])
            conn.settimeout(5)
            if conn.recv(64) == b"ping\n":
                conn.sendall(b"pong\n")


@pytest.fixture
def host() -> Iterator[Host]:
    _skip_without_bwrap()
    as_root = os.geteuid() == 0
    uid, gid = (SANDBOX_UID, SANDBOX_UID) if as_root else (os.getuid(), os.getgid())
    # Not pytest's tmp_path: its 0700 parent is not walkable by the sandbox uid.
    base = Path(tempfile.mkdtemp(prefix="ccc-sandbox-"))
    base.chmod(0o711)
    alice, bob, state = base / "alice-project", base / "bob-project", base / "state"
    for path in (alice, bob, state / "credentials"):
        path.mkdir(parents=True)
    (alice / "README").write_text("alice's project\n")
    # World-readable on purpose: only the sandbox's mounts keep bob's files out of reach.
    (bob / "secret.txt").write_text("bob's secret\n")
    bob.chmod(0o755)
    (state / "audit.log").write_text("relay audit\n")
    state.chmod(0o711)
    credential = state / "credentials" / "alice.cred"
    credential.write_text(CREDENTIAL_TEXT)
    credential.chmod(0o600)  # as the relay writes it: the sandbox uid cannot read it here
    (state / "credentials").chmod(0o700)
    if as_root:
        os.chown(alice, uid, gid)
        os.chown(bob, OTHER_UID, OTHER_UID)
    socket_path = state / "daemon.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(socket_path))
    listener.listen()
    os.chmod(socket_path, 0o660)
    if as_root:
        os.chown(socket_path, 0, gid)  # the relay's 0660 + group arrangement
    peers: list[int] = []
    stop = threading.Event()
    server = threading.Thread(target=_serve_unix, args=(listener, peers, stop), daemon=True)
    server.start()
    try:
        yield Host(base, alice, bob, state, socket_path, credential, uid, gid, peers)
    finally:
        stop.set()
        server.join(5)
        listener.close()
        shutil.rmtree(base)


def sandbox_output(spec: SandboxSpec, *, timeout: float = 60) -> str:
    """Run ``spec`` and return its stdout; fail the test with its stderr when it fails."""
    result = run_sandbox(spec, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"sandbox exited {result.returncode}: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode()


_PROBE = r"""
import errno, json, os, resource, socket, subprocess, sys
host = json.loads(sys.argv[1])
seen = {"uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "env": dict(os.environ)}

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))

def write(path):
    def go():
        with open(path, "w") as f:
            f.write("x")
    return go

seen["writes"] = {p: attempt(write(p)) for p in host["write"]}
seen["exists"] = {p: os.path.exists(p) for p in host["look"]}
seen["root"] = sorted(os.listdir("/"))
seen["etc"] = sorted(os.listdir("/etc"))
with open("/proc/net/dev") as f:
    seen["interfaces"] = sorted(l.split(":")[0].strip() for l in f.readlines()[2:])

def tcp():
    socket.create_connection(("127.0.0.1", host["tcp_port"]), timeout=2).close()
seen["tcp_to_host_loopback"] = attempt(tcp)

def relay():
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect("/run/ccc.sock")
        s.sendall(b"ping\n")
        seen["relay_answer"] = s.recv(64).decode()
seen["relay"] = attempt(relay)
with open("/run/ccc/credential") as f:
    seen["credential"] = f.read()
seen["credential_write"] = attempt(write("/run/ccc/credential"))
with open("/proc/self/status") as f:
    status = dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)
seen["no_new_privs"] = status["NoNewPrivs"].strip()
seen["cap_eff"] = status["CapEff"].strip()
seen["cap_bnd"] = status["CapBnd"].strip()
seen["pids_visible"] = len([p for p in os.listdir("/proc") if p.isdigit()])
seen["nproc"] = resource.getrlimit(resource.RLIMIT_NPROC)
seen["hostname"] = socket.gethostname()
seen["nested_userns"] = subprocess.run(["unshare", "--user", "true"],
                                       capture_output=True).returncode
print(json.dumps(seen))
"""


def _probe_facts(host: Host, tcp_port: int) -> str:
    facts = {
        "tcp_port": tcp_port,
        "write": [
            "/workspace/written-inside",
            "/tmp/scratch",
            "/x",
            "/etc/passwd",
            "/etc/new",
            "/usr/x",
            "/run/x",
            str(host.bob_project / "x"),
        ],
        "look": [
            str(host.bob_project),
            str(host.bob_project / "secret.txt"),
            str(host.state_dir),
            str(host.state_dir / "audit.log"),
            str(host.credential),
            str(host.base),
            "/root",
            "/home",
            "/var",
            "/etc/shadow",
            "/etc/ssh",
        ],
    }
    return json.dumps(facts)


def _probe(host: Host, tcp_port: int) -> dict[str, Any]:
    out = sandbox_output(host.spec(PYTHON, "-c", _PROBE, _probe_facts(host, tcp_port)))
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
def probe(host: Host) -> Iterator[dict[str, Any]]:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    try:
        yield _probe(host, tcp.getsockname()[1])
    finally:
        tcp.close()


def test_workspace_and_tmp_are_writable_nothing_else(host: Host, probe: dict[str, Any]) -> None:
    assert probe["writes"] == {
        "/workspace/written-inside": "ok",
        "/tmp/scratch": "ok",
        "/x": "EROFS",  # the root is read-only
        "/etc/passwd": "EROFS",
        "/etc/new": "EROFS",
        "/usr/x": "EROFS",
        "/run/x": "EROFS",
        str(host.bob_project / "x"): "ENOENT",  # bob's project is not there at all
    }
    assert (host.alice_project / "written-inside").read_text() == "x"
    assert not (host.bob_project / "x").exists()


def test_other_projects_relay_state_and_homes_are_invisible(probe: dict[str, Any]) -> None:
    exists = probe["exists"]
    assert isinstance(exists, dict)
    assert not any(exists.values()), {path: seen for path, seen in exists.items() if seen}
    assert probe["root"] == [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib64",
        "proc",
        "run",
        "sbin",
        "tmp",
        "usr",
        "workspace",
    ]
    assert "shadow" not in probe["etc"]
    assert "ssh" not in probe["etc"]


def test_runs_as_the_unprivileged_uid_without_capabilities(
    host: Host, probe: dict[str, Any]
) -> None:
    assert (probe["uid"], probe["gid"]) == (host.uid, host.gid)
    assert probe["uid"] != 0
    assert probe["cap_eff"] == "0000000000000000"
    assert probe["cap_bnd"] == "0000000000000000"
    assert probe["no_new_privs"] == "1"
    assert probe["nested_userns"] != 0  # --disable-userns
    assert probe["nproc"] == [4096, 4096]
    assert probe["hostname"] == "ccc-alice"
    assert probe["pids_visible"] <= 4  # its own pid namespace


def test_only_loopback_and_no_way_to_the_hosts_loopback(probe: dict[str, Any]) -> None:
    assert probe["interfaces"] == ["lo"]
    assert probe["tcp_to_host_loopback"] == "ECONNREFUSED"


def test_relay_socket_connects_and_the_relay_sees_the_sandbox_uid(
    host: Host, probe: dict[str, Any]
) -> None:
    assert probe["relay"] == "ok"
    assert probe["relay_answer"] == "pong\n"
    # SO_PEERCRED: the relay sees the real unprivileged uid, not root.
    assert host.peer_uids == [host.uid]


def test_credential_is_readable_inside_and_read_only(probe: dict[str, Any]) -> None:
    assert probe["credential"] == CREDENTIAL_TEXT
    assert probe["credential_write"] in ("EROFS", "EACCES")


def test_environment_is_clean(probe: dict[str, Any]) -> None:
    env = probe["env"]
    assert isinstance(env, dict)
    assert env.pop("PWD") == "/workspace"  # bwrap's --chdir sets it
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/workspace",
        "LANG": "C.UTF-8",
        "CCC_AGENT": "alice",
        "CCC_SOCKET": "/run/ccc.sock",
        "CCC_CREDENTIAL": "/run/ccc/credential",
    }
    assert probe["cwd"] == "/workspace"


def test_memory_limit_stops_a_large_allocation(host: Host) -> None:
    grab = "b = bytearray(512 * 1024 * 1024); print('allocated')"
    spec = host.spec(PYTHON, "-c", grab, memory_limit=256 * 1024**2)
    result = run_sandbox(spec, timeout=60)
    assert result.returncode != 0
    assert b"MemoryError" in result.stderr
    assert b"allocated" in sandbox_output(host.spec(PYTHON, "-c", grab)).encode()


MIB = 1024**2


# Writes 5 MiB into /dev/shm and /tmp (capped at 2 and 3 MiB by the tests) and
# tries to make a file in /dev itself; prints (outcome, bytes written) for each.
_FILL = (
    "import errno, json, os\n"
    "def fill(path):\n"
    "    written = 0\n"
    "    try:\n"
    "        with open(path, 'wb') as f:\n"
    f"            for _ in range({5 * MIB // (64 * 1024)}):\n"
    "                written += f.write(bytes(64 * 1024))\n"
    "                f.flush()\n"
    "    except OSError as exc:\n"
    "        return errno.errorcode[exc.errno], written\n"
    "    return 'ok', written\n"
    "seen = {p: fill(p) for p in ('/dev/shm/fill', '/tmp/fill', '/dev/planted')}\n"
    "print(json.dumps(seen))\n"
)


def _assert_capped(seen: dict[str, list[Any]]) -> None:
    assert seen["/dev/shm/fill"][0] == "ENOSPC"
    assert 0 < seen["/dev/shm/fill"][1] <= 2 * MIB
    assert seen["/tmp/fill"][0] == "ENOSPC"
    assert 2 * MIB < seen["/tmp/fill"][1] <= 3 * MIB


def test_dev_shm_and_tmp_stop_at_their_caps_and_dev_is_read_only(host: Host) -> None:
    # Memory-backed mounts count against no rlimit: only their size caps bound them.
    spec = host.spec(PYTHON, "-c", _FILL, shm_size=2 * MIB, tmp_size=3 * MIB)
    seen = json.loads(sandbox_output(spec))
    _assert_capped(seen)
    assert seen["/dev/planted"] == ["EROFS", 0]


_SECCOMP_PROBE = r"""
import ctypes, errno, json, os, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {"unshare": 272, "mount": 165, "ptrace": 101, "keyctl": 250, "personality": 135,
      "bpf": 321, "setns": 308, "clone": 56, "ioctl": 16, "process_vm_readv": 310}

def call(name, *args):
    wide = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    if libc.syscall(ctypes.c_long(NR[name]), *wide) >= 0:
        return "ok"
    return errno.errorcode[ctypes.get_errno()]

def in_child(name, *args):
    # ptrace(TRACEME) and clone() change the caller: try them in a throwaway child.
    pid = os.fork()
    if pid == 0:
        result = call(name, *args)
        os._exit(0 if result == "ok" else getattr(errno, result))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return "ok" if code == 0 else errno.errorcode.get(code, str(code))

seen = {
    "status": {k: v.strip() for k, v in (l.split(":", 1) for l in open("/proc/self/status"))
               if k.startswith("Seccomp")},
    "unshare(0)": call("unshare", 0),
    "unshare(CLONE_NEWUSER)": call("unshare", 0x10000000),
    "setns": call("setns", 0, 0),
    "mount": call("mount", b"none", b"/tmp", b"tmpfs", 0, None),
    "ptrace(TRACEME)": in_child("ptrace", 0, 0, 0, 0),
    "process_vm_readv": call("process_vm_readv", os.getpid(), None, 0, None, 0, 0),
    "keyctl(GET_KEYRING_ID)": call("keyctl", 0, -3, 0),
    "personality(ADDR_NO_RANDOMIZE)": call("personality", 0x0040000),
    "personality(query)": call("personality", 0xFFFFFFFF),
    "bpf": call("bpf", 0, None, 0),
    "clone(CLONE_NEWNS)": in_child("clone", 0x00020000 | 17, 0, 0, 0, 0),
    "ioctl(TIOCSTI)": call("ioctl", 0, 0x5412, ctypes.c_char_p(b"x")),
}

# Ordinary work: a shell pipeline, a thread, a subprocess, a pty, files in the project.
with open("/workspace/notes.txt", "w") as f:
    f.write("hello\n")
os.rename("/workspace/notes.txt", "/workspace/renamed.txt")
shell = subprocess.run(["sh", "-c", "cat /workspace/renamed.txt | tr a-z A-Z; echo $((6*7))"],
                       capture_output=True, text=True)
seen["shell"] = shell.stdout
box = []
worker = threading.Thread(target=lambda: box.append(sum(range(10))))
worker.start()
worker.join()
seen["thread"] = box
primary, secondary = os.openpty()
os.write(secondary, b"pty\n")
seen["pty"] = os.read(primary, 16).decode()
print(json.dumps(seen))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe uses x86_64 numbers")
def test_seccomp_refuses_namespaces_mounts_tracing_and_the_keyring(host: Host) -> None:
    seen = json.loads(sandbox_output(host.spec(PYTHON, "-c", _SECCOMP_PROBE)))
    assert seen.pop("status")["Seccomp"] == "2"  # filtering
    assert seen.pop("personality(query)") == "ok"
    # Without the filter unshare(0), ptrace, process_vm_readv, keyctl and the
    # personality change succeed, and the others fail otherwise (ENOSPC from
    # --disable-userns, EINVAL, ENOTTY) but for mount and clone(CLONE_NEWNS),
    # which lack of capabilities refuses too.
    assert seen == {
        "unshare(0)": "EPERM",
        "unshare(CLONE_NEWUSER)": "EPERM",
        "setns": "EPERM",
        "mount": "EPERM",
        "ptrace(TRACEME)": "EPERM",
        "process_vm_readv": "EPERM",
        "keyctl(GET_KEYRING_ID)": "EPERM",
        "personality(ADDR_NO_RANDOMIZE)": "EPERM",
        "bpf": "EPERM",
        "clone(CLONE_NEWNS)": "EPERM",
        "ioctl(TIOCSTI)": "EPERM",
        "shell": "HELLO\n42\n",
        "thread": [45],
        "pty": "pty\r\n",
    }
    assert (host.alice_project / "renamed.txt").read_text() == "hello\n"


def test_sandbox_dies_with_its_launcher(host: Host) -> None:
    marker = f"{time.time_ns() % 10**6}.5"  # a sleep nobody else is running
    spec = host.spec("sleep", marker)
    fd, program = open_credential(spec.credential_path), sandbox_filter_fd()
    try:
        argv = launch_command(spec, as_root=os.geteuid() == 0, credential_fd=fd, seccomp_fd=program)
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import subprocess, sys, time\n"
                f"subprocess.Popen(sys.argv[1:], pass_fds=({fd}, {program}))\n"
                "time.sleep(300)\n",
                *argv,
            ],
            pass_fds=(fd, program),
        )
    finally:
        os.close(fd)
        os.close(program)
    try:
        sleeper = _wait_for(lambda: _pid_running(["sleep", marker]), present=True)
        assert sleeper is not None, "the sandboxed process never started"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(10)
        assert _wait_for(lambda: _pid_running(["sleep", marker]), present=False) is None, (
            "the sandbox outlived its launcher"
        )
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(10)


def _pid_running(cmdline: list[str]) -> int | None:
    wanted = "\0".join(cmdline).encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == wanted:
                    return int(entry.name)
            except OSError:
                continue
    return None


def _wait_for(check: object, *, present: bool, deadline: float = 10.0) -> int | None:
    # Processes start and die asynchronously; poll with a deadline, not a fixed sleep.
    assert callable(check)
    end = time.monotonic() + deadline
    while True:
        pid: int | None = check()
        if (pid is not None) == present or time.monotonic() > end:
            return pid
        time.sleep(0.05)


def test_podman_sandbox_keeps_the_same_promises(host: Host) -> None:
    # The same probe in a podman container, where podman and runc are installed.
    if missing_tools("podman", as_root=os.geteuid() == 0):
        pytest.skip("needs podman and runc (apt-get install podman runc)")
    if os.geteuid() != 0:
        pytest.skip("rootless podman maps ids through subuid ranges; this checks rootful podman")
    launcher = host.base / "launcher"  # made 0700 by these calls: nobody else may plant files
    rootfs = prepare_podman_rootfs(launcher / "rootfs", etc_files=present_etc_files())
    credential = stage_credential(host.credential, launcher / "staged", host.uid, host.gid)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    with tcp:
        spec = host.spec(
            PYTHON,
            "-c",
            _PROBE,
            _probe_facts(host, tcp.getsockname()[1]),
            runtime="podman",
            credential_path=credential,
        )
        argv = launch_command(
            spec,
            as_root=True,
            rootfs_dir=rootfs,
            etc_files=present_etc_files(),
            ulimits=capped_ulimits(),
        )
        result = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    seen = json.loads(result.stdout)
    assert (seen["uid"], seen["gid"]) == (host.uid, host.gid)
    writes = seen["writes"]
    assert writes.pop("/workspace/written-inside") == "ok"
    assert writes.pop("/tmp/scratch") == "ok"
    assert writes.pop(str(host.bob_project / "x")) == "ENOENT"
    assert set(writes.values()) == {"EROFS"}, writes
    assert not any(seen["exists"].values()), seen["exists"]
    assert "shadow" not in seen["etc"]
    assert "ssh" not in seen["etc"]
    assert seen["interfaces"] == ["lo"]
    assert seen["tcp_to_host_loopback"] == "ECONNREFUSED"
    assert (seen["relay"], seen["relay_answer"]) == ("ok", "pong\n")
    assert host.peer_uids == [host.uid]
    assert seen["credential"] == CREDENTIAL_TEXT
    assert seen["cap_eff"] == "0000000000000000"
    assert seen["no_new_privs"] == "1"
    # Unlike bwrap's --disable-userns, podman's default seccomp profile lets a
    # container make user namespaces (docs/containers.md says how to close it).
    assert seen["hostname"] == "ccc-alice"
    assert seen["env"]["CCC_SOCKET"] == "/run/ccc.sock"


def test_podman_caps_dev_shm_and_tmp(host: Host) -> None:
    if missing_tools("podman", as_root=os.geteuid() == 0):
        pytest.skip("needs podman and runc (apt-get install podman runc)")
    if os.geteuid() != 0:
        pytest.skip("rootless podman maps ids through subuid ranges; this checks rootful podman")
    launcher = host.base / "launcher"
    rootfs = prepare_podman_rootfs(launcher / "rootfs", etc_files=present_etc_files())
    credential = stage_credential(host.credential, launcher / "staged", host.uid, host.gid)
    spec = host.spec(
        PYTHON,
        "-c",
        _FILL,
        runtime="podman",
        credential_path=credential,
        shm_size=2 * MIB,
        tmp_size=3 * MIB,
    )
    argv = launch_command(
        spec, as_root=True, rootfs_dir=rootfs, etc_files=present_etc_files(),
        ulimits=capped_ulimits(),
    )  # fmt: skip
    result = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    seen = json.loads(result.stdout)
    _assert_capped(seen)
    assert seen["/dev/planted"] == ["EACCES", 0]  # podman's /dev is root's


def test_ccc_run_starts_the_sandbox_from_the_relays_config(host: Host) -> None:
    # The whole path a user takes: config -> paths and checks -> exec of the launcher.
    config = host.base / "relay.yaml"
    config.write_text(f"daemon:\n  state_dir: {host.state_dir}\n")
    show = (
        "import os; env = os.environ; "
        "print(os.getuid(), env['CCC_AGENT'], open(env['CCC_CREDENTIAL']).read())"
    )
    program = "from ccc_relay.cli.containers_cmd import run; run.main()"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            program,
            "alice",
            "--project",
            str(host.alice_project),
            "--runtime",
            "bwrap",
            "--config",
            str(config),
            # This test runs a plain python in the sandbox, not ccc: whether ccc runs
            # there is tests/test_newcomer_run.py's concern.
            "--no-ccc-check",
            "--",
            PYTHON,
            "-c",
            show,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{host.uid} alice {CREDENTIAL_TEXT}\n"
