"""The committer: one fsync per batch, audit lines kept in relay.db until their file is fsynced.

A real SQLite file and real audit files in a temporary directory, driven on a
real event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from ccc_relay.audit.files import audit_files
from ccc_relay.audit.log import AuditLog, AuditRecord
from ccc_relay.daemon import committer as committer_module
from ccc_relay.daemon.committer import Committer, Job
from ccc_relay.store import Store, StoredMessage, StoreFailure

T0 = 1_714_521_600.0


def message_job(n: int, body: str = "hello") -> Job:
    message = StoredMessage(id=f"m_{n}", sender="alice", recipient="bob", body=body,
                            sent_at=T0 + n, delivery=n)  # fmt: skip
    return Job(audit=[AuditRecord(T0 + n, "accepted", {"id": message.id})], messages=[message])


def outbox(store: Store) -> list[int]:
    return [seq for seq, _file, _line in store.audit_outbox()]


async def commit_each(committer: Committer, jobs: list[Job], *, settle: bool = False) -> None:
    """Commit ``jobs`` one batch each; with ``settle``, let each batch's audit sync finish."""
    runner = asyncio.ensure_future(committer.run())
    try:
        for job in jobs:
            future = committer.submit(job)
            assert future is not None
            await future
            while settle and committer._audit_sync is not None:
                if committer._audit_sync.done():
                    break
                await asyncio.sleep(0.001)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


@pytest.fixture
def parts(tmp_path: Path):
    store, audit = Store(tmp_path / "relay.db"), AuditLog(tmp_path / "audit")
    committer = Committer(store, audit)
    yield store, audit, committer
    committer.close()
    store.close()
    audit.close()


def test_a_batch_commits_its_audit_lines_in_relay_db_with_its_messages(parts) -> None:
    store, audit, committer = parts
    asyncio.run(commit_each(committer, [message_job(1)]))
    [path] = audit_files(audit.log_dir)
    on_disk = path.read_bytes().splitlines()
    assert [(seq, line) for seq, _f, line in store.audit_outbox()] == list(
        enumerate(on_disk, 1)
    )  # the file_opened line and the accepted line, byte for byte
    assert store.pending_count("bob") == 1
    assert store.get_meta("audit_head") == f"{audit.seq} {audit.head}"


def test_audit_sync_fsyncs_the_file_and_the_next_batch_trims_the_outbox(
    parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _audit, committer = parts
    monkeypatch.setattr(committer_module, "AUDIT_SYNC_EVERY", 0.0)
    asyncio.run(commit_each(committer, [message_job(1), message_job(2)], settle=True))
    # batch 1 wrote seq 1-2; its audit sync fsynced them; batch 2 (seq 3) dropped them
    assert outbox(store) == [3]


def test_a_big_batch_fsyncs_its_lines_instead_and_lets_the_outbox_be_trimmed(parts) -> None:
    store, audit, committer = parts
    small = [message_job(1)]
    big = [message_job(n) for n in range(2, 3 + committer_module.INLINE_BATCH)]

    async def scenario() -> None:
        runner = asyncio.ensure_future(committer.run())
        try:
            await committer.submit(small[0])  # type: ignore[misc]
            assert outbox(store) == [1, 2]  # file_opened and the accepted line
            futures = [committer.submit(job) for job in big]  # one batch
            await asyncio.gather(*futures)  # type: ignore[arg-type]
            assert outbox(store) == [1, 2]  # the big batch's lines went to the file, fsynced
            await committer.submit(message_job(99))  # type: ignore[misc]
            assert outbox(store) == [audit.seq]  # that fsync covered the old lines too
        finally:
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner

    asyncio.run(scenario())
    [path] = audit_files(audit.log_dir)
    assert len(path.read_bytes().splitlines()) == audit.seq


def test_a_big_batch_commits_nothing_when_its_audit_fsync_fails(
    parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, audit, committer = parts

    def failing_sync() -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(audit, "sync_owed", lambda: failing_sync)
    big = [message_job(n) for n in range(1, 2 + committer_module.INLINE_BATCH)]

    async def scenario() -> list[object]:
        runner = asyncio.ensure_future(committer.run())
        try:
            futures = [committer.submit(job) for job in big]
            return await asyncio.gather(*futures, return_exceptions=True)  # type: ignore[arg-type]
        finally:
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, StoreFailure) for o in outcomes)
    assert "Input/output error" in str(committer.failure)
    # The decisions whose audit lines may not be on disk were never committed.
    assert store.pending_count("bob") == 0
    assert store.get_meta("audit_head") is None


def lazy_job(n: int) -> Job:
    return Job(audit=[AuditRecord(T0 + n, "delivered", {"id": f"m_{n}"})])


async def run_committer(committer: Committer, scenario) -> None:
    runner = asyncio.ensure_future(committer.run())
    try:
        await scenario()
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def commit_and_audit_its_delivery(committer: Committer) -> None:
    """Commit message 1 the way the relay does: once durable, it is pushed and
    the push gets an audit line nobody waits for."""
    first = committer.submit(message_job(1))
    assert first is not None
    first.add_done_callback(lambda _f: committer.submit(lazy_job(1), want_result=False))
    await first


