"""The durable floor the benchmark measures ccc-relay against keeps its promise.

The floor (``benchmarks/baseline_store.py``) is only a fair floor if it really
is durable: a message is in the SQLite file before anyone is told of it, and
its row goes when it is acked. These run it in-process, on a real file, and
read that file from a second connection, as a restarted relay would.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from benchmarks import report
from benchmarks.baseline_relay import BaselineClient, serve
from benchmarks.baseline_store import Batch, DurableQueue
from benchmarks.report import Row


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT id, recipient, sender, body FROM messages ORDER BY id").fetchall()


def test_a_batch_is_in_the_file_before_it_is_reported_and_gone_once_acked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "floor.db"
    seen: list[tuple[Batch, list[tuple[Any, ...]]]] = []

    async def scenario() -> None:
        done = asyncio.Event()

        def committed(batch: Batch) -> None:
            seen.append((batch, _rows(path)))  # what a second reader finds at that moment
            if sum(len(b) for b, _ in seen) == 3:
                done.set()

        queue = DurableQueue(path, committed)
        queue.add("alice", "bob", "one", "after-1")
        queue.add("alice", "bob", "two", "after-2")
        queue.add("carol", "bob", "three", "after-3")
        await asyncio.wait_for(done.wait(), 10)
        queue.ack([1, 3])
        for _ in range(200):  # the ack rides a commit of its own; nobody waits for it
            await asyncio.sleep(0.01)
            if len(_rows(path)) == 1:
                break
        queue.close()

    asyncio.run(scenario())
    reported = [(row, after) for batch, _ in seen for row, after in batch]
    assert reported == [
        ((1, "bob", "alice", "one"), "after-1"),
        ((2, "bob", "alice", "two"), "after-2"),
        ((3, "bob", "carol", "three"), "after-3"),
    ]
    for batch, on_disk in seen:
        assert {row for row, _ in batch} <= set(on_disk)
    assert _rows(path) == [(2, "bob", "alice", "two")]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_the_floor_relay_answers_after_storing_and_deletes_what_the_recipient_acked(
    tmp_path: Path,
) -> None:
    path, sock = tmp_path / "floor.db", tmp_path / "floor.sock"

    async def scenario() -> list[str]:
        ready = asyncio.Event()
        server = asyncio.ensure_future(serve(sock, ready.set, durable=path))
        await asyncio.wait_for(ready.wait(), 10)
        sender = await BaselineClient.connect(str(sock), "alice")
        for body in ("first", "second"):
            sender.send("bob", body)
        await asyncio.wait_for(sender.wait_acked(2), 10)
        # bob is offline: both answered, so both are in the file.
        assert [r[3] for r in _rows(path)] == ["first", "second"]
        got: list[str] = []
        receiver = await BaselineClient.connect(str(sock), "bob", got.append)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(got) == 2 and not _rows(path):
                break
        await sender.close()
        await receiver.close()
        server.cancel()
        return got

    assert asyncio.run(scenario()) == ["first", "second"]
    assert _rows(path) == []


def test_the_floor_with_checks_sanitises_and_chains_an_audit_line_per_message(
    tmp_path: Path,
) -> None:
    from ccc_relay.audit.files import audit_files, decode_line
    from ccc_relay.audit.verify import verify_log
    from ccc_relay.policy.sanitize import SanitizeOptions

    path, sock, audit = tmp_path / "floor.db", tmp_path / "floor.sock", tmp_path / "audit"
    token = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    hostile = f"\x1b[31mred\x1b[0m and a token {token}"

    async def scenario() -> list[str]:
        ready = asyncio.Event()
        server = asyncio.ensure_future(serve(sock, ready.set, durable=path, audit_dir=audit,
                                             sanitizing=SanitizeOptions()))  # fmt: skip
        await asyncio.wait_for(ready.wait(), 10)
        got: list[str] = []
        receiver = await BaselineClient.connect(str(sock), "bob", got.append)
        sender = await BaselineClient.connect(str(sock), "alice")
        sender.send("bob", hostile)
        sender.send("bob", "plain")
        await asyncio.wait_for(sender.wait_acked(2), 10)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(got) == 2:
                break
        await sender.close()
        await receiver.close()
        server.cancel()
        return got

    got = asyncio.run(scenario())
    assert len(got) == 2 and got[1] == "plain"
    assert "\x1b" not in got[0] and token not in got[0] and got[0].startswith("red and a token")
    assert verify_log(audit).ok
    lines = [decode_line(raw) for f in audit_files(audit) for raw in f.read_bytes().splitlines()]
    accepted = [line for line in lines if line["event"] == "accepted"]
    assert [line["body"] for line in accepted] == got  # the body as stored, secrets out
    assert [line["to"] for line in accepted] == ["bob", "bob"]


@pytest.mark.parametrize(("floor_cpu", "verdict"), [(90.0, "met"), (60.0, "not met"), (None, None)])
def test_the_cpu_verdict_is_judged_against_the_durable_floor_of_the_same_run(
    floor_cpu: float | None, verdict: str | None
) -> None:
    rows = [
        Row("tput-1k", "ccc", rate=9_000.0, server_cpu=90.0),  # 100 µs per message
        Row("tput-1k", "redis-always", rate=30_000.0, server_cpu=36.0),  # not the reference
    ]
    if floor_cpu is not None:  # 20,000 msg/s: 45 or 30 µs per message, 2.22x or 3.33x
        rows.append(Row("tput-1k", "baseline-durable", rate=20_000.0, server_cpu=floor_cpu))
    [cpu, *_] = report.targets(rows, full_size=True, idle_agents=0, queued=0)
    if verdict is None:
        assert cpu.verdict == "not measured"
        assert cpu.detail == ("threshold <= 2.50x; needs tput-1k with baseline-durable; "
                              "baseline-durable: not in this run")  # fmt: skip
        return
    us = floor_cpu / 100 / 20_000 * 1e6
    assert cpu.verdict == verdict
    assert cpu.detail.startswith(f"{100 / us:.2f}x, threshold <= 2.50x; ccc 100 µs/msg, "
                                 f"baseline-durable {us:.0f} µs/msg")  # fmt: skip


def test_the_ladder_switches_off_only_what_each_rung_names(tmp_path: Path) -> None:
    from benchmarks.ladder import RUNGS
    from benchmarks.peers import CccServer

    texts = []
    for _, system in RUNGS[:3]:
        server = CccServer(system, root=tmp_path)
        texts.append(server.config_text().replace(str(server.dir), "$DIR"))
        server.stop()
    on = texts[0]
    assert "sanitize: true" in on and "log_all_messages: true" in on
    no_sanitiser = on.replace("sanitize: true", "sanitize: false")
    assert texts[1] == no_sanitiser
    assert texts[2] == no_sanitiser.replace("log_all_messages: true", "log_all_messages: false")
    assert RUNGS[3][1].name == "baseline-durable"


@pytest.mark.slow
def test_the_ladder_measures_every_rung_and_tabulates_them(tmp_path: Path) -> None:
    from benchmarks.ladder import RUNGS, climb, table
    from benchmarks.peers import missing
    from benchmarks.run import QUICK

    found = climb(1, "tput-1k", QUICK, tmp_path, echo=lambda _: None)
    assert list(found) == [name for name, _ in RUNGS]
    for (_, system), rows in zip(RUNGS, found.values(), strict=True):
        assert len(rows) == 1
        if (why := missing(system)) is not None:  # Redis, where it is not installed
            assert rows[0].status == why
            continue
        assert rows[0].ok, rows[0].status
        assert rows[0].rate is not None and rows[0].rate > 10
    printed = table(found)
    assert printed.count("\n") == len(RUNGS) + 1
    for name, _ in RUNGS:
        assert f"| {name} | " in printed
    if missing(RUNGS[-1][1]) is None:  # every rung as a ratio to Redis, Redis itself 1x
        assert printed.splitlines()[-1].endswith(" | 1.00x |")
        assert all(re.search(r" \| \d+\.\d\dx \|$", line) for line in printed.splitlines()[2:])
