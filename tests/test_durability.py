"""Durability across a SIGKILL: every accepted message is delivered, once.

The daemon runs as a real subprocess (``ccc-statusd start``); the test kills
it with SIGKILL right after the last ``accepted`` arrived, starts it again on
the same state dir and drains the queue.
"""

from __future__ import annotations

import signal
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


def test_sigkill_right_after_accept_loses_nothing(state_dir: Path) -> None:
    proc = start_daemon(state_dir)
    try:
        admin = AdminClient(state_dir / "admin.sock")
        creds = {name: Credential.generate() for name in ("alice", "bob")}
        for name, cred in creds.items():
            admin.request("agent_add", name=name, cred_hash=cred.digest())
        admin.request("allow", sender="alice", recipient="bob")
        alice = Endpoint(state_dir / "daemon.sock", "alice", creds["alice"])
        bob = Endpoint(state_dir / "daemon.sock", "bob", creds["bob"])
        with RelayClient(alice) as a:
            accepted = [a.send("bob", f"message {i}").id for i in range(300)]
            proc.send_signal(signal.SIGKILL)  # no chance to flush anything
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr:
            proc.stderr.close()
    (state_dir / "daemon.pid").unlink()  # a SIGKILLed daemon cannot remove it

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
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
