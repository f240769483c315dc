"""The relay refuses a state dir that anybody else could have tampered with, and exposed keys.

The attack: a state dir made world-writable before the relay's first start, with a
``relay-signing.key`` planted in it. The relay used to reset the mode and then use
the planted key, so the planter could forge every signature it makes. Now start-up
stops with the path, the problem and the command that fixes it.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ccc_relay.audit import signing as audit_signing
from ccc_relay.daemon import signing
from ccc_relay.daemon.server import Daemon
from ccc_relay.daemon.signing import MessageKeyError, MessageSigner, public_key_of
from ccc_relay.daemon.sockets import (
    KEY_FILES,
    STATE_FILES,
    SocketPathError,
    StateDirError,
    check_private_tree,
    ensure_private_dir,
    private_roots,
)
from tests.support import RunningRelay, make_config

OTHER_UID = 4323  # an account that is not the relay's


def _pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _start(state: Path) -> None:
    """Start a relay on ``state`` and stop it once it serves; raises what start-up raises."""

    async def main() -> None:
        daemon = Daemon(make_config(state))
        run = asyncio.ensure_future(daemon.run(install_signals=False))
        ready = asyncio.ensure_future(daemon.ready.wait())
        await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED, timeout=15)
        daemon.stop()
        ready.cancel()
        await run

    asyncio.run(main())


def _plant(path: Path, *, mode: int = 0o600, uid: int | None = None) -> Path:
    path.write_bytes(_pem())
    path.chmod(mode)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def test_a_world_writable_state_dir_with_a_planted_key_is_refused(state_dir: Path) -> None:
    state_dir.chmod(0o777)
    planted = _plant(state_dir / signing.KEY_FILE)
    with pytest.raises(SocketPathError) as refused:
        _start(state_dir)
    message = str(refused.value)
    assert str(state_dir) in message
    assert "writable by its group and others" in message
    assert f"chmod 700 {state_dir}" in message
    # Nothing was bound, nothing reset: the operator sees the dir as it was.
    assert not (state_dir / "daemon.sock").exists()
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o777
    assert planted.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")


@needs_root
def test_a_key_of_another_user_is_refused_even_in_a_private_dir(state_dir: Path) -> None:
    planted = _plant(state_dir / signing.KEY_FILE, uid=OTHER_UID)
    with pytest.raises(StateDirError, match=re.escape(f"{planted} belongs to uid {OTHER_UID}")):
        _start(state_dir)


@pytest.mark.parametrize("name", KEY_FILES)
def test_a_key_others_may_read_is_refused_with_the_fix(name: str, state_dir: Path) -> None:
    key = _plant(state_dir / name, mode=0o640)
    with pytest.raises(StateDirError) as refused:
        _start(state_dir)
    assert f"{key} is open to group or others (mode 0640)" in str(refused.value)
    assert f"chmod 600 {key}" in str(refused.value)
    assert f"rm {key}" in str(refused.value)


@pytest.mark.parametrize("name", [signing.KEY_FILE, "relay.db", "relay.db-wal"])
def test_a_symlink_where_the_relay_expects_its_file_is_refused(
    name: str, state_dir: Path, tmp_path: Path
) -> None:
    target = _plant(tmp_path / "elsewhere")
    (state_dir / name).symlink_to(target)
    with pytest.raises(StateDirError, match=re.escape(f"rm {state_dir / name}")):
        _start(state_dir)


@pytest.mark.parametrize(
    ("where", "mode"),
    [("credentials", 0o770), ("audit", 0o707), ("credentials/alice.cred", 0o622)],
)
def test_anything_beneath_writable_by_others_is_refused(
    where: str, mode: int, state_dir: Path
) -> None:
    (state_dir / "credentials").mkdir(mode=0o700)
    (state_dir / "credentials" / "alice.cred").write_text("agent: alice\n")
    (state_dir / "audit").mkdir(mode=0o700)
    (state_dir / where).chmod(mode)
    with pytest.raises(StateDirError) as refused:
        _start(state_dir)
    assert f"{state_dir / where} is writable by" in str(refused.value)
    fix = "chmod 700" if where == "audit" else "chmod go-w"  # audit: the log's own dir
    assert f"{fix} {state_dir / where}" in str(refused.value)


@needs_root
def test_an_audit_file_of_another_user_is_refused(state_dir: Path) -> None:
    (state_dir / "audit").mkdir(mode=0o700)
    planted = state_dir / "audit" / "audit-2020-01-01.jsonl"
    planted.write_text("{}\n")
    os.chown(planted, OTHER_UID, OTHER_UID)
    # Root started it: the fix has no sudo in front.
    with pytest.raises(StateDirError, match=re.escape(f"fix it with: chown 0 {planted}")):
        _start(state_dir)


def test_a_state_dir_the_relay_made_passes_again_after_a_run(
    state_dir: Path, relay_factory: Callable[..., RunningRelay]
) -> None:
    first = relay_factory()
    first.add_agent("alice")  # credentials/ and a credential file, as the CLI makes them
    first.stop()
    kinds = {p.name for p in state_dir.iterdir()}
    assert {"relay.db", signing.KEY_FILE, audit_signing.KEY_FILE, "credentials"} <= kinds
    relay_factory().stop()  # the same dir, checked again, passes


@needs_root
def test_an_administrators_root_owned_credentials_dir_is_trusted_not_entered(
    tmp_path: Path,
) -> None:
    # The relay runs as OTHER_UID; root ran 'ccc agent add' and made credentials/ 0700.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, OTHER_UID, OTHER_UID)
    (state / "credentials").mkdir(mode=0o700)
    (state / "credentials" / "alice.cred").write_text("agent: alice\n")
    _plant(state / signing.KEY_FILE, uid=OTHER_UID)
    check_private_tree(state, OTHER_UID)
    # ... but the relay's own files must be the relay's, not root's.
    (state / "relay.db").write_bytes(b"")
    with pytest.raises(StateDirError, match=re.escape(f"not to uid {OTHER_UID} (the relay's)")):
        check_private_tree(state, OTHER_UID)


def test_a_fifo_where_a_key_belongs_is_refused(tmp_path: Path) -> None:
    # A FIFO would hang the relay's read of its key for ever.
    os.mkfifo(tmp_path / signing.KEY_FILE, 0o600)
    with pytest.raises(StateDirError, match="is not a regular file"):
        check_private_tree(tmp_path, os.geteuid())


def test_an_existing_group_writable_dir_is_refused_and_a_new_one_made_private(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    with pytest.raises(SocketPathError, match=re.escape(f"chmod 700 {shared}")):
        ensure_private_dir(shared)
    ensure_private_dir(tmp_path / "fresh")
    assert stat.S_IMODE(os.stat(tmp_path / "fresh").st_mode) == 0o700
    check_private_tree(tmp_path / "fresh", os.geteuid())


def test_private_roots_drop_dirs_inside_others() -> None:
    state = Path("/var/lib/ccc")
    assert private_roots(state, state / "audit", Path("/var/log/x"), state) == [
        Path("/var/lib/ccc"),
        Path("/var/log/x"),
    ]
    assert private_roots(Path("/a/b"), Path("/a/bc")) == [Path("/a/b"), Path("/a/bc")]


def test_the_checked_names_are_the_files_the_relay_opens() -> None:
    assert signing.KEY_FILE in KEY_FILES and audit_signing.KEY_FILE in KEY_FILES
    assert make_config(Path("/s")).db_path.name in STATE_FILES
    assert make_config(Path("/s")).pid_path.name in STATE_FILES
    assert {"relay.db-wal", "relay.db-shm", "relay.db-journal"} <= set(STATE_FILES)


# --- the message-signing key itself -------------------------------------------------


def test_message_key_is_created_private_and_loaded_back(tmp_path: Path) -> None:
    made = MessageSigner.load_or_create(tmp_path)
    info = os.stat(tmp_path / signing.KEY_FILE)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert MessageSigner.load_or_create(tmp_path).public_key_b64() == made.public_key_b64()
    assert public_key_of(tmp_path) == made.public_key_b64()


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o604])
def test_message_key_open_to_others_is_not_used(mode: int, tmp_path: Path) -> None:
    _plant(tmp_path / signing.KEY_FILE, mode=mode)
    with pytest.raises(MessageKeyError, match=f"mode {mode:04o}"):
        MessageSigner.load_or_create(tmp_path)


@needs_root
def test_message_key_of_another_user_is_not_used(tmp_path: Path) -> None:
    key = _plant(tmp_path / signing.KEY_FILE, uid=OTHER_UID)
    with pytest.raises(MessageKeyError, match=re.escape(f"{key} belongs to uid {OTHER_UID}")):
        MessageSigner.load_or_create(tmp_path)
    # 'ccc-statusd pubkey' run by root reads the key of the user owning the state dir.
    os.chown(tmp_path, OTHER_UID, OTHER_UID)
    assert public_key_of(tmp_path)


def test_message_key_through_a_symlink_is_not_followed(tmp_path: Path) -> None:
    real = _plant(tmp_path / "real.key")
    (tmp_path / signing.KEY_FILE).symlink_to(real)
    with pytest.raises(MessageKeyError, match="is a symlink"):
        MessageSigner.load_or_create(tmp_path)
