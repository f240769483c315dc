"""Tampering with a real audit log, and verify naming each break: file, line and kind.

Each test writes a log with the real writer (timestamps from an injected clock),
damages the files the way an intruder or an accident would, and checks what
``verify_log`` or the real ``ccc audit verify`` says. Layout of ``build``: one
file per day, each opening with ``file_opened`` then five ``accepted`` lines
(then a ``checkpoint`` when a key is given).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ccc_relay.audit.files import audit_files, line_hash
from ccc_relay.audit.log import AuditLog, AuditRecord
from ccc_relay.audit.recorded import Head, read_recorded_head
from ccc_relay.audit.report import Kind, Report
from ccc_relay.audit.signing import (
    checkpoint_fields,
    load_or_create_signing_key,
    public_base64,
    public_pem,
)
from ccc_relay.audit.verify import verify_log
from ccc_relay.store import Store
from tests.support import FakeClock, run_cli

DAY = 86400.0
T0 = 1_714_521_600.0  # 2024-05-01 00:00:00 UTC
DAY1, DAY2, DAY3 = "audit-2024-05-01.jsonl", "audit-2024-05-02.jsonl", "audit-2024-05-03.jsonl"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "audit.md"


def build(log_dir: Path, *, key: Ed25519PrivateKey | None = None, days: int = 3,
          start: float = T0) -> Head:  # fmt: skip
    log = AuditLog(log_dir)
    for day in range(days):
        base = start + day * DAY
        log.append([AuditRecord(base + 60 * i, "accepted",
                                {"from": "alice", "to": "bob", "body": f"message {day}-{i}"})
                    for i in range(5)])  # fmt: skip
        if key is not None:
            log.checkpoint(base + 3600, key)
    head = Head(log.seq, log.head)
    log.close()
    return head


def edit(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    path.write_bytes(b"".join(change(path.read_bytes().splitlines(keepends=True))))


def rechain(log_dir: Path, key: Ed25519PrivateKey | None = None) -> Head:
    """What a careful intruder does after an edit: recompute every prev (and re-sign)."""
    seq, head = 0, "0" * 64
    for path in audit_files(log_dir):
        out = []
        for raw in path.read_bytes().splitlines():
            record = json.loads(raw)
            record["prev"] = head
            if record["event"] == "checkpoint":
                record["signed_head"] = head
                if key is not None:
                    record.update(checkpoint_fields(key, record["signed_seq"], head, record["ts"]))
            line = json.dumps(record, separators=(",", ":")).encode()
            seq, head = record["seq"], line_hash(line)
            out.append(line + b"\n")
        path.write_bytes(b"".join(out))
    return Head(seq, head)


def broken(report: Report, kind: Kind, file: str | None, line: int | None) -> str:
    problem = report.problem
    assert problem is not None, "the damage went unnoticed"
    assert (problem.kind, problem.file, problem.line) == (kind, file, line), str(problem)
    return problem.detail


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "audit"


# --- an untouched log ------------------------------------------------------------------


def test_an_untouched_log_verifies(log_dir: Path) -> None:
    head = build(log_dir)
    report = verify_log(log_dir, recorded=head)
    assert report.ok, report.problem
    assert (report.lines, report.files, report.head) == (18, 3, head)


# --- the six kinds of damage, each named -----------------------------------------------


def test_a_changed_byte_names_the_changed_line(log_dir: Path) -> None:
    head = build(log_dir)
    edit(log_dir / DAY2, lambda ls: [x.replace(b"message 1-1", b"message 1-7") for x in ls])
    detail = broken(verify_log(log_dir, recorded=head), Kind.EDITED, DAY2, 3)
    assert "seq 9" in detail


def test_a_changed_byte_in_the_newest_line_is_caught_by_the_recorded_head(log_dir: Path) -> None:
    head = build(log_dir)
    edit(log_dir / DAY3, lambda ls: [*ls[:-1], ls[-1].replace(b"2-4", b"2-5")])
    broken(verify_log(log_dir, recorded=head), Kind.EDITED, DAY3, 6)


@pytest.mark.parametrize(("old", "new"), [
    (b'"seq":9,', b'"seq":99,'),  # the seq field
    (b'"prev":"', b'"prev":"f'),  # the prev field (now 65 digits: not a valid line)
    (b'"event":"accepted"', b'"event":"accepted'),  # no longer JSON
])  # fmt: skip
def test_an_edited_chain_field_names_its_own_line(log_dir: Path, old: bytes, new: bytes) -> None:
    head = build(log_dir)
    edit(log_dir / DAY2, lambda ls: [*ls[:2], ls[2].replace(old, new), *ls[3:]])
    broken(verify_log(log_dir, recorded=head), Kind.EDITED, DAY2, 3)


def test_a_rewritten_prev_that_still_parses_names_its_own_line(log_dir: Path) -> None:
    head = build(log_dir)
    forged = '"prev":"' + "a" * 64 + '"'
    edit(log_dir / DAY2, lambda ls: [*ls[:2], re.sub(rb'"prev":"[0-9a-f]{64}"', forged.encode(),
                                                     ls[2]), *ls[3:]])  # fmt: skip
    broken(verify_log(log_dir, recorded=head), Kind.EDITED, DAY2, 3)


@pytest.mark.parametrize(("count", "missing"), [(1, "seq 9 missing"), (2, "seq 9..10 missing")])
def test_deleted_lines_are_named_with_the_missing_seqs(
    log_dir: Path, count: int, missing: str
) -> None:
    head = build(log_dir)
    edit(log_dir / DAY2, lambda ls: ls[:2] + ls[2 + count :])
    assert missing in broken(verify_log(log_dir, recorded=head), Kind.DELETED, DAY2, 3)


def test_two_swapped_lines_are_reported_as_reordered(log_dir: Path) -> None:
    head = build(log_dir)
    edit(log_dir / DAY2, lambda ls: [*ls[:2], ls[3], ls[2], *ls[4:]])
    detail = broken(verify_log(log_dir, recorded=head), Kind.REORDERED, DAY2, 3)
    assert "seq 10 stands before seq 9" in detail


def test_a_line_moved_further_down_is_reordered_not_deleted(log_dir: Path) -> None:
    head = build(log_dir)
    edit(log_dir / DAY2, lambda ls: [ls[0], *ls[2:5], ls[1], *ls[5:]])
    broken(verify_log(log_dir, recorded=head), Kind.REORDERED, DAY2, 2)


def test_an_inserted_copy_of_an_old_line_is_named(log_dir: Path) -> None:
    head = build(log_dir)
    old = (log_dir / DAY1).read_bytes().splitlines(keepends=True)[2]
    edit(log_dir / DAY2, lambda ls: [*ls[:3], old, *ls[3:]])
    broken(verify_log(log_dir, recorded=head), Kind.INSERTED, DAY2, 4)


def test_an_inserted_line_that_is_not_even_json_is_named(log_dir: Path) -> None:
    head = build(log_dir)
    edit(log_dir / DAY2, lambda ls: [*ls[:3], b"hello\n", *ls[3:]])
    broken(verify_log(log_dir, recorded=head), Kind.INSERTED, DAY2, 4)


def test_a_carefully_chained_forged_line_is_named_as_inserted(log_dir: Path) -> None:
    head = build(log_dir)

    def insert(ls: list[bytes]) -> list[bytes]:
        forged = {"seq": 10, "ts": T0 + DAY + 150, "prev": line_hash(ls[2].rstrip(b"\n")),
                  "event": "accepted", "from": "alice", "to": "bob", "body": "forged"}  # fmt: skip
        return [*ls[:3], json.dumps(forged, separators=(",", ":")).encode() + b"\n", *ls[3:]]

    edit(log_dir / DAY2, insert)
    broken(verify_log(log_dir, recorded=head), Kind.INSERTED, DAY2, 4)


def test_a_cut_tail_is_caught_by_the_recorded_head(log_dir: Path) -> None:
    head = build(log_dir)
    edit(log_dir / DAY3, lambda ls: ls[:-2])
    detail = broken(verify_log(log_dir, recorded=head), Kind.TRUNCATED, DAY3, 4)
    assert "seq 17..18 cut from the end" in detail


def test_a_tail_cut_inside_a_line_is_caught(log_dir: Path) -> None:
    head = build(log_dir)
    path = log_dir / DAY3
    path.write_bytes(path.read_bytes()[:-20])
    report = verify_log(log_dir, recorded=head)
    broken(report, Kind.TRUNCATED, DAY3, 5)
    assert any("unfinished" in note for note in report.notes)


def test_a_file_cut_inside_a_line_with_later_files_is_truncated(log_dir: Path) -> None:
    head = build(log_dir)
    path = log_dir / DAY2
    path.write_bytes(path.read_bytes()[:-20])
    broken(verify_log(log_dir, recorded=head), Kind.TRUNCATED, DAY2, 6)


def test_a_deleted_file_inside_the_retention_window_is_named(log_dir: Path) -> None:
    head = build(log_dir)
    (log_dir / DAY2).unlink()
    detail = broken(verify_log(log_dir, recorded=head), Kind.FILE_DELETED, DAY2, None)
    assert "seq 7..12 missing" in detail
    assert DAY3 in detail


def test_a_deleted_first_file_without_a_retention_cut_is_named(log_dir: Path) -> None:
    head = build(log_dir)
    (log_dir / DAY1).unlink()
    broken(verify_log(log_dir, recorded=head), Kind.FILE_DELETED, DAY1, None)


def test_a_deleted_newest_file_is_a_cut_tail(log_dir: Path) -> None:
    head = build(log_dir)
    (log_dir / DAY3).unlink()
    broken(verify_log(log_dir, recorded=head), Kind.TRUNCATED, DAY2, 6)


def test_an_emptied_log_with_a_recorded_head_is_not_ok(log_dir: Path) -> None:
    head = build(log_dir)
    for path in audit_files(log_dir):
        path.unlink()
    broken(verify_log(log_dir, recorded=head), Kind.DELETED, None, None)


# --- retention cuts and restarts ----------------------------------------------------------


def test_a_log_verifies_across_a_retention_cut_and_a_restart(log_dir: Path) -> None:
    clock = FakeClock(T0)
    build(log_dir, days=40, start=clock())
    clock.advance(40 * DAY)
    log = AuditLog(log_dir)  # a restart, forty days in
    deleted = log.apply_retention(clock(), 30 * DAY)
    assert len(deleted) == 10
    log.close()
    log = AuditLog(log_dir)  # and another, after which the chain goes on
    clock.advance(DAY)
    log.append([AuditRecord(clock(), "daemon_started", {"pid": 1})])
    head = Head(log.seq, log.head)
    log.close()
    report = verify_log(log_dir, recorded=head)
    assert report.ok, report.problem
    assert report.starts_after_cut
    assert report.files == 32
    assert report.head == head


def test_a_file_deleted_after_a_retention_cut_is_still_named(log_dir: Path) -> None:
    build(log_dir, days=5)
    log = AuditLog(log_dir)
    log.apply_retention(T0 + 5 * DAY, 3 * DAY)  # deletes 05-01 and 05-02
    head = Head(log.seq, log.head)
    log.close()
    (log_dir / DAY3).unlink()  # inside the window
    detail = broken(verify_log(log_dir, recorded=head), Kind.FILE_DELETED, DAY3, None)
    assert "seq 13..18 missing" in detail  # 1..12 went with the cut


def test_a_retention_cut_written_by_an_intruder_is_not_trusted(log_dir: Path) -> None:
    head = build(log_dir)
    last = (log_dir / DAY1).read_bytes().splitlines()[-1]
    (log_dir / DAY1).unlink()
    end = (log_dir / DAY3).read_bytes().splitlines()[-1]
    cut = {"seq": head.seq + 1, "ts": T0 + 2 * DAY + 999, "prev": line_hash(end),
           "event": "retention_cut", "files": [DAY1], "last_seq": 6,
           "last_hash": line_hash(last), "retention": 0}  # fmt: skip
    with open(log_dir / DAY3, "ab") as f:
        f.write(json.dumps(cut, separators=(",", ":")).encode() + b"\n")
    detail = broken(verify_log(log_dir, recorded=head), Kind.DELETED, None, None)
    assert "past the recorded head" in detail


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoints_verify_with_the_public_key(log_dir: Path, tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    head = build(log_dir, key=key)
    report = verify_log(log_dir, recorded=head, public_key=key.public_key())
    assert report.ok
    assert (report.checkpoints, report.signatures) == (3, 3)


def test_a_rewritten_chain_passes_the_hashes_but_not_the_signatures(
    log_dir: Path, tmp_path: Path
) -> None:
    key = load_or_create_signing_key(tmp_path)
    build(log_dir, key=key)
    edit(log_dir / DAY1, lambda ls: [x.replace(b"message 0-2", b"message 0-9") for x in ls])
    head = rechain(log_dir)  # the intruder also writes this head into relay.db
    assert verify_log(log_dir, recorded=head).ok  # hashes alone cannot tell
    report = verify_log(log_dir, recorded=head, public_key=key.public_key())
    assert "signature does not verify" in broken(report, Kind.FORGED, DAY1, 7)


def test_a_checkpoint_re_signed_with_another_key_is_forged(log_dir: Path, tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    build(log_dir, key=key)
    head = rechain(log_dir, key=Ed25519PrivateKey.generate())
    report = verify_log(log_dir, recorded=head, public_key=key.public_key())
    assert "not the given key" in broken(report, Kind.FORGED, DAY1, 7)


# --- the real command line ------------------------------------------------------------------


def record_head(state: Path, head: Head) -> None:
    store = Store(state / "relay.db")
    try:
        store.set_meta("audit_head", str(head))
    finally:
        store.close()


def verify_cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("ccc", "audit", "verify", *args,
                   env={"CCC_CACHE_DIR": str(state), "CCC_CONFIG": ""})  # fmt: skip


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def test_cli_says_ok_with_the_counts_and_the_head(state: Path) -> None:
    key = load_or_create_signing_key(state)
    head = build(state / "audit", key=key)
    record_head(state, head)
    (state / "audit.pub").write_text(public_pem(key.public_key()))
    (state / "audit.b64").write_text(public_base64(key.public_key()))
    for pubkey in ("audit.pub", "audit.b64"):
        done = verify_cli(state, "--pubkey", str(state / pubkey))
        assert done.returncode == 0, done.stdout + done.stderr
        first, second = done.stdout.splitlines()[:2]
        assert first == f"OK: 21 lines, 3 files, head {head.hash}"
        assert "3 checkpoints, 3 signatures verified" in second


def test_cli_names_the_break_and_exits_1(state: Path) -> None:
    head = build(state / "audit")
    record_head(state, head)
    edit(state / "audit" / DAY2, lambda ls: ls[:2] + ls[3:])
    done = verify_cli(state)
    assert done.returncode == 1
    assert done.stdout.startswith(f"FAIL: deleted at {DAY2} line 3: seq 9 missing")


def test_cli_reads_the_recorded_head_from_relay_db_to_find_a_cut_tail(state: Path) -> None:
    head = build(state / "audit")
    record_head(state, head)
    edit(state / "audit" / DAY3, lambda ls: ls[:-1])
    done = verify_cli(state, "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["problem"]["kind"] == "truncated"
    assert (report["problem"]["file"], report["problem"]["line"]) == (DAY3, 5)
    assert report["recorded_head"] == str(head)


def test_cli_detects_a_forged_checkpoint_with_an_exported_key(state: Path) -> None:
    key = load_or_create_signing_key(state)
    build(state / "audit", key=key)
    pub = run_cli("ccc", "audit", "pubkey", env={"CCC_CACHE_DIR": str(state), "CCC_CONFIG": ""})
    assert pub.returncode == 0
    assert pub.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    (state.parent / "audit.pub").write_text(pub.stdout)
    edit(state / "audit" / DAY2, lambda ls: [x.replace(b"message 1-0", b"message 1-X") for x in ls])
    record_head(state, rechain(state / "audit"))
    done = verify_cli(state, "--pubkey", str(state.parent / "audit.pub"))
    assert done.returncode == 1
    assert done.stdout.startswith(f"FAIL: forged checkpoint at {DAY2} line 7")


def test_cli_verifies_a_real_relays_log_across_a_restart(relay_factory, state_dir: Path) -> None:
    clock = FakeClock(T0 + 3600)
    for text in ("before", "after"):
        relay = relay_factory(clock=clock)
        sender, _ = relay.add_agent(f"s-{text}"), relay.add_agent(f"r-{text}")
        relay.allow(f"s-{text}", f"r-{text}")
        with relay.client(sender) as client:
            client.send(f"r-{text}", f"{text} the restart")
        relay.stop()
        clock.advance(DAY)
    assert read_recorded_head(state_dir / "relay.db") is not None
    done = verify_cli(state_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.match(r"OK: \d+ lines, 2 files, head [0-9a-f]{64}$", done.stdout.splitlines()[0])


# --- the documented stand-alone check ----------------------------------------------------


def documented_script() -> str:
    text = DOCS.read_text()
    block = text.split("<!-- audit-check.py -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_script_in_the_docs_checks_the_chain_with_python_alone(
    log_dir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "audit-check.py"
    script.write_text(documented_script())
    build(log_dir, days=5)
    log = AuditLog(log_dir)
    log.apply_retention(T0 + 5 * DAY, 3 * DAY)
    head = Head(log.seq, log.head)
    log.close()

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-I", str(script), str(log_dir)],
                              capture_output=True, text=True, check=False)  # fmt: skip

    done = check()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"head {head.seq} {head.hash}")
    edit(log_dir / DAY3, lambda ls: [x.replace(b"message 2-3", b"message 2-4") for x in ls])
    done = check()
    assert done.returncode == 1
    assert f"BROKEN at {DAY3} line 6" in done.stderr
    assert hashlib.sha256(b"x").hexdigest() not in done.stdout
