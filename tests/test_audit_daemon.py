"""The running relay keeps its audit log: retention at start, signed checkpoints, verify.

The clock is injected: the second relay "starts" 31 days after the first, and
its start-up retention must cut the old day's file while the chain still
verifies, across the restart, with the checkpoint signatures checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from ccc_relay.audit.files import audit_files
from tests.support import FakeClock, run_cli
from tests.test_relay import audit_lines, wait_for

DAY = 86400.0


def verify(state: Path, *args: str):
    return run_cli(
        "ccc", "audit", "verify", *args, env={"CCC_CACHE_DIR": str(state), "CCC_CONFIG": ""}
    )


def test_retention_cuts_old_days_and_the_chain_still_verifies(
    relay_factory, state_dir: Path
) -> None:
    clock = FakeClock(1_790_000_000.0)
    relay = relay_factory(clock=clock)
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        a.send("bob", "day one")
    relay.stop()
    first_files = audit_files(relay.config.audit.log_path)
    assert len(first_files) == 1
    lines = [json.loads(x) for x in first_files[0].read_text().splitlines()]
    # A run ends with a signed checkpoint, then a seal over it.
    assert [x["event"] for x in lines[-2:]] == ["checkpoint", "seal"]

    clock.advance(31 * DAY)
    relay = relay_factory(clock=clock)
    wait_for(lambda: first_files[0] not in audit_files(relay.config.audit.log_path))
    assert any(x["event"] == "retention_cut" for x in audit_lines(relay))
    with relay.client(alice) as a:
        a.send("bob", "a month later")
    relay.stop()

    pubkey = state_dir / "audit.pub"
    key = run_cli("ccc", "audit", "pubkey", env={"CCC_CACHE_DIR": str(state_dir), "CCC_CONFIG": ""})
    assert key.returncode == 0, key.stderr
    pubkey.write_text(key.stdout)
    result = verify(state_dir, "--pubkey", str(pubkey))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: ")


def test_an_edited_line_in_a_live_relays_log_is_named(relay_factory, state_dir: Path) -> None:
    relay = relay_factory()
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        a.send("bob", "pay 10 dollars")
    relay.stop()
    [path] = audit_files(relay.config.audit.log_path)
    path.write_text(path.read_text().replace("pay 10 dollars", "pay 99 dollars"))
    result = verify(state_dir)
    assert result.returncode == 1
    assert path.name in result.stdout + result.stderr
