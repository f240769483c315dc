"""seccomp filters: the relay's own (loaded in child interpreters: it cannot be undone) and the
sandboxes' compiled program. Real bwrap sandboxes under it: tests/test_bwrap_sandbox.py; the
hardened daemon under it: tests/test_hardening.py."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ccc_relay.containers.seccomp import SANDBOX_POLICY, sandbox_filter, sandbox_filter_fd
from ccc_relay.daemon import seccomp
from ccc_relay.daemon.seccomp import (
    BPF_INSTRUCTION,
    DAEMON_POLICY,
    SeccompError,
    compile_filter,
    syscall_number,
)

x86_64_only = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the probes use x86_64 syscall numbers"
)

CHILD = """
    import ctypes, errno, json, os, socket, sqlite3, subprocess, sys, threading
    from ccc_relay.daemon.seccomp import (
        DaemonFilter, SyscallPolicy, compile_filter, load_filter, refuse_io_uring,
    )
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    NR = {"unshare": 272, "setns": 308, "mount": 165, "ptrace": 101, "keyctl": 250,
          "add_key": 248, "bpf": 321, "perf_event_open": 298, "kexec_load": 246,
          "personality": 135, "process_vm_readv": 310, "userfaultfd": 323,
          "io_uring_setup": 425, "init_module": 175, "seccomp": 317}

    def call(name, *args):
        wide = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
        if libc.syscall(ctypes.c_long(NR[name]), *wide) >= 0:
            return "ok"
        return errno.errorcode[ctypes.get_errno()]

    def attempt(fn):
        try:
            fn()
        except OSError as exc:
            return errno.errorcode.get(exc.errno, str(exc))
        return "ok"

    def status():
        with open("/proc/self/status") as f:
            pairs = (line.split(":", 1) for line in f)
            return {k: v.strip() for k, v in pairs if k.startswith("Seccomp")}
"""


def run_child(code: str) -> dict[str, object]:
    """Run CHILD then ``code`` in a fresh interpreter; it prints one JSON object last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


@x86_64_only
def test_the_relays_filter_refuses_what_it_never_needs_and_keeps_what_it_does(
    tmp_path: Path,
) -> None:
    seen = run_child(f"""
        before = call("unshare", 0)
        report = DaemonFilter().enforce()
        seen = {{"before": before, "report": report, "status": status()}}
        for name, args in [
            ("unshare", (0,)), ("setns", (0, 0)), ("mount", (b"x", b"/", b"tmpfs", 0, None)),
            ("ptrace", (0, 0, 0, 0)), ("keyctl", (0, -3, 0)),
            ("add_key", (b"user", b"k", None, 0, -3)),
            ("bpf", (0, None, 0)), ("perf_event_open", (None, 0, -1, -1, 0)),
            ("kexec_load", (0, 0, None, 0)), ("personality", (0xFFFFFFFF,)),
            ("process_vm_readv", (os.getpid(), None, 0, None, 0, 0)), ("userfaultfd", (0,)),
            ("io_uring_setup", (1, None)), ("init_module", (None, 0, b"")),
        ]:
            seen[name] = call(name, *args)
        seen["exec"] = attempt(lambda: os.execv("/bin/true", ["true"]))
        seen["inet"] = attempt(lambda: socket.socket(socket.AF_INET).close())
        seen["netlink"] = attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
        # What the relay does: Unix sockets, threads, SQLite, files.
        a, b = socket.socketpair()
        a.sendall(b"ping")
        seen["unix"] = b.recv(4).decode()
        server = socket.socket(socket.AF_UNIX)
        server.bind({str(tmp_path)!r} + "/s.sock")
        server.listen()
        box = []
        worker = threading.Thread(target=lambda: box.append("thread"))
        worker.start()
        worker.join()
        seen["thread"] = box
        db = sqlite3.connect({str(tmp_path)!r} + "/x.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("create table t (x)")
        db.execute("insert into t values (1)")
        db.commit()
        seen["sqlite"] = db.execute("select x from t").fetchone()[0]
        with open({str(tmp_path)!r} + "/f", "wb") as f:
            f.write(b"x")
            os.fsync(f.fileno())
        print(json.dumps(seen))
    """)
    assert seen.pop("before") == "ok"  # unshare(0) is a harmless no-op without the filter
    assert seen.pop("report") == {
        "seccomp": f"filter loaded: {len(DAEMON_POLICY.refused())} system calls refused",
        "seccomp_probe": "unshare(0) refused: EPERM",
    }
    assert seen.pop("status") == {"Seccomp": "2", "Seccomp_filters": "1"}
    assert seen.pop("unix") == "ping"
    assert seen.pop("thread") == ["thread"]
    assert seen.pop("sqlite") == 1
    assert set(seen.values()) == {"EPERM"}, seen


@x86_64_only
def test_the_filter_loads_where_systemd_refuses_the_seccomp_call() -> None:
    # @system-service lacks seccomp(2): the relay compiles its filter anyway and
    # loads it with prctl, on top of the service manager's.
    seen = run_child("""
        load_filter(compile_filter(
            SyscallPolicy(denied=("seccomp",), unsupported=(), namespace_clones=False)))
        seen = {"seccomp(2)": call("seccomp", 0, 1, None)}  # SECCOMP_SET_MODE_STRICT, bad flags
        seen["report"] = DaemonFilter().enforce()
        seen["status"] = status()
        print(json.dumps(seen))
    """)
    assert seen["seccomp(2)"] == "EPERM"
    assert seen["report"] == {
        "seccomp": f"filter loaded: {len(DAEMON_POLICY.refused())} system calls refused",
        "seccomp_probe": "unshare(0) refused: EPERM",
    }
    assert seen["status"] == {"Seccomp": "2", "Seccomp_filters": "2"}


