"""Dropping root for good, proved in child processes with a throwaway user and groups."""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ccc_relay.daemon.privileges import (
    PrivilegeError,
    describe_missing,
    drop_privileges,
    root_check,
    sudo,
)

NOBODY = "nobody"
MISSING_USER = "ccc-test-nosuch-user"
MISSING_GROUP = "ccc-test-nosuch-group"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="creating a user and dropping to it needs root and useradd",
)


@dataclass(frozen=True)
class Account:
    user: str
    uid: int
    gid: int
    member_of: str  # a supplementary group the user belongs to
    socket_group: str  # a group the user does not belong to
    socket_gid: int


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating a user and dropping to it needs root and useradd")
    suffix = secrets.token_hex(3)
    user, member_of, socket_group = (f"ccc-test-{kind}{suffix}" for kind in "umg")
    created_groups: list[str] = []
    try:
        for group in (member_of, socket_group):
            subprocess.run(["groupadd", "--system", group], check=True)
            created_groups.append(group)
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--groups",
                member_of,
                user,
            ],
            check=True,
        )
        entry = pwd.getpwnam(user)
        yield Account(
            user=user,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            member_of=member_of,
            socket_group=socket_group,
            socket_gid=grp.getgrnam(socket_group).gr_gid,
        )
    finally:
        subprocess.run(["userdel", user], check=False, capture_output=True)
        for group in (*created_groups, user):
            subprocess.run(["groupdel", group], check=False, capture_output=True)


# Everything the child needs after the drop is imported before it: the
# interpreter may live where the unprivileged user cannot read.
PROBE = """
    import ctypes, json, os, sys
    from ccc_relay.daemon.privileges import PrivilegeError, drop_privileges

    def attempt(call, *args):
        try:
            call(*args)
        except PermissionError:
            return "refused"
        return "succeeded"

    def probe(secret):
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/self/status", "rb") as f:  # text mode would import a codec
            status = dict(line.decode().split(":", 1) for line in f.read().splitlines())
        return {
            "uids": os.getresuid(),
            "gids": os.getresgid(),
            "groups": sorted(os.getgroups()),
            "setuid0": attempt(os.setuid, 0),
            "setresuid0": attempt(os.setresuid, 0, 0, 0),
            "setgid0": attempt(os.setgid, 0),
            "read_secret": attempt(open, secret),
            "no_new_privs": status["NoNewPrivs"].strip(),
            "cap_eff": status["CapEff"].strip(),
            "cap_prm": status["CapPrm"].strip(),
            "dumpable": libc.prctl(3, 0, 0, 0, 0),
        }
"""