def test_jobs_nobody_waits_for_ride_with_the_next_waited_for_job(parts) -> None:
    """A delivery's audit line, queued as its message commits, costs no commit of its own."""
    _store, audit, committer = parts

    async def scenario() -> None:
        await commit_and_audit_its_delivery(committer)
        await asyncio.sleep(committer_module.LAZY_DELAY / 4)
        assert committer.batches == 1  # the delivery line is still queued
        await committer.submit(message_job(2))  # type: ignore[misc]
        assert committer.batches == 2  # it went with message 2

    asyncio.run(run_committer(committer, scenario))
    events = [line for line in audit_files(audit.log_dir)[0].read_bytes().splitlines()]
    assert [b'"delivered"' in line for line in events[-2:]] == [True, False]


def test_a_job_nobody_waits_for_goes_out_on_its_own_when_nothing_follows(parts) -> None:
    _store, audit, committer = parts

    async def scenario() -> None:
        await commit_and_audit_its_delivery(committer)
        await asyncio.sleep(committer_module.LAZY_DELAY * 3)
        assert committer.batches == 2  # its own commit, after the delay
        assert committer.jobs == 2

    asyncio.run(run_committer(committer, scenario))
    lines = audit_files(audit.log_dir)[0].read_bytes().splitlines()
    assert b'"delivered"' in lines[-1]


def test_a_job_nobody_waits_for_is_committed_within_the_lazy_delay(parts) -> None:
    store, audit, committer = parts

    async def scenario() -> None:
        committer.submit(lazy_job(1), want_result=False)
        await asyncio.sleep(0)
        assert committer.batches == 0
        await asyncio.sleep(committer_module.LAZY_DELAY * 3)
        assert committer.batches == 1
        await asyncio.sleep(committer_module.LAZY_DELAY * 3)
        assert committer.batches == 1  # and no empty commits after it

    asyncio.run(run_committer(committer, scenario))
    assert store.get_meta("audit_head") == f"{audit.seq} {audit.head}"


def test_a_slow_commit_is_counted_and_the_longest_kept(
    parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _audit, committer = parts
    real_commit = store.commit

    def stalled_commit() -> None:  # a disk that takes its time over one flush
        time.sleep(committer_module.SLOW_COMMIT * 2)
        real_commit()

    asyncio.run(commit_each(committer, [message_job(1)]))
    assert committer.slow_commits == 0
    monkeypatch.setattr(store, "commit", stalled_commit)
    asyncio.run(commit_each(committer, [message_job(2)]))
    assert committer.slow_commits == 1
    assert committer.longest_commit >= committer_module.SLOW_COMMIT * 2
    assert committer.batches == 2


def test_stopping_during_a_thread_commit_drains_after_it_one_writer_at_a_time(
    parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, audit, committer = parts
    real_commit = store.commit
    in_commit = threading.Event()

    def slow_commit() -> None:
        in_commit.set()
        time.sleep(0.1)
        real_commit()

    monkeypatch.setattr(store, "commit", slow_commit)
    big = [message_job(n) for n in range(1, 2 + committer_module.INLINE_BATCH)]

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        runner = asyncio.ensure_future(committer.run())
        futures = [committer.submit(job) for job in big]
        await loop.run_in_executor(None, in_commit.wait)
        committer.submit(lazy_job(50), want_result=False)  # queued behind the thread's batch
        runner.cancel()  # the daemon stops while the thread is in COMMIT
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert all(f.done() and f.exception() is None for f in futures)  # type: ignore[union-attr]

    asyncio.run(scenario())
    assert committer.failure is None
    assert store.pending_count("bob") == len(big)
    assert store.get_meta("audit_head") == f"{audit.seq} {audit.head}"  # the lazy line too
    assert b'"delivered"' in audit_files(audit.log_dir)[0].read_bytes().splitlines()[-1]


def test_a_store_failure_the_thread_returned_as_the_daemon_stops_is_still_answered(
    parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop lands after the thread came back with a failing batch but before the
    committer task resumed: the batch is refused, the failure recorded, nothing more
    is written."""
    store, _audit, committer = parts
    failures: list[str] = []
    committer.on_failure = failures.append

    def full_disk() -> None:
        time.sleep(0.02)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "commit", full_disk)
    big = [message_job(n) for n in range(1, 2 + committer_module.INLINE_BATCH)]

    async def scenario() -> None:
        runner = asyncio.ensure_future(committer.run())
        futures = [committer.submit(job) for job in big]
        while committer._working is None:
            await asyncio.sleep(0)
        _batch, working = committer._working
        while not working.done():
            await asyncio.sleep(0)
        runner.cancel()  # before the committer task has seen the thread's answer
        with pytest.raises(asyncio.CancelledError):
            await runner
        outcomes = await asyncio.gather(*futures, return_exceptions=True)  # type: ignore[arg-type]
        assert all(isinstance(o, StoreFailure) for o in outcomes)

    asyncio.run(scenario())
    assert len(failures) == 1 and "No space left" in failures[0]
    assert committer.failure is not None
    assert store.pending_count("bob") == 0
