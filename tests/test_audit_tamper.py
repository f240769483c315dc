"""The tamper alarm at start: lines the relay did not write are never chained from.

At start the relay compares the files' last line with the head relay.db
recorded. Lines after it are moved out of the chain (kept as evidence). When
the relay had stopped cleanly there, a ``tamper_alarm`` line and a CRITICAL
log line name the mismatch, ``ccc status`` shows it, and ``ccc audit verify``
fails until the operator acknowledges it. After a crash they may be the
relay's own uncommitted batch: set apart with a note, no alarm. A power cut's
lines restored from relay.db's outbox are neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path

import pytest

from ccc_relay.audit.files import audit_files, line_hash
from ccc_relay.audit.log import AuditLog, AuditRecord
from ccc_relay.audit.recorded import CLEAN_STOP, Head, read_recorded_head
from ccc_relay.audit.report import Kind
from ccc_relay.audit.sealing import STATE_FILE
from ccc_relay.audit.verify import verify_log
from ccc_relay.daemon.audit_lifecycle import read_alarms, restore_audit_outbox
from ccc_relay.store import Store
from tests.support import FakeClock, run_cli

T0 = 1_790_000_000.0


def ccc(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("ccc", *args, env={"CCC_CACHE_DIR": str(state), "CCC_CONFIG": ""})


def records(log_dir: Path) -> list[dict]:
    return [json.loads(x) for p in audit_files(log_dir) for x in p.read_bytes().splitlines()]


def append_chained(path: Path, fields: dict) -> bytes:
    """A correctly chained line appended to ``path`` (what the intruder writes); its bytes."""
    last = path.read_bytes().splitlines()[-1]
    record = json.loads(last)
    line = json.dumps({"seq": record["seq"] + 1, "ts": record["ts"] + 1, "prev": line_hash(last),
                       **fields}, separators=(",", ":")).encode()  # fmt: skip
    with open(path, "ab") as f:
        f.write(line + b"\n")
    return line


def one_run(relay_factory, clock: FakeClock, body: str) -> Path:
    relay = relay_factory(clock=clock)
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        a.send("bob", body)
    relay.stop()
    return relay.config.audit.log_path


def test_a_line_appended_while_the_relay_was_stopped_raises_a_tamper_alarm(
    relay_factory, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    log_dir = one_run(relay_factory, clock, "a real message")
    seal_key = ccc(state_dir, "audit", "seal-key", "export").stdout.strip()
    recorded = read_recorded_head(state_dir / "relay.db")
    assert recorded is not None
    [path] = audit_files(log_dir)
    forged = append_chained(path, {"event": "accepted", "from": "alice", "to": "bob",
                                   "body": "a forged message"})  # fmt: skip

    # Verify, with the relay stopped: nothing may follow the recorded head.
    done = ccc(state_dir, "audit", "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith(f"FAIL: appended at {path.name} line ")
    assert f"1 line(s) follow the head relay.db recorded (seq {recorded.seq})" in done.stdout

    # The relay starts, but does not chain from the forged line.
    clock.advance(60)
    relay = relay_factory(clock=clock)
    lines = records(log_dir)
    assert b"a forged message" not in path.read_bytes()
    assert [r["seq"] for r in lines] == list(range(1, len(lines) + 1))  # no fork
    [alarm] = [r for r in lines if r["event"] == "tamper_alarm"]
    assert alarm["seq"] == recorded.seq + 1 and alarm["prev"] == recorded.hash
    assert (alarm["reason"], alarm["stopped_cleanly"]) == ("lines_after_recorded_head", True)
    assert (alarm["recorded_seq"], alarm["recorded_hash"]) == (recorded.seq, recorded.hash)
    assert (alarm["found_seq"], alarm["found_hash"]) == (recorded.seq + 1, line_hash(forged))
    evidence = log_dir / alarm["set_aside"]["file"]
    assert evidence.read_bytes() == forged + b"\n"  # kept, byte for byte
    assert alarm["set_aside"]["lines"] == 1
    assert alarm["set_aside"]["sha256"] == hashlib.sha256(forged + b"\n").hexdigest()
    assert any(r.levelno == logging.CRITICAL and "TAMPER ALARM" in r.getMessage()
               for r in caplog.records)  # fmt: skip

    # Visible in the status, until acknowledged; verify fails meanwhile.
    [shown] = relay.admin.request("status")["audit_alarms"]
    assert (shown["seq"], shown["reason"]) == (alarm["seq"], "lines_after_recorded_head")
    human = ccc(state_dir, "status")
    assert f"AUDIT TAMPER ALARM at seq {alarm['seq']}" in human.stdout, human.stdout
    done = ccc(state_dir, "audit", "verify", "--seal-key", seal_key, "--allow-unsealed-tail")
    assert done.returncode == 1
    assert done.stdout.startswith(f"FAIL: tamper alarm at {path.name} line ")
    assert f"'ccc audit acknowledge {alarm['seq']}'" in done.stdout

    wrong = ccc(state_dir, "audit", "acknowledge", str(alarm["seq"] + 1))
    assert wrong.returncode == 6 and "no unacknowledged audit tamper alarm" in wrong.stderr
    done = ccc(state_dir, "audit", "acknowledge", str(alarm["seq"]), "--note", "our test")
    assert done.returncode == 0, done.stderr
    assert relay.admin.request("status")["audit_alarms"] == []
    relay.stop()

    [ack] = [r for r in records(log_dir) if r["event"] == "tamper_alarm_acknowledged"]
    assert (ack["alarm_seq"], ack["note"]) == (alarm["seq"], "our test")
    done = ccc(state_dir, "audit", "verify", "--seal-key", seal_key)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"the tamper alarm at seq {alarm['seq']}" in done.stderr
    assert "acknowledged" in done.stderr


def test_a_deleted_seal_key_raises_a_tamper_alarm(relay_factory, state_dir: Path) -> None:
    clock = FakeClock(T0)
    log_dir = one_run(relay_factory, clock, "sealed")
    old = ccc(state_dir, "audit", "seal-key", "export").stdout.strip()
    (state_dir / STATE_FILE).unlink()
    relay = relay_factory(clock=clock)
    [alarm] = relay.admin.request("status")["audit_alarms"]
    assert alarm["reason"] == "seal_key_missing"
    relay.stop()
    lines = records(log_dir)
    created = [r["key_id"] for r in lines if r["event"] == "seal_key_created"]
    assert len(created) == 2 and created[0] == old.split(":")[1] != created[1]
    done = ccc(state_dir, "audit", "verify", "--seal-key", old)
    assert done.returncode == 1 and "FAIL: tamper alarm" in done.stdout


# --- the start-up check, line by line ----------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def commit(store: Store, log: AuditLog) -> Head:
    store.set_meta("audit_head", f"{log.seq} {log.head}")
    return Head(log.seq, log.head)


def written(state: Path, count: int = 5, *, clean: bool = True) -> tuple[Store, Head]:
    """A run that wrote ``count`` lines and stopped (cleanly, as close_audit records it)."""
    store = Store(state / "relay.db")
    log = AuditLog(state / "audit")
    log.append([AuditRecord(T0 + i, "accepted", {"n": i}) for i in range(count)])
    head = commit(store, log)
    if clean:
        store.set_meta(CLEAN_STOP, str(head))
    log.close()
    return store, head


def start(store: Store, state: Path) -> AuditLog:
    log = AuditLog(state / "audit")
    restore_audit_outbox(store, log, T0 + 100)
    return log


def test_a_changed_last_line_raises_a_tamper_alarm(state: Path) -> None:
    store, head = written(state)
    [path] = audit_files(state / "audit")
    path.write_bytes(path.read_bytes().replace(b'"n":4', b'"n":9'))
    log = start(store, state)
    [alarm] = read_alarms(store)
    assert alarm["reason"] == "head_differs"
    assert f"the line at seq {head.seq} is not the one relay.db recorded" in alarm["detail"]
    log.close()
    report = verify_log(state / "audit", recorded=read_recorded_head(state / "relay.db"))
    assert report.problem is not None and report.problem.kind == Kind.ALARM
    store.close()


def test_lines_removed_from_the_end_raise_a_tamper_alarm(state: Path) -> None:
    store, head = written(state)
    [path] = audit_files(state / "audit")
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-2]))
    log = start(store, state)
    [alarm] = read_alarms(store)
    assert alarm["reason"] == "lines_missing"
    assert f"end at seq {head.seq - 2} but relay.db recorded seq {head.seq}" in alarm["detail"]
    log.close()
    store.close()


def test_a_line_appended_after_a_clean_stop_is_set_apart_with_an_alarm(state: Path) -> None:
    store, head = written(state)
    [path] = audit_files(state / "audit")
    forged = append_chained(path, {"event": "accepted", "n": "forged"})
    assert not verify_log(state / "audit", recorded=head, stopped_cleanly=True).ok
    log = start(store, state)
    [alarm] = read_alarms(store)
    assert (alarm["reason"], alarm["seq"]) == ("lines_after_recorded_head", head.seq + 1)
    assert "where the relay had stopped cleanly: it did not write them" in alarm["detail"]
    assert (state / "audit" / f"audit-set-aside-after-{head.seq}.jsonl").read_bytes() == (
        forged + b"\n"
    )
    assert store.get_meta(CLEAN_STOP) == ""  # the next stop is clean only if close_audit says so
    log.close()
    store.close()


def test_an_untouched_log_raises_no_alarm(state: Path) -> None:
    store, head = written(state)
    log = start(store, state)
    assert (log.seq, log.head) == (head.seq, head.hash)
    assert read_alarms(store) == []
    log.close()
    assert "tamper_alarm" not in {r["event"] for r in records(state / "audit")}
    store.close()


def test_a_power_cuts_lines_come_back_from_the_outbox_without_an_alarm(state: Path) -> None:
    store = Store(state / "relay.db")
    log = AuditLog(state / "audit")
    log.append([AuditRecord(T0, "accepted", {"n": 0})])
    commit(store, log)
    # A small batch: its lines go into relay.db's outbox in the commit, the file
    # is not fsynced yet -- and then the power goes.
    staged = log.append_unsynced([AuditRecord(T0 + i, "accepted", {"n": i}) for i in (1, 2, 3)])
    store.begin()
    store.stage_audit(staged)
    head = commit(store, log)
    store.commit()
    log.close()
    [path] = audit_files(state / "audit")
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-3]))

    log = start(store, state)
    assert (log.seq, log.head) == (head.seq, head.hash)  # written back, chain unbroken
    assert read_alarms(store) == []
    log.append([AuditRecord(T0 + 200, "daemon_started", {})])
    commit(store, log)
    log.close()
    events = [r["event"] for r in records(state / "audit")]
    assert "audit_lines_restored" in events and "tamper_alarm" not in events
    report = verify_log(state / "audit", recorded=read_recorded_head(state / "relay.db"),
                        stopped_cleanly=True)  # fmt: skip
    assert report.ok, report.problem
    store.close()


def test_lines_a_crashed_run_never_committed_are_set_apart_without_an_alarm(
    state: Path,
) -> None:
    store, head = written(state, clean=False)  # killed: close_audit never ran
    log = AuditLog(state / "audit")
    log.append([AuditRecord(T0 + 50, "accepted", {"n": "batch-7f3e"})])
    log.close()
    # Before the restart, verify cannot tell a crash from an intruder: a note.
    report = verify_log(state / "audit", recorded=head, stopped_cleanly=False)
    assert report.ok and "1 line(s) follow the head relay.db recorded" in report.notes[-1]
    log = start(store, state)
    assert read_alarms(store) == []
    [line] = [r for r in records(state / "audit") if r["event"] == "uncommitted_lines_set_aside"]
    assert (line["seq"], line["prev"]) == (head.seq + 1, head.hash)  # chained from the head
    assert (line["stopped_cleanly"], line["set_aside"]["lines"]) == (False, 1)
    assert b"batch-7f3e" not in b"".join(p.read_bytes() for p in audit_files(state / "audit"))
    log.close()
    report = verify_log(state / "audit", recorded=read_recorded_head(state / "relay.db"),
                        stopped_cleanly=True)  # fmt: skip
    assert report.ok, report.problem
    assert any("a crashed run left uncommitted" in note for note in report.notes)
    store.close()
