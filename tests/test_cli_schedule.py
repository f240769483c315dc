"""``ccc send --at/--in``: a time that cannot be meant is refused, and the answer says
when the message will be delivered (docs/cli.md, "Sending later"). Against a real relay."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from ccc_relay.cli.when import delivery_words
from tests.support import run_cli
from tests.test_cli import ok

pytestmark = pytest.mark.slow


def test_at_and_in_refuse_what_cannot_be_meant_and_say_when(
    daemon: dict[str, str],
) -> None:
    env = daemon
    for name in ("alice", "bob"):
        ok("ccc", "agent", "add", name, env=env)
    ok("ccc", "allow", "alice", "bob", env=env)

    def send(*args: str) -> tuple[int, str, str]:
        done = run_cli("ccc", "--as", "alice", "send", "bob", "x", *args, env=env)
        return done.returncode, done.stdout, done.stderr

    rc, _, err = send("--at", "10")
    assert rc == 2 and "10 is not a time: a bare number is a Unix time" in err
    assert "--in 10m or --at 10m" in err
    rc, _, err = send("--at", "2020-01-01T00:00")
    assert rc == 2 and "2020-01-01T00:00 is in the past: 2020-01-01 00:00:00" in err
    assert "leave --at out to send now" in err
    rc, _, err = send("--at", "10m", "--in", "90s")
    assert rc == 2 and "give --at or --in, not both" in err
    rc, _, err = send("--at", "400d")
    assert rc == 1 and err.startswith("error: --at lies more than 30 days ahead [invalid]")
    assert "deliver_at" not in err

    rc, out, _ = send("--at", "10m")
    assert rc == 0 and out.startswith("accepted m_") and ", delivered at " in out
    assert out.rstrip().endswith(", in 10m")
    at = (datetime.now(UTC) + timedelta(days=2)).replace(second=0, microsecond=0)
    rc, out, _ = send("--at", at.strftime("%Y-%m-%dT%H:%MZ"), "--json")
    answer = json.loads(out)
    assert rc == 0 and answer["deliver_at"] == at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert datetime.fromisoformat(answer["deliver_at_local"]) == at
    rc, out, _ = send("--json")
    assert json.loads(out)["deliver_at"] is None  # at once
    # None of the scheduled ones is due; the one sent at once is.
    inbox = json.loads(ok("ccc", "--as", "bob", "inbox", "--json", env=env))["messages"]
    assert len(inbox) == 1
    # The operator sees the two that wait for their time apart from what is due.
    status = json.loads(ok("ccc", "status", "--json", env=env))
    [bob] = [a for a in status["agents"] if a["name"] == "bob"]
    assert (bob["queued"], bob["scheduled"]) == (0, 2)
    [listed] = json.loads(ok("ccc", "agent", "list", "--json", env=env))["agents"][1:]
    assert (listed["name"], listed["queued"], listed["scheduled"]) == ("bob", 0, 2)
    assert re.search(r"bob\s*│\s*no\s*│\s*0\s*│\s*2\s*│", ok("ccc", "status", env=env))
    rc, out, _ = send("--in", "0s")
    assert rc == 0 and out.startswith("accepted ") and "delivered at" in out


def test_the_delivery_time_is_local_and_utc() -> None:
    now = time.time()
    words = delivery_words(now + 3 * 3600 + 120, now=now)
    utc = datetime.fromtimestamp(now + 3 * 3600 + 120, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert words.startswith(", delivered at ") and f"({utc}), in 3h 2m" in words
    assert delivery_words(None) == ""
