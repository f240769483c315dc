"""Socket creation that cannot be fooled, and credential files that cannot leak."""

from __future__ import annotations

import grp
import os
import socket
import stat
from pathlib import Path

import pytest

from ccc_relay.credentials import (
    Credential,
    CredentialError,
    matches,
    read_credential_file,
    write_credential_file,
)
from ccc_relay.daemon.sockets import SocketPathError, bind_unix_socket, ensure_private_dir


def test_symlink_at_the_socket_path_is_refused_and_not_followed(state_dir: Path) -> None:
    victim = state_dir / "victim"
    victim.write_text("keep me")
    link = state_dir / "daemon.sock"
    link.symlink_to(victim)
    with pytest.raises(SocketPathError, match="symlink"):
        bind_unix_socket(link, mode=0o660)
    assert victim.read_text() == "keep me" and link.is_symlink()


def test_regular_file_at_the_socket_path_is_refused(state_dir: Path) -> None:
    path = state_dir / "daemon.sock"
    path.write_text("not a socket")
    with pytest.raises(SocketPathError, match="not a socket"):
        bind_unix_socket(path, mode=0o660)
    assert path.read_text() == "not a socket"


def test_stale_socket_is_replaced_but_a_live_one_is_not(state_dir: Path) -> None:
    path = state_dir / "daemon.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    fresh = bind_unix_socket(path, mode=0o660)
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        with pytest.raises(SocketPathError, match="already listening"):
            bind_unix_socket(path, mode=0o660)
    finally:
        fresh.close()


def test_mode_and_group_are_set(state_dir: Path) -> None:
    group = grp.getgrgid(os.getgroups()[0] if os.getgroups() else os.getgid())
    path = state_dir / "daemon.sock"
    sock = bind_unix_socket(path, mode=0o660, group=group.gr_name)
    try:
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == group.gr_gid
    finally:
        sock.close()


def test_unknown_group_says_how_to_create_it(state_dir: Path) -> None:
    with pytest.raises(SocketPathError, match="groupadd --system ccc-no-such-group"):
        bind_unix_socket(state_dir / "s.sock", mode=0o660, group="ccc-no-such-group")


def test_state_dir_must_not_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(SocketPathError, match="symlink"):
        ensure_private_dir(tmp_path / "link")
    ensure_private_dir(tmp_path / "new" / "state")
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "state").st_mode) == 0o700


def test_credential_is_256_bits_masked_and_compared_by_hash(tmp_path: Path) -> None:
    credential = Credential.generate()
    value = credential.reveal()
    assert value.startswith("ccc1.") and len(value) == 5 + 43  # 32 bytes, base64url
    assert value not in repr(credential) and value not in str(credential)
    assert value not in f"{credential}"
    assert matches(value, credential.digest())
    assert not matches(value + "x", credential.digest())
    assert not matches(value, None)
    assert Credential.generate().reveal() != value


def test_credential_file_is_0600_and_never_written_through_a_symlink(tmp_path: Path) -> None:
    credential = Credential.generate()
    path = tmp_path / "alice.cred"
    write_credential_file(path, "alice", credential)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_credential_file(path) == ("alice", credential)
    with pytest.raises(FileExistsError):
        write_credential_file(path, "alice", Credential.generate())
    target = tmp_path / "target"
    target.write_text("x")
    link = tmp_path / "link.cred"
    link.symlink_to(target)
    with pytest.raises(OSError):  # noqa: PT011 - ELOOP or EEXIST, both refuse
        write_credential_file(link, "alice", credential)
    with pytest.raises(CredentialError):
        write_credential_file(link, "alice", credential, replace=True)
    assert target.read_text() == "x"


def test_rotating_a_credential_file_replaces_it_atomically(tmp_path: Path) -> None:
    path = tmp_path / "alice.cred"
    write_credential_file(path, "alice", Credential.generate())
    new = Credential.generate()
    write_credential_file(path, "alice", new, replace=True)
    assert read_credential_file(path)[1] == new
    assert [p.name for p in tmp_path.iterdir()] == ["alice.cred"]


@pytest.mark.parametrize("content", ["", "ccc1.short", "agent: alice\n", "garbage" * 1000])
def test_bad_credential_files_say_what_is_wrong(tmp_path: Path, content: str) -> None:
    path = tmp_path / "c"
    path.write_text(content)
    with pytest.raises(CredentialError, match=str(path)):
        read_credential_file(path)
    with pytest.raises(CredentialError, match="does not exist"):
        read_credential_file(tmp_path / "missing")
