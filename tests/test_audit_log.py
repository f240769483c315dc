"""The audit writer: chained lines, daily files, modes, restarts, retention, checkpoints.

Real files in a temporary directory; time is whatever the records say (an
injected clock), so a month of retention passes without waiting.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from ccc_relay.audit.body import body_fields
from ccc_relay.audit.files import FILE_OPENED, GENESIS, audit_files, line_hash
from ccc_relay.audit.log import (
    RESTORED,
    TORN_LINE,
    AuditLog,
    AuditLogError,
    AuditRecord,
    StagedLine,
)
from ccc_relay.audit.recorded import read_recorded_head
from ccc_relay.audit.retention import expired_count
from ccc_relay.audit.signing import (
    KEY_FILE,
    SigningKeyError,
    SigningKeyMissing,
    checkpoint_message,
    load_or_create_signing_key,
    load_public_key,
    load_signing_key,
    public_base64,
    public_pem,
)
from ccc_relay.audit.verify import verify_log
from ccc_relay.credentials import Credential
from ccc_relay.policy.config import AuditConfig
from tests.support import FakeClock, RunningRelay, make_config

DAY = 86400.0
T0 = 1_714_521_600.0  # 2024-05-01 00:00:00 UTC


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def all_lines(log_dir: Path) -> list[dict]:
    return [record for path in audit_files(log_dir) for record in lines_of(path)]


def event(ts: float, name: str = "accepted", **fields: object) -> AuditRecord:
    return AuditRecord(ts, name, {"from": "alice", "to": "bob", **fields})


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "audit"


# --- the chain -----------------------------------------------------------------------


def test_each_line_chains_to_the_sha256_of_the_line_before(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    log.append([event(T0 + 10, body="one"), event(T0 + 11, body="two")])
    log.append([event(T0 + 12, name="refused", code="forbidden")])
    log.close()
    [path] = audit_files(log_dir)
    raw = path.read_bytes().splitlines()
    records = [json.loads(line) for line in raw]
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert list(records[1])[:4] == ["seq", "ts", "prev", "event"]
    assert records[0]["prev"] == GENESIS
    assert records[0]["event"] == FILE_OPENED
    for before, line, record in zip(raw, raw[1:], records[1:], strict=False):
        assert record["prev"] == hashlib.sha256(before).hexdigest(), line
    assert (log.seq, log.head) == (4, line_hash(raw[-1]))


def test_a_lines_time_is_written_rounded_to_microseconds_as_given(log_dir: Path) -> None:
    """Lines of one batch share a time (rounded once); each is still written as given."""
    log = AuditLog(log_dir)
    log.append([event(T0 + 0.1234567), event(T0 + 0.1234567), event(int(T0) + 1)])
    log.append([event(float(int(T0) + 1)), event(T0 + 2.5)])
    log.close()
    [path] = audit_files(log_dir)
    raw = [line.split(b'"ts":')[1].split(b",")[0] for line in path.read_bytes().splitlines()]
    assert raw[1:] == [b"1714521600.123457", b"1714521600.123457", b"1714521601",
                       b"1714521601.0", b"1714521602.5"]  # fmt: skip


def test_rewinding_takes_back_the_lines_of_a_rolled_back_batch(log_dir: Path) -> None:
    """The committer rewinds when a batch's transaction fails: the log must not say
    that what rolled back happened, and the chain goes on from where it stood."""
    log = AuditLog(log_dir)
    log.append([event(T0 + 10, body="kept")])
    mark = log.mark()
    log.append_unsynced([event(T0 + 11, body="rolled back"), event(T0 + 12, body="also")])
    log.rewind(mark)
    log.append([event(T0 + 13, body="after")])
    log.close()
    assert [r.get("body") for r in all_lines(log_dir)] == [None, "kept", "after"]
    assert verify_log(log_dir).ok


def test_a_rewind_across_midnight_names_the_lines_it_could_not_take_back(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    log.append([event(T0 + DAY - 2, body="kept")])
    mark = log.mark()
    log.append_unsynced([event(T0 + DAY - 1, body="rolled back"), event(T0 + DAY + 1)])
    log.rewind(mark)
    log.close()
    last = all_lines(log_dir)[-1]
    assert (last["event"], last["first"], last["last"]) == ("rolled_back", 3, 5)
    assert verify_log(log_dir).ok


def test_an_events_own_fields_cannot_overwrite_the_chain_keys(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    log.append([AuditRecord(T0, "admin", {"seq": 99, "prev": "x", "event": "forged"})])
    log.close()
    record = all_lines(log_dir)[-1]
    assert (record["seq"], record["event"], record["seq_"], record["event_"]) == (
        2, "admin", 99, "forged")  # fmt: skip


def test_one_file_per_utc_day_each_opening_with_the_file_before(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    log.append([event(T0 + DAY - 1), event(T0 + DAY), event(T0 + 3 * DAY)])
    log.close()
    names = [p.name for p in audit_files(log_dir)]
    assert names == ["audit-2024-05-01.jsonl", "audit-2024-05-02.jsonl", "audit-2024-05-04.jsonl"]
    firsts = [lines_of(p)[0] for p in audit_files(log_dir)]
    assert [f["event"] for f in firsts] == [FILE_OPENED] * 3
    assert [f["after"] for f in firsts] == [None, names[0], names[1]]
    assert verify_log(log_dir).ok


def test_a_clock_stepping_back_over_midnight_keeps_writing_the_current_file(
    log_dir: Path,
) -> None:
    log = AuditLog(log_dir)
    log.append([event(T0 + DAY + 5)])
    log.append([event(T0 + DAY - 5)])  # NTP stepped back to the previous day
    log.close()
    assert [p.name for p in audit_files(log_dir)] == ["audit-2024-05-02.jsonl"]
    assert verify_log(log_dir).ok


def test_files_are_0600_or_0640_with_the_configured_group(tmp_path: Path) -> None:
    private = AuditLog(tmp_path / "a")
    private.append([event(T0)])
    private.close()
    [path] = audit_files(tmp_path / "a")
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    gid = 65534 if os.geteuid() == 0 else os.getgid()
    shared = AuditLog(tmp_path / "b", file_mode=0o640, group_id=gid)
    shared.append([event(T0)])
    shared.close()
    [path] = audit_files(tmp_path / "b")
    assert (oct(path.stat().st_mode & 0o777), path.stat().st_gid) == ("0o640", gid)


def test_a_symlink_where_todays_file_belongs_is_not_followed(log_dir: Path, tmp_path: Path) -> None:
    log_dir.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("")
    (log_dir / "audit-2024-05-01.jsonl").symlink_to(target)
    log = AuditLog(log_dir)
    with pytest.raises(OSError, match=re.escape(os.strerror(errno.ELOOP))) as caught:
        log.append([event(T0)])
    assert caught.value.errno == errno.ELOOP
    log.close()
    assert target.read_text() == ""


# --- restarts ------------------------------------------------------------------------


def test_a_restart_continues_the_chain_from_the_last_line(log_dir: Path) -> None:
    first = AuditLog(log_dir)
    first.append([event(T0 + i) for i in range(3)])
    seq, head = first.seq, first.head
    first.close()
    second = AuditLog(log_dir)
    assert (second.seq, second.head) == (seq, head)
    second.append([event(T0 + 10)])
    second.close()
    assert [r["seq"] for r in all_lines(log_dir)] == [1, 2, 3, 4, 5]
    assert verify_log(log_dir).ok


def test_a_second_writer_is_refused_while_the_first_holds_the_log(log_dir: Path) -> None:
    first = AuditLog(log_dir)
    with pytest.raises(AuditLogError, match="another process"):
        AuditLog(log_dir)
    first.close()
    AuditLog(log_dir).close()


def test_an_unfinished_last_line_is_dropped_and_recorded(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    log.append([event(T0), event(T0 + 1)])
    log.close()
    [path] = audit_files(log_dir)
    torn = b'{"seq":4,"ts":1714521602.0,"prev":"ab'
    with open(path, "ab") as f:
        f.write(torn)
    log = AuditLog(log_dir)
    assert log.seq == 3
    log.append([event(T0 + 3)])
    log.close()
    records = lines_of(path)
    assert records[-2]["event"] == TORN_LINE
    assert records[-2]["bytes"] == len(torn)
    assert records[-2]["sha256"] == hashlib.sha256(torn).hexdigest()
    assert verify_log(log_dir).ok


# --- lines written without an fsync, and their restoration -------------------------


def test_unsynced_lines_are_returned_with_their_seq_and_day_file(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    staged = log.append_unsynced([event(T0 + DAY - 1), event(T0 + DAY)])
    assert [(s.seq, s.file) for s in staged] == [
        (1, "audit-2024-05-01.jsonl"), (2, "audit-2024-05-01.jsonl"),
        (3, "audit-2024-05-02.jsonl"), (4, "audit-2024-05-02.jsonl"),
    ]  # fmt: skip
    on_disk = [line for p in audit_files(log_dir) for line in p.read_bytes().splitlines()]
    assert [s.line for s in staged] == on_disk  # written (page cache), byte for byte
    assert log.sync_owed()() == 4
    log.close()


def _lose_unsynced_tail(log_dir: Path, keep: int, torn: bytes = b"") -> None:
    """What a power cut does to lines never fsynced: only the first ``keep`` survive."""
    [path] = audit_files(log_dir)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:keep]) + torn)


def test_lines_lost_in_a_power_cut_are_restored_from_the_outbox(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    log.append([event(T0)])
    staged = log.append_unsynced([event(T0 + 1, body="b"), event(T0 + 2, body="c")])
    expected = audit_files(log_dir)[0].read_bytes()
    log.close()
    _lose_unsynced_tail(log_dir, keep=2, torn=staged[1].line[:10])

    log = AuditLog(log_dir)
    assert log.seq == 2
    assert log.restore(staged) == 2
    assert (log.seq, log.head) == (4, line_hash(staged[-1].line))
    assert log.restore(staged) == 0  # already there: nothing twice
    log.append([event(T0 + 3)])
    log.close()
    [path] = audit_files(log_dir)
    assert path.read_bytes().startswith(expected)
    events = [r["event"] for r in lines_of(path)[4:]]
    assert events == [TORN_LINE, RESTORED, "accepted"]
    assert lines_of(path)[5]["first_seq"] == 3 and lines_of(path)[5]["last_seq"] == 4
    assert verify_log(log_dir).ok


def test_a_lost_day_file_is_recreated_from_the_outbox(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    log.append([event(T0)])
    staged = log.append_unsynced([event(T0 + 1), event(T0 + DAY), event(T0 + DAY + 1)])
    expected = [p.read_bytes() for p in audit_files(log_dir)]
    log.close()
    first, second = audit_files(log_dir)
    first.write_bytes(b"".join(first.read_bytes().splitlines(keepends=True)[:2]))
    second.unlink()  # the new day's file never reached the disk at all

    log = AuditLog(log_dir)
    assert log.restore(staged) == 4  # seq 3 in the old file; 4-6 (with file_opened) in the new
    log.close()
    assert [p.read_bytes() for p in audit_files(log_dir)][:1] == expected[:1]
    assert audit_files(log_dir)[1].read_bytes().startswith(expected[1])
    assert verify_log(log_dir).ok


def test_an_outbox_that_does_not_continue_the_log_is_refused(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    staged = log.append_unsynced([event(T0), event(T0 + 1)])
    log.close()
    _lose_unsynced_tail(log_dir, keep=1)
    log = AuditLog(log_dir)
    with pytest.raises(AuditLogError, match="does not continue the log at seq 1"):
        log.restore(staged[2:])  # seq 3 cannot follow seq 1
    other = AuditLog(log_dir.with_name("other"))
    foreign = other.append_unsynced([event(T0 + 5, body="another log")])
    other.close()
    with pytest.raises(AuditLogError, match="does not continue the log at seq 1"):
        log.restore(foreign[1:])  # the right seq, but it follows another chain's line
    log.close()


def test_an_outbox_line_that_differs_from_the_files_is_refused(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    staged = log.append_unsynced([event(T0)])
    log.close()
    log = AuditLog(log_dir)
    edited = StagedLine(2, staged[1].file, staged[1].line.replace(b"alice", b"eve"))
    with pytest.raises(AuditLogError, match="disagrees with the log at seq 2"):
        log.restore([edited])
    log.close()


def test_a_damaged_last_line_stops_the_writer_instead_of_guessing(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    log.append([event(T0)])
    log.close()
    [path] = audit_files(log_dir)
    with open(path, "ab") as f:
        f.write(b"not json\n")
    with pytest.raises(AuditLogError, match="damaged"):
        AuditLog(log_dir)


def test_the_head_is_recovered_from_a_line_longer_than_any_read_block(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    log.append([event(T0, body="x" * 300_000), event(T0 + 1, body="y" * 200_000)])
    seq, head = log.seq, log.head
    log.close()
    again = AuditLog(log_dir)
    assert (again.seq, again.head) == (seq, head)
    again.close()


# --- retention -----------------------------------------------------------------------


def test_a_day_expires_only_once_all_of_it_is_older_than_retention() -> None:
    days = ["2024-05-01", "2024-05-02", "2024-05-03"]
    end_of_first = T0 + DAY
    assert expired_count(days, end_of_first + 30 * DAY - 1, 30 * DAY) == 0
    assert expired_count(days, end_of_first + 30 * DAY, 30 * DAY) == 1
    assert expired_count(days, end_of_first + 32 * DAY, 30 * DAY) == 3
    assert expired_count(["2024-05-10", "2024-05-01"], T0 + 40 * DAY, 31 * DAY) == 0  # a prefix


def test_retention_deletes_whole_old_files_and_records_the_cut(log_dir: Path) -> None:
    clock = FakeClock(T0)
    log = AuditLog(log_dir)
    for _ in range(40):  # forty days, two decisions a day
        log.append([event(clock() + 3600), event(clock() + 7200)])
        clock.advance(DAY)
    before = audit_files(log_dir)
    deleted = log.apply_retention(clock(), 30 * DAY)
    assert deleted == before[:10]  # 2024-05-01 .. 05-10 ended 30 days before 06-10
    assert not any(p.exists() for p in deleted)
    cut = all_lines(log_dir)[-1]
    assert cut["event"] == "retention_cut"
    assert cut["files"] == [p.name for p in deleted]
    first_kept = lines_of(audit_files(log_dir)[0])[0]
    assert (cut["last_seq"], cut["last_hash"]) == (first_kept["seq"] - 1, first_kept["prev"])
    assert log.apply_retention(clock(), 30 * DAY) == []  # nothing more, and no second cut
    assert all_lines(log_dir)[-1]["seq"] == cut["seq"]
    log.close()
    report = verify_log(log_dir)
    assert report.ok, report.problem
    assert report.starts_after_cut


def test_retention_never_deletes_the_file_the_chain_continues_from(log_dir: Path) -> None:
    log = AuditLog(log_dir)
    log.append([event(T0 + 60)])
    log.close()
    idle = AuditLog(log_dir)  # restarted after two idle months
    assert idle.apply_retention(T0 + 60 * DAY, 30 * DAY) == []
    idle.append([event(T0 + 60 * DAY)])
    assert [p.name for p in idle.apply_retention(T0 + 60 * DAY, 30 * DAY)] == [
        "audit-2024-05-01.jsonl"]  # fmt: skip
    idle.close()
    assert verify_log(log_dir).ok


# --- checkpoints and the key -----------------------------------------------------------


def test_a_checkpoint_signs_the_line_before_it(log_dir: Path, tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    log = AuditLog(log_dir)
    assert not log.checkpoint(T0, key)  # nothing to sign yet
    log.append([event(T0 + 1)])
    seq, head = log.seq, log.head
    assert log.checkpoint(T0 + 2.5, key)
    assert not log.checkpoint(T0 + 3, key)  # the head already is a checkpoint
    log.close()
    line = all_lines(log_dir)[-1]
    assert (line["event"], line["signed_seq"], line["signed_head"]) == ("checkpoint", seq, head)
    import base64

    key.public_key().verify(base64.b64decode(line["sig"]),
                            checkpoint_message(seq, head, line["ts"]))  # fmt: skip
    assert verify_log(log_dir, public_key=key.public_key()).signatures == 1


def test_a_restarted_writer_does_not_repeat_a_checkpoint(log_dir: Path, tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    log = AuditLog(log_dir)
    log.append([event(T0)])
    log.checkpoint(T0 + 1, key)
    log.close()
    again = AuditLog(log_dir)
    assert not again.checkpoint(T0 + 2, key)
    again.close()


def test_the_signing_key_is_made_once_0600_and_refused_when_exposed(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyMissing):
        load_signing_key(tmp_path)
    key = load_or_create_signing_key(tmp_path)
    path = tmp_path / KEY_FILE
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    same = load_or_create_signing_key(tmp_path)
    assert public_base64(same.public_key()) == public_base64(key.public_key())
    path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="readable by others"):
        load_signing_key(tmp_path)


def test_public_keys_load_from_pem_or_raw_base64(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path).public_key()
    (tmp_path / "k.pem").write_text(public_pem(key))
    (tmp_path / "k.b64").write_text(public_base64(key) + "\n")
    (tmp_path / "bad").write_text("c2hvcnQ=\n")
    for name in ("k.pem", "k.b64"):
        assert public_base64(load_public_key(tmp_path / name)) == public_base64(key)
    with pytest.raises(SigningKeyError, match="32 bytes"):
        load_public_key(tmp_path / "bad")


# --- what a line keeps of a message, through a real relay ---------------------------------


def test_body_fields_keep_the_body_or_only_its_size_and_hash() -> None:
    assert body_fields("héllo", True) == {"body": "héllo", "size": 6}
    assert body_fields("héllo", False) == {
        "size": 6, "sha256": hashlib.sha256("héllo".encode()).hexdigest()}  # fmt: skip
    secret = Credential.generate().reveal()
    kept = body_fields(f"the key is {secret}", True)
    assert secret not in json.dumps(kept)
    assert kept["redacted"] == ["ccc-credential"]
    assert kept["size"] == len(f"the key is {secret}")


def _exchange(relay: RunningRelay, body: str) -> Credential:
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        a.send("bob", body)
    with relay.client(bob) as b:
        assert b.inbox()
    return alice.credential


@pytest.mark.parametrize("log_all", [True, False])
def test_log_all_messages_decides_whether_bodies_are_kept(
    relay_factory, state_dir: Path, log_all: bool
) -> None:
    config = replace(make_config(state_dir),
                     audit=AuditConfig(state_dir / "audit", log_all_messages=log_all))  # fmt: skip
    relay = relay_factory(config=config, clock=FakeClock(T0))
    _exchange(relay, "the API changed")
    relay.stop()
    [accepted] = [r for r in all_lines(config.audit.log_path) if r["event"] == "accepted"]
    if log_all:
        assert accepted["body"] == "the API changed"
    else:
        assert "body" not in accepted
        assert accepted["sha256"] == hashlib.sha256(b"the API changed").hexdigest()
    kept = any(b"the API changed" in p.read_bytes() for p in audit_files(config.audit.log_path))
    assert kept == log_all


def test_no_credential_ever_reaches_an_audit_line(relay_factory, state_dir: Path) -> None:
    relay = relay_factory(clock=FakeClock(T0))
    guessed = Credential.generate().reveal()  # what an attacker tries
    secret = _exchange(relay, "hello").reveal()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(relay.config.socket_path))
        sock.sendall(json.dumps({"type": "hello", "agent": "alice",
                                 "credential": guessed}).encode() + b"\n")  # fmt: skip
        assert b"auth_failed" in sock.recv(65536)
    alice = relay.add_agent("carol")
    relay.allow("carol", "bob")
    with relay.client(alice) as c:  # an agent pasting a credential into a message
        c.send("bob", f"use {secret} and {guessed} and {alice.credential.reveal()}")
    relay.stop()
    files = audit_files(relay.config.audit.log_path)
    events = {r["event"] for r in all_lines(relay.config.audit.log_path)}
    assert {"authenticated", "auth_refused", "accepted"} <= events or {
        "authenticated", "refused", "accepted"} <= events  # fmt: skip
    for path in files:
        data = path.read_bytes()
        for credential in (secret, guessed, alice.credential.reveal()):
            assert credential.encode() not in data, path
            assert credential.split(".", 1)[1].encode() not in data, path


def test_a_real_relay_chain_verifies_across_a_restart(relay_factory, state_dir: Path) -> None:
    clock = FakeClock(T0 + 100)
    relay = relay_factory(clock=clock)
    _exchange(relay, "before the restart")
    relay.stop()
    clock.advance(DAY)  # the second run writes into the next day's file
    relay = relay_factory(clock=clock)
    alice = relay.add_agent("dave")
    relay.allow("dave", "bob")
    with relay.client(alice) as d:
        d.send("bob", "after the restart")
    relay.stop()
    log_dir = relay.config.audit.log_path
    records = all_lines(log_dir)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert [r["event"] for r in records].count("daemon_started") == 2
    recorded = read_recorded_head(relay.config.db_path)
    assert recorded is not None
    assert recorded.seq == records[-1]["seq"]
    report = verify_log(log_dir, recorded=recorded)
    assert report.ok, report.problem
    assert report.files == 2