def run_child(code: str, *args: str) -> dict[str, object]:
    """Run PROBE then ``code`` in a fresh interpreter; the code prints one JSON object last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE) + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


@needs_root
def test_drop_as_root_gives_up_every_id_for_good(account: Account, tmp_path: Path) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("s")
    secret.chmod(0o600)
    code = """
    drop_privileges(sys.argv[1], group=sys.argv[2])
    print(json.dumps(probe(sys.argv[3])))
    """
    got = run_child(code, account.user, account.socket_group, str(secret))
    member_gid = grp.getgrnam(account.member_of).gr_gid
    assert got["uids"] == [account.uid] * 3
    assert got["gids"] == [account.gid] * 3
    assert got["groups"] == sorted({account.gid, member_gid, account.socket_gid})
    assert got["setuid0"] == "refused"
    assert got["setresuid0"] == "refused"
    assert got["setgid0"] == "refused"
    assert got["read_secret"] == "refused"
    assert got["no_new_privs"] == "1"
    assert int(str(got["cap_eff"]), 16) == 0
    assert int(str(got["cap_prm"]), 16) == 0
    assert got["dumpable"] == 0


@needs_root
def test_drop_without_socket_group_keeps_only_the_users_groups(account: Account) -> None:
    code = """
    drop_privileges(sys.argv[1])
    print(json.dumps(probe("/etc/shadow")))
    """
    got = run_child(code, account.user)
    assert got["groups"] == sorted({account.gid, grp.getgrnam(account.member_of).gr_gid})
    assert got["uids"] == [account.uid] * 3


@needs_root
def test_drop_refuses_while_another_thread_runs(account: Account) -> None:
    code = """
    import threading
    stop = threading.Event()
    threading.Thread(target=stop.wait).start()
    try:
        drop_privileges(sys.argv[1])
        error = None
    except PrivilegeError as exc:
        error = str(exc)
    stop.set()
    print(json.dumps({"error": error, "uids": os.getresuid()}))
    """
    got = run_child(code, account.user)
    assert "2 threads" in str(got["error"])
    assert got["uids"] == [0, 0, 0]  # nothing was changed


@needs_root
def test_already_the_user_only_checks_and_hardens(account: Account) -> None:
    code = """
    u = int(sys.argv[2]); g = int(sys.argv[3])
    os.setgroups([g]); os.setresgid(g, g, g); os.setresuid(u, u, u)
    drop_privileges(sys.argv[1])
    result = probe("/etc/shadow")
    try:
        drop_privileges("nobody")
        result["other"] = None
    except PrivilegeError as exc:
        result["other"] = str(exc)
    print(json.dumps(result))
    """
    got = run_child(code, account.user, str(account.uid), str(account.gid))
    assert got["uids"] == [account.uid] * 3
    assert got["no_new_privs"] == "1"
    assert got["dumpable"] == 0
    assert "start the relay as root so it can drop to 'nobody', or as 'nobody'" in str(got["other"])


def test_drop_to_a_missing_user_says_how_to_create_it() -> None:
    with pytest.raises(PrivilegeError, match="useradd --system --no-create-home"):
        drop_privileges(MISSING_USER)


def test_drop_to_root_is_refused() -> None:
    with pytest.raises(PrivilegeError, match="is root"):
        drop_privileges("root")


@needs_root
def test_drop_with_a_missing_socket_group_says_how_to_create_it(account: Account) -> None:
    code = """
    try:
        drop_privileges(sys.argv[1], group=sys.argv[2])
        error = None
    except PrivilegeError as exc:
        error = str(exc)
    print(json.dumps({"error": error, "uids": os.getresuid()}))
    """
    got = run_child(code, account.user, MISSING_GROUP)
    assert f"groupadd --system {MISSING_GROUP}" in str(got["error"])
    assert got["uids"] == [0, 0, 0]


# --- root_check -------------------------------------------------------------


def test_root_without_user_is_refused_with_both_fixes() -> None:
    with pytest.raises(PrivilegeError) as info:
        root_check(None, allow_root=False, euid=0)
    assert "set daemon.user" in str(info.value)
    assert "--allow-root" in str(info.value)


def test_root_without_user_runs_when_allowed() -> None:
    root_check(None, allow_root=True, euid=0)


def test_root_with_a_user_to_drop_to_runs() -> None:
    root_check(NOBODY, allow_root=False, euid=0)


def test_root_as_the_configured_user_counts_as_root() -> None:
    with pytest.raises(PrivilegeError, match="--allow-root"):
        root_check("root", allow_root=False, euid=0)


def test_root_with_a_missing_user_says_how_to_create_it() -> None:
    with pytest.raises(PrivilegeError, match=f"nologin {MISSING_USER}"):
        root_check(MISSING_USER, allow_root=False, euid=0)


def test_non_root_as_another_user_says_how_to_start_it() -> None:
    nobody = pwd.getpwnam(NOBODY).pw_uid
    with pytest.raises(PrivilegeError) as info:
        root_check("root", allow_root=False, euid=nobody)
    assert "start it as root so it can drop to 'root', or as 'root'" in str(info.value)


def test_non_root_as_the_configured_user_runs() -> None:
    root_check(NOBODY, allow_root=False, euid=pwd.getpwnam(NOBODY).pw_uid)


def test_non_root_without_a_user_runs() -> None:
    root_check(None, allow_root=False, euid=pwd.getpwnam(NOBODY).pw_uid)


# --- describe_missing ---------------------------------------------------------


def test_missing_user_and_group_each_get_a_command() -> None:
    nobody = pwd.getpwnam(NOBODY).pw_uid
    sentences = describe_missing(MISSING_USER, MISSING_GROUP, euid=nobody)
    text = "\n".join(sentences)
    assert (
        f"{sudo()}useradd --system --no-create-home --shell /usr/sbin/nologin {MISSING_USER}"
        in text
    )
    assert f"{sudo()}groupadd --system {MISSING_GROUP}" in text
    assert f"{sudo()}usermod --append --groups {MISSING_GROUP} {MISSING_USER}" in text
    assert len(sentences) == 3
    # Root starts the relay, which keeps the group when it drops: no membership needed.
    assert len(describe_missing(MISSING_USER, MISSING_GROUP, euid=0)) == 2


@needs_root
def test_a_user_outside_the_group_is_told_how_to_join(account: Account) -> None:
    # Started as that user, the relay must be in the group to give it its sockets.
    assert describe_missing(account.user, account.socket_group, euid=account.uid) == [
        f"user {account.user!r} is not in group {account.socket_group!r}; add it with: "
        f"usermod --append --groups {account.socket_group} {account.user}"  # root: no sudo
    ]
    # Started as root, it drops to the user keeping the group: nothing to add.
    assert describe_missing(account.user, account.socket_group, euid=0) == []


@needs_root
def test_nothing_missing_means_no_sentences(account: Account) -> None:
    assert describe_missing(account.user, account.member_of) == []
    assert describe_missing(account.user, None) == []
    assert describe_missing(None, None) == []


def test_numeric_ids_are_accepted() -> None:
    assert describe_missing(str(pwd.getpwnam(NOBODY).pw_uid), None) == []


def test_printed_fixes_say_sudo_only_to_someone_who_is_not_root() -> None:
    said = describe_missing(MISSING_USER, None)[0]
    assert said.endswith(f"create it with: {sudo()}useradd --system --no-create-home "
                         f"--shell /usr/sbin/nologin {MISSING_USER}")  # fmt: skip
    assert sudo() == ("" if os.geteuid() == 0 else "sudo ")
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return
    # The same check as an unprivileged user: the fix now starts with sudo.
    nobody = pwd.getpwnam(NOBODY)
    probe = "from ccc_relay.daemon.privileges import describe_missing as d; print(d(%r, None)[0])"
    result = subprocess.run(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
         "/usr/bin/python3", "-c", probe % MISSING_USER],
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if result.returncode != 0 and "Permission denied" in result.stderr:
        pytest.skip("the source tree is not readable by nobody")
    assert result.returncode == 0, result.stderr
    assert "create it with: sudo useradd --system" in result.stdout
