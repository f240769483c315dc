"""Durability across a SIGKILL: every accepted message is delivered, once.

The daemon runs as a real subprocess (``ccc-statusd start``); the test kills
it with SIGKILL right after the last ``accepted`` arrived, starts it again on
the same state dir and drains the queue.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from ccc_relay.client import AdminClient, RelayClient
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.credentials import Credential
from tests.support import BIN

pytestmark = pytest.mark.slow


def start_daemon(state: Path) -> subprocess.Popen[bytes]:
    config = state / "relay.yaml"
    config.write_text(
        f"daemon:\n  state_dir: {state}\n  security:\n    rate_limit: 100000 msg/min/session\n"
    )
    proc = subprocess.Popen(
        [str(BIN / "ccc-statusd"), "start", "--allow-root", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not (state / "daemon.pid").exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "daemon did not start"
        time.sleep(0.02)
    return proc


def verify_audit(state: Path) -> str:
    """``ccc audit verify`` on ``state``'s log: its output; AssertionError when it fails."""
    result = subprocess.run(
        [str(BIN / "ccc"), "audit", "verify", "--config", str(state / "relay.yaml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stderr:
        proc.stderr.close()


def send_then_sigkill(state: Path, count: int) -> tuple[list[str], Endpoint]:
    """Start a daemon, have alice send ``count`` messages to bob one by one, and
    SIGKILL it right after the last ``accepted``. Returns the accepted ids and
    bob's endpoint."""
    proc = start_daemon(state)
    try:
        admin = AdminClient(state / "admin.sock")
        creds = {name: Credential.generate() for name in ("alice", "bob")}
        for name, cred in creds.items():
            admin.request("agent_add", name=name, cred_hash=cred.digest())
        admin.request("allow", sender="alice", recipient="bob")
        with RelayClient(Endpoint(state / "daemon.sock", "alice", creds["alice"])) as a:
            accepted = [a.send("bob", f"message {i}").id for i in range(count)]
            proc.send_signal(signal.SIGKILL)  # no chance to flush anything
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr:
            proc.stderr.close()
    (state / "daemon.pid").unlink()  # a SIGKILLed daemon cannot remove it
    return accepted, Endpoint(state / "daemon.sock", "bob", creds["bob"])


def test_sigkill_right_after_accept_loses_nothing(state_dir: Path) -> None:
    accepted, bob = send_then_sigkill(state_dir, 300)
    proc = start_daemon(state_dir)
    try:
        received: list[str] = []
        with RelayClient(bob) as b:
            while batch := b.inbox(limit=128):
                received += [m.id for m in batch]
        assert received == accepted  # all of them, in order, each once
        with RelayClient(bob) as b:
            assert b.inbox() == []
    finally:
        stop_daemon(proc)


def test_audit_lines_a_power_cut_kept_from_the_files_come_back_from_relay_db(
    state_dir: Path,
) -> None:
    """A small batch's audit lines are committed to relay.db's outbox with the
    batch and reach their file's disk blocks only at the next audit fsync. A
    power cut in between loses the file's tail (simulated: cut after the
    SIGKILL); the next start writes it back from the outbox and the chain
    verifies."""
    accepted, _bob = send_then_sigkill(state_dir, 50)  # one send at a time: small batches

    db = sqlite3.connect(state_dir / "relay.db")
    outbox = db.execute("SELECT seq, line FROM audit_outbox ORDER BY seq").fetchall()
    db.close()
    [path] = sorted((state_dir / "audit").glob("audit-*.jsonl"))
    lines = path.read_bytes().splitlines(keepends=True)
    # The outbox holds the lines since the last background fsync of the file
    # (every AUDIT_SYNC_EVERY): how many depends on when that last ran, but the
    # last send's line is always among them.
    assert outbox and bytes(outbox[-1][1]) + b"\n" == lines[-1]
    first_lost = outbox[len(outbox) // 2][0]  # keep half of what the outbox holds
    path.write_bytes(b"".join(lines[: first_lost - 1]) + lines[first_lost - 1][:7])
    # Before the restart, verify finds the missing tail in relay.db, not a cut.
    assert "in relay.db's audit outbox" in verify_audit(state_dir)
    db = sqlite3.connect(state_dir / "relay.db")
    db.execute("DELETE FROM audit_outbox WHERE seq = ?", (outbox[-1][0],))
    db.commit()
    db.close()
    with pytest.raises(AssertionError, match=r"FAIL: .*truncated"):
        verify_audit(state_dir)  # with a line of the outbox gone too, it is one
    db = sqlite3.connect(state_dir / "relay.db")
    seq, line = outbox[-1]
    db.execute("INSERT INTO audit_outbox VALUES (?, ?, ?)", (seq, path.name, line))
    db.commit()
    db.close()

    stop_daemon(start_daemon(state_dir))
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    ids = {r["id"] for r in records if r["event"] == "accepted"}
    assert ids == set(accepted)
    [restored] = [r for r in records if r["event"] == "audit_lines_restored"]
    assert (restored["first_seq"], restored["last_seq"]) == (first_lost, outbox[-1][0])
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert "outbox" not in verify_audit(state_dir)
    db = sqlite3.connect(state_dir / "relay.db")
    assert db.execute("SELECT COUNT(*) FROM audit_outbox").fetchone()[0] == 0
    db.close()
