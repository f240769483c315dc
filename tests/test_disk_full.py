"""A full disk, made for the test: a size-limited tmpfs under the relay's state.

New sends get ``unavailable``, nothing unstored is acknowledged, and the relay
accepts again by itself once space returns.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ccc_relay.audit.verify import verify_log
from ccc_relay.client import RelayError
from ccc_relay.daemon import committer as committer_module
from tests.support import make_config, start_relay

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mount = Path(f"/tmp/ccc-disk-{os.getpid()}")
    mount.mkdir(mode=0o700, exist_ok=True)
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        with contextlib.suppress(OSError):
            mount.rmdir()


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem is full."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)


def eventually(fn: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except RelayError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_full_disk_refuses_sends_and_the_relay_recovers_by_itself(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_module, "RECOVERY_RETRY_MIN", 0.2)
    monkeypatch.setattr(committer_module, "RECOVERY_RETRY_MAX", 0.5)
    state = small_disk / "state"
    state.mkdir(mode=0o700)
    relay = start_relay(make_config(state))
    try:
        alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
        relay.allow("alice", "bob")
        a = relay.client(alice)
        before = a.send("bob", "before the disk filled")
        ballast = small_disk / "ballast"
        fill(ballast)
        with pytest.raises(RelayError) as caught:
            a.send("bob", "x" * 200_000)  # cannot be stored
        assert caught.value.code == "unavailable"
        assert relay.admin.request("status")["accepting"] is False
        ballast.unlink()
        after = eventually(lambda: a.send("bob", "after space returned"))
        assert relay.admin.request("status")["accepting"] is True
        a.close()
        with relay.client(bob) as b:
            bodies = [m.body for m in b.inbox()]
        assert bodies == ["before the disk filled", "after space returned"]
        assert before.id != after.id
    finally:
        relay.stop()
    report = verify_log(relay.config.audit.log_path)
    assert report.ok, report
    events = [
        line
        for path in sorted(relay.config.audit.log_path.iterdir())
        for line in path.read_text().splitlines()
    ]
    assert any('"event":"store_recovered"' in line for line in events)
    assert not any('"x' * 3 in line for line in events)  # the unstored body was never logged
