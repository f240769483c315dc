"""Landlock confinement: real restrictions in child processes, the rest through the syscall seam."""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ccc_relay.daemon import landlock
from ccc_relay.daemon.landlock import (
    FS_IOCTL_DEV,
    FS_READ_FILE,
    FS_REFER,
    FS_TRUNCATE,
    READ_WRITE,
    LandlockError,
    LandlockSyscalls,
    handled_rights,
    restrict_to,
    ruleset_attr,
    runtime_read_paths,
)


def kernel_abi() -> int:
    try:
        return LandlockSyscalls().abi_version()
    except OSError:
        return 0


ABI = kernel_abi()
needs_landlock = pytest.mark.skipif(ABI < 1, reason="this kernel has no usable Landlock")


CHILD = """
    import json, os, signal, socket, sys
    from pathlib import Path
    from ccc_relay.daemon.landlock import LandlockError, restrict_to

    def attempt(call, *args):
        try:
            call(*args)
        except PermissionError:
            return "refused"
        except OSError as exc:
            return f"failed: {exc.strerror}"
        return "ok"

    def read(path):
        with open(path, "rb") as f:
            f.read()

    def write(path):
        with open(path, "wb") as f:
            f.write(b"x")
"""


def run_child(code: str, *args: str) -> dict[str, object]:
    """Run CHILD then ``code`` in a fresh interpreter (restrict_self cannot be undone).

    The code prints one JSON object last.
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD) + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


class DryRun(LandlockSyscalls):
    """The real kernel builds the ruleset; nothing is ever enforced on the test process."""

    def __init__(self, abi: int | None = None) -> None:
        super().__init__()
        self.forced_abi = abi
        self.attrs: list[bytes] = []
        self.rules: list[tuple[str, int]] = []
        self.restricted_with: int | None = None

    def abi_version(self) -> int:
        return self.forced_abi if self.forced_abi is not None else super().abi_version()

    def create_ruleset(self, attr: bytes) -> int:
        self.attrs.append(attr)
        return super().create_ruleset(attr)

    def add_rule(self, ruleset_fd: int, allowed_access: int, parent_fd: int) -> None:
        self.rules.append((os.readlink(f"/proc/self/fd/{parent_fd}"), allowed_access))
        super().add_rule(ruleset_fd, allowed_access, parent_fd)

    def set_no_new_privs(self) -> None:
        pass

    def count_threads(self) -> int:
        return 1  # the test runner's own watchdog threads are not the daemon's

    def restrict_self(self, ruleset_fd: int, flags: int) -> None:
        self.restricted_with = flags


class NoLandlock(LandlockSyscalls):
    """A kernel that answers the version query with ``errno`` and must not be asked more."""

    def __init__(self, err: int) -> None:
        super().__init__()
        self.err = err

    def abi_version(self) -> int:
        raise OSError(self.err, os.strerror(self.err))

    def create_ruleset(self, attr: bytes) -> int:
        raise AssertionError("asked to create a ruleset without Landlock")

    def restrict_self(self, ruleset_fd: int, flags: int) -> None:
        raise AssertionError("asked to restrict without Landlock")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    allowed = tmp_path / "allowed"
    other = tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    (other / "secret").write_text("not for the daemon")
    return allowed, other


@needs_landlock
def test_confined_process_reaches_only_its_directories(dirs: tuple[Path, Path]) -> None:
    allowed, other = dirs
    code = """
    allowed, other = Path(sys.argv[1]), Path(sys.argv[2])
    status = restrict_to([allowed])
    result = {"enforced": status.enforced, "abi": status.abi, "message": status.message}
    result["write"] = attempt(write, allowed / "db")
    result["read"] = attempt(read, allowed / "db")
    result["mkdir"] = attempt(os.mkdir, allowed / "sub")
    result["rename"] = attempt(os.rename, allowed / "db", allowed / "sub" / "db")
    result["unlink"] = attempt(os.unlink, allowed / "sub" / "db")
    result["etc_hostname"] = attempt(read, "/etc/hostname")
    result["etc_passwd"] = attempt(read, "/etc/passwd")
    result["other_read"] = attempt(read, other / "secret")
    result["other_write"] = attempt(write, other / "new")
    result["prefix_write"] = attempt(write, Path(sys.prefix) / "ccc-test-landlock")
    # Lazy imports keep working: pure Python and a C extension not loaded yet.
    import xml.dom.minidom, _bz2
    result["lazy_imports"] = xml.dom.minidom.parseString("<a/>").documentElement.tagName
    print(json.dumps(result))
    """
    got = run_child(code, str(allowed), str(other))
    assert got["enforced"] is True
    assert got["abi"] == ABI
    assert str(got["message"]).startswith(f"Landlock enforced (ABI {ABI})")
    for action in ("write", "read", "mkdir", "rename", "unlink"):
        assert got[action] == "ok", action
    for action in ("etc_hostname", "etc_passwd", "other_read", "other_write", "prefix_write"):
        assert got[action] == "refused", action
    assert got["lazy_imports"] == "a"
    assert not (Path(sys.prefix) / "ccc-test-landlock").exists()


@needs_landlock
def test_read_only_paths_can_be_read_but_not_written(dirs: tuple[Path, Path]) -> None:
    allowed, other = dirs
    code = """
    allowed, other = Path(sys.argv[1]), Path(sys.argv[2])
    restrict_to([allowed], [other])
    print(json.dumps({
        "read": attempt(read, other / "secret"),
        "write": attempt(write, other / "secret"),
        "create": attempt(write, other / "new"),
    }))
    """
    got = run_child(code, str(allowed), str(other))
    assert got == {"read": "ok", "write": "refused", "create": "refused"}


@pytest.mark.skipif(ABI < 4, reason="Landlock before ABI 4 does not handle TCP")
def test_confined_process_cannot_open_tcp(dirs: tuple[Path, Path]) -> None:
    code = """
    restrict_to([Path(sys.argv[1])])
    s = socket.socket()
    # Refused by Landlock before any packet could leave; nothing listens there.
    print(json.dumps({"connect": attempt(s.connect, ("127.0.0.1", 9))}))
    """
    assert run_child(code, str(dirs[0])) == {"connect": "refused"}


@pytest.mark.skipif(ABI < 6, reason="Landlock before ABI 6 does not scope sockets and signals")
def test_abstract_sockets_and_signals_outside_are_refused(dirs: tuple[Path, Path]) -> None:
    name = f"ccc-test-{secrets.token_hex(4)}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    victim = subprocess.Popen(["sleep", "60"])
    try:
        listener.bind("\0" + name)
        listener.listen(1)
        code = """
        restrict_to([Path(sys.argv[1])])
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        print(json.dumps({
            "abstract": attempt(s.connect, "\\0" + sys.argv[2]),
            "signal": attempt(os.kill, int(sys.argv[3]), signal.SIGTERM),
        }))
        """
        got = run_child(code, str(dirs[0]), name, str(victim.pid))
        assert got == {"abstract": "refused", "signal": "refused"}
        assert victim.poll() is None
    finally:
        listener.close()
        victim.kill()
        victim.wait()


@needs_landlock
def test_other_threads_block_confinement_before_abi_8(dirs: tuple[Path, Path]) -> None:
    code = """
    import threading
    stop = threading.Event()
    threading.Thread(target=stop.wait).start()
    try:
        status = restrict_to([Path(sys.argv[1])])
        result = {"error": None, "enforced": status.enforced}
    except LandlockError as exc:
        result = {"error": str(exc)}
    stop.set()
    result["etc"] = attempt(read, "/etc/passwd")
    print(json.dumps(result))
    """
    got = run_child(code, str(dirs[0]))
    if ABI >= 8:
        assert got == {"error": None, "enforced": True, "etc": "refused"}
    else:
        assert "2 threads" in str(got["error"])
        assert got["etc"] == "ok"  # nothing was enforced


# --- without Landlock -----------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "why"),
    [
        (errno.ENOSYS, "the kernel has no Landlock system calls"),
        (errno.EOPNOTSUPP, "add landlock to the lsm= kernel parameter"),
        (errno.EPERM, "a seccomp filter refuses the Landlock system calls"),
    ],
)
def test_missing_landlock_is_a_status_not_an_error(
    err: int, why: str, dirs: tuple[Path, Path]
) -> None:
    status = restrict_to([dirs[0]], syscalls=NoLandlock(err))
    assert not status.enforced
    assert status.abi == 0
    assert str(status).startswith("Landlock unavailable: ")
    assert why in str(status)


def test_unknown_architecture_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, dirs: tuple[Path, Path]
) -> None:
    monkeypatch.setattr("platform.machine", lambda: "alpha")
    status = restrict_to([dirs[0]])
    assert not status.enforced
    assert status.message == "Landlock unavailable: no Landlock syscall numbers known for alpha"


# --- the ruleset, built by the real kernel, never enforced here ---------------------


@needs_landlock
def test_rules_give_directories_read_write_and_files_file_rights(dirs: tuple[Path, Path]) -> None:
    allowed, other = dirs
    syscalls = DryRun()
    status = restrict_to([allowed], [other / "secret"], syscalls=syscalls)
    assert status.enforced
    rules = dict(syscalls.rules)
    fs, _net, _scope = handled_rights(ABI)
    assert rules[str(allowed)] == READ_WRITE & fs
    assert rules[str(other / "secret")] == FS_READ_FILE  # READ_DIR is invalid on a file
    assert str(other) not in rules
    assert syscalls.restricted_with == (landlock.LANDLOCK_RESTRICT_SELF_TSYNC if ABI >= 8 else 0)


@needs_landlock
@pytest.mark.parametrize("abi", [1, 2, 3, 4, 5, 6, 7])
def test_only_rights_the_abi_knows_are_handled(abi: int, dirs: tuple[Path, Path]) -> None:
    if abi > ABI:
        pytest.skip(f"this kernel speaks Landlock ABI {ABI}")
    syscalls = DryRun(abi)
    status = restrict_to([dirs[0]], syscalls=syscalls)
    (attr,) = syscalls.attrs
    assert len(attr) == {1: 8, 2: 8, 3: 8, 4: 16, 5: 16}.get(abi, 24)
    handled_fs = struct.unpack_from("=Q", attr)[0]
    assert bool(handled_fs & FS_REFER) == (abi >= 2)
    assert bool(handled_fs & FS_TRUNCATE) == (abi >= 3)
    assert bool(handled_fs & FS_IOCTL_DEV) == (abi >= 5)
    assert all(access & ~handled_fs == 0 for _path, access in syscalls.rules)
    assert ("TCP denied" in status.message) == (abi >= 4)
    assert ("signals scoped" in status.message) == (abi >= 6)


def test_attr_sizes_follow_the_abi() -> None:
    assert ruleset_attr(0) == struct.pack("=Q", 0)
    assert len(ruleset_attr(3)) == 8
    assert len(ruleset_attr(4)) == 16
    assert len(ruleset_attr(6)) == 24
    assert len(ruleset_attr(9)) == 24


@needs_landlock
def test_a_missing_writable_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LandlockError, match="create the directory before confining"):
        restrict_to([tmp_path / "absent"], syscalls=DryRun())


@needs_landlock
def test_a_missing_read_only_path_is_skipped(dirs: tuple[Path, Path]) -> None:
    syscalls = DryRun()
    status = restrict_to([dirs[0]], [dirs[1] / "absent"], syscalls=syscalls)
    assert status.enforced
    assert str(dirs[1] / "absent") not in dict(syscalls.rules)


# --- what Python needs ------------------------------------------------------------


def test_runtime_paths_cover_the_interpreter_but_never_root_or_cwd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", ".", "/", *sys.path])
    paths = runtime_read_paths()
    assert Path("/") not in paths
    assert not any(p == tmp_path or p in tmp_path.parents for p in paths)

    def covered(target: str) -> bool:
        resolved = Path(target).resolve()
        return any(resolved == p or p in resolved.parents for p in paths)

    for needed in (sys.prefix, sys.base_prefix, landlock.__file__, "/usr/lib"):
        assert covered(needed), needed
    # Nothing listed twice or beneath something else on the list.
    assert all(other not in p.parents for p in paths for other in paths)


def test_runtime_paths_keep_the_outermost_but_not_a_sibling_sharing_its_prefix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # "lib2" shares "lib"'s spelling but is not beneath it; "lib/a/b" is.
    for sub in ("lib/a/b", "lib2/c", "lib-old"):
        (tmp_path / sub).mkdir(parents=True)
    entries = [str(tmp_path / s) for s in ("lib2/c", "lib/a/b", "lib", "lib-old", "lib2")]
    monkeypatch.setattr(sys, "path", entries)
    paths = runtime_read_paths()
    mine = [p for p in paths if tmp_path in p.parents]
    assert mine == [tmp_path / "lib", tmp_path / "lib-old", tmp_path / "lib2"]
    assert paths == sorted(paths)