def test_uvloop_keeps_working_when_io_uring_is_refused_before_the_loop() -> None:
    pytest.importorskip("uvloop")
    seen = run_child("""
        import asyncio, uvloop
        refuse_io_uring()
        async def main():
            rings = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                     if os.path.exists(f"/proc/self/fd/{fd}")]
            report = DaemonFilter().enforce()
            loop = asyncio.get_running_loop()
            r, w = os.pipe()
            got = loop.create_future()
            loop.add_reader(r, lambda: got.set_result(os.read(r, 4)))
            os.write(w, b"tick")
            data = await asyncio.wait_for(got, 5)
            await asyncio.sleep(0.01)
            done = await loop.run_in_executor(None, lambda: "executor")
            return {"rings": [x for x in rings if "io_uring" in x], "read": data.decode(),
                    "executor": done, "probe": report["seccomp_probe"]}
        print(json.dumps(uvloop.run(main())))
    """)
    assert seen == {
        "rings": [],
        "read": "tick",
        "executor": "executor",
        "probe": "unshare(0) refused: EPERM",
    }


def test_a_loop_that_already_holds_an_io_uring_is_refused_at_start_not_later() -> None:
    # libuv aborts the process when a ring it made is cut off under it.
    uvloop = pytest.importorskip("uvloop")
    del uvloop
    seen = run_child("""
        import asyncio, uvloop
        async def main():
            try:
                DaemonFilter()
            except Exception as exc:
                return {"error": str(exc), "kind": type(exc).__name__}
            return {"error": None, "kind": None}
        print(json.dumps(uvloop.run(main())))
    """)
    if seen["error"] is None:
        pytest.skip("libuv made no io_uring here (kernel or libuv without it)")
    assert seen["kind"] == "SeccompError"
    assert "refuse_io_uring() before the loop starts" in str(seen["error"])


def test_a_filter_that_lets_the_probe_through_fails_start_up() -> None:
    seen = run_child("""
        lax = SyscallPolicy(denied=("kexec_load",))
        try:
            DaemonFilter(lax).enforce()
        except Exception as exc:
            print(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
    """)
    assert seen == {
        "error": "seccomp filter loaded but unshare(0) succeeded",
        "kind": "SeccompError",
    }


def test_loading_needs_a_single_thread() -> None:
    seen = run_child("""
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait)
        worker.start()
        try:
            load_filter(compile_filter(SyscallPolicy(denied=("kexec_load",))))
        except Exception as exc:
            seen = {"kind": type(exc).__name__, "error": str(exc), "status": status()}
        stop.set()
        worker.join()
        print(json.dumps(seen))
    """)
    assert seen["kind"] == "PrivilegeError"  # from require_single_thread
    assert "threads running" in str(seen["error"])
    assert seen["status"] == {"Seccomp": "0", "Seccomp_filters": "0"}


def test_without_libseccomp_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(seccomp, "LIBSECCOMP", "libseccomp-not-here.so.9")
    seccomp.libseccomp.cache_clear()
    try:
        with pytest.raises(SeccompError, match="apt-get install libseccomp2"):
            compile_filter(DAEMON_POLICY)
    finally:
        seccomp.libseccomp.cache_clear()


def test_every_named_call_is_known_to_libseccomp() -> None:
    # A misspelt name would be skipped silently as "not on this architecture".
    must_resolve = {
        "ptrace", "mount", "umount2", "kexec_load", "bpf", "perf_event_open", "keyctl",
        "add_key", "request_key", "unshare", "setns", "process_vm_readv", "process_vm_writev",
        "personality", "execve", "init_module", "userfaultfd", "io_uring_setup", "clone3",
    }  # fmt: skip
    assert must_resolve <= set(DAEMON_POLICY.denied + DAEMON_POLICY.unsupported)
    for name in must_resolve:
        assert syscall_number(name) is not None, name
    arch_specific = {"iopl", "ioperm", "_sysctl", "nfsservctl", "uselib", "ustat", "sysfs"}
    for name in set(DAEMON_POLICY.denied) | set(SANDBOX_POLICY.denied):
        assert syscall_number(name) is not None or name in arch_specific, name


def test_the_sandbox_program_is_whole_bpf_and_readable_from_its_descriptor() -> None:
    import os

    program = sandbox_filter()
    assert program and len(program) % BPF_INSTRUCTION == 0
    assert len(program) // BPF_INSTRUCTION < 4096  # the kernel's BPF_MAXINSNS
    fd = sandbox_filter_fd()
    try:
        assert os.read(fd, len(program) + 1) == program
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)
    printed = subprocess.run(
        [sys.executable, "-m", "ccc_relay.containers.seccomp"], capture_output=True, check=True
    )
    assert printed.stdout == program


def test_the_sandbox_keeps_what_agents_need_and_the_relay_does_not() -> None:
    # Agents run programs, open network sockets in their own namespace and may query
    # their personality; the relay does none of that.
    for name in ("execve", "execveat", "personality"):
        assert name in DAEMON_POLICY.denied and name not in SANDBOX_POLICY.denied
    assert SANDBOX_POLICY.personality_query_only and SANDBOX_POLICY.socket_family is None
    assert DAEMON_POLICY.socket_family == 1  # AF_UNIX
