"""``ccc audit tail``, ``search`` and ``pubkey`` as an operator runs them, plus their readers.

The log is written by the real writer with fixed timestamps; the commands run
as installed console scripts against it. Following is tested on the reader
directly (no waiting) and once end to end across a day rollover.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from pathlib import Path

import pytest

from ccc_relay.audit.files import audit_files
from ccc_relay.audit.log import AuditLog, AuditRecord
from ccc_relay.audit.query import Follower, Query, human_line, json_line, parse_when, tail
from ccc_relay.audit.signing import load_or_create_signing_key, public_base64
from tests.support import BIN, run_cli

DAY = 86400.0
T0 = 1_714_521_600.0  # 2024-05-01 00:00:00 UTC


def write(log_dir: Path, *records: AuditRecord) -> None:
    log = AuditLog(log_dir)
    try:
        log.append(list(records))
    finally:
        log.close()


def accepted(ts: float, sender: str, to: str, body: str) -> AuditRecord:
    return AuditRecord(ts, "accepted", {"id": f"m_{int(ts)}", "from": sender, "to": to,
                                        "body": body, "size": len(body)})  # fmt: skip


def refused(ts: float, agent: str, to: str, code: str) -> AuditRecord:
    return AuditRecord(ts, "refused", {"agent": agent, "to": to, "code": code,
                                       "reason": f"{code} for {agent}"})  # fmt: skip


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    write(path / "audit",
          accepted(T0 + 3600, "alice", "bob", "the API changed"),
          refused(T0 + 3700, "mallory", "bob", "forbidden"),
          accepted(T0 + DAY + 60, "bob", "alice", "on it, updating the client"),
          refused(T0 + DAY + 120, "alice", "bob", "rate_limited"),
          accepted(T0 + 2 * DAY + 5, "alice", "carol", "API docs are out"))  # fmt: skip
    return path


def ccc_audit(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("ccc", "audit", *args, env={"CCC_CACHE_DIR": str(state), "CCC_CONFIG": ""})


def seqs(output: str) -> list[int]:
    return [json.loads(line)["seq"] for line in output.splitlines()]


# --- tail -------------------------------------------------------------------------------


def test_tail_prints_the_last_lines_across_day_files(state: Path) -> None:
    done = ccc_audit(state, "tail", "-n", "4", "--json")
    assert done.returncode == 0, done.stderr
    assert seqs(done.stdout) == [5, 6, 7, 8]  # the end of 2024-05-02, then 05-03
    human = ccc_audit(state, "tail", "-n", "1").stdout.splitlines()
    assert human == ["2024-05-03 00:00:05Z  #8  accepted  alice->carol  'API docs are out'"]


def test_tail_shows_who_whom_and_the_code(state: Path) -> None:
    done = ccc_audit(state, "tail", "-n", "3")
    line = done.stdout.splitlines()[0]
    assert line.startswith("2024-05-02 00:02:00Z  #6  refused  alice->bob  [rate_limited]")


def test_the_reader_follows_new_lines_and_the_next_days_file(tmp_path: Path) -> None:
    log_dir = tmp_path / "audit"
    log = AuditLog(log_dir)
    log.append([accepted(T0 + 10, "alice", "bob", "one")])
    follower = Follower(log_dir)
    assert follower.poll() == []
    log.append([accepted(T0 + 20, "alice", "bob", "two")])
    assert [r["body"] for r in follower.poll()] == ["two"]
    # The last line of one day and the first of the next, in one batch.
    log.append([accepted(T0 + DAY - 1, "alice", "bob", "late"),
                accepted(T0 + DAY + 1, "alice", "bob", "early")])  # fmt: skip
    got = follower.poll()
    assert [r["event"] for r in got] == ["accepted", "file_opened", "accepted"]
    assert [r.get("body") for r in got] == ["late", None, "early"]
    log.close()
    assert follower.path == audit_files(log_dir)[-1]


def test_the_reader_waits_for_the_rest_of_a_half_written_line(tmp_path: Path) -> None:
    log_dir = tmp_path / "audit"
    write(log_dir, accepted(T0, "alice", "bob", "one"))
    follower = Follower(log_dir)
    [path] = audit_files(log_dir)
    line = json.dumps({"seq": 3, "ts": T0 + 1, "prev": "0" * 64, "event": "x"}).encode()
    with open(path, "ab") as f:
        f.write(line[:10])
        f.flush()
        assert follower.poll() == []
        f.write(line[10:] + b"\n")
    assert [r["seq"] for r in follower.poll()] == [3]


def test_the_reader_survives_retention_deleting_its_file(tmp_path: Path) -> None:
    log_dir = tmp_path / "audit"
    write(log_dir, accepted(T0, "alice", "bob", "one"))
    follower = Follower(log_dir)
    log = AuditLog(log_dir)
    log.append([accepted(T0 + 40 * DAY, "alice", "bob", "much later")])
    log.apply_retention(T0 + 40 * DAY, 30 * DAY)
    log.close()
    assert [r["event"] for r in follower.poll()] == ["file_opened", "accepted", "retention_cut"]


def test_tail_stops_where_a_follower_starts(tmp_path: Path) -> None:
    log_dir = tmp_path / "audit"
    write(log_dir, *[accepted(T0 + i, "alice", "bob", f"m{i}") for i in range(5)])
    follower = Follower(log_dir)
    write(log_dir, accepted(T0 + 10, "alice", "bob", "after"))
    before = tail(log_dir, 3, end=(follower.path, follower.offset))  # type: ignore[arg-type]
    assert [r["body"] for r in before] == ["m2", "m3", "m4"]
    assert [r["body"] for r in follower.poll()] == ["after"]


def test_tail_f_follows_across_midnight(state: Path) -> None:
    env = {**os.environ, "CCC_CACHE_DIR": str(state), "CCC_CONFIG": ""}
    with subprocess.Popen([str(BIN / "ccc"), "audit", "tail", "-f", "-n", "1", "--json"],
                          stdout=subprocess.PIPE, env=env) as proc:  # fmt: skip
        reader = LineReader(proc)
        try:
            lines = reader.read(1)
            write(state / "audit", accepted(T0 + 3 * DAY - 1, "alice", "bob", "before midnight"),
                  accepted(T0 + 3 * DAY + 1, "alice", "bob", "after midnight"))  # fmt: skip
            lines += reader.read(3)
        finally:
            reader.selector.close()
            proc.terminate()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [8, 9, 10, 11]
    assert [r.get("body") for r in records[1:]] == ["before midnight", None, "after midnight"]


class LineReader:
    """Whole lines from a child's stdout, with a deadline instead of a blocking read."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.fd, selectors.EVENT_READ)
        self.buffer = b""

    def read(self, count: int, timeout: float = 15) -> list[str]:
        deadline = time.monotonic() + timeout
        while self.buffer.count(b"\n") < count:
            ready = self.selector.select(max(0.0, deadline - time.monotonic()))
            assert ready, f"only got {self.buffer!r}"
            chunk = os.read(self.fd, 65536)
            assert chunk, "the command exited"
            self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n", count)
        return [line.decode() for line in lines]


# --- search -------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    (["--from", "alice"], [2, 6, 8]),
    (["--to", "bob"], [2, 3, 6]),
    (["--from", "alice", "--to", "bob"], [2, 6]),
    (["--code", "forbidden"], [3]),
    (["--text", "api CHANGED"], [2]),
    (["--text", "api"], [2, 8]),
    (["--event", "refused", "--event", "file_opened"], [1, 3, 4, 6, 7]),
    (["--since", "2024-05-02", "--until", "2024-05-02T23:59:59Z"], [4, 5, 6]),
    (["--since", "2024-05-01T01:00:00+00:00", "--until", str(T0 + 3650)], [1, 2]),
    (["--from", "alice", "--limit", "2"], [2, 6]),
])  # fmt: skip
def test_search_filters(state: Path, args: list[str], expected: list[int]) -> None:
    done = ccc_audit(state, "search", *args, "--json")
    assert done.returncode == 0, done.stderr
    assert seqs(done.stdout) == expected


def test_search_refuses_a_time_it_cannot_read(state: Path) -> None:
    done = ccc_audit(state, "search", "--since", "yesterday-ish")
    assert done.returncode == 2
    assert "--since" in done.stderr


def test_relative_times_count_back_from_now() -> None:
    now = T0 + 10 * DAY
    assert parse_when("1h", now) == now - 3600
    assert parse_when("2d", now) == now - 2 * DAY
    assert parse_when("now", now) == now
    assert parse_when("2024-05-01", now) == T0
    assert parse_when("2024-05-01T02:00:00+02:00", now) == T0
    assert parse_when(str(T0), now) == T0
    with pytest.raises(ValueError, match="not a time"):
        parse_when("soon", now)


def test_a_query_needs_every_condition() -> None:
    record = {"seq": 5, "ts": T0, "event": "accepted", "from": "alice", "to": "bob",
              "body": "Deploy the API"}  # fmt: skip
    assert Query(sender="alice", words=("api", "deploy")).matches(record)
    assert not Query(sender="alice", words=("api", "rollback")).matches(record)
    assert not Query(since=T0 + 1).matches(record)
    assert Query(events=("accepted",), until=T0).matches(record)


# --- printing what agents wrote -------------------------------------------------------------


def test_hostile_bodies_cannot_drive_the_terminal() -> None:
    body = "ok\x1b]0;pwned\x07 \x9b31m \u202eevil\u2066 \U000e0041 tab\there"
    record = {"seq": 1, "ts": T0, "prev": "0" * 64, "event": "accepted", "from": "mallory",
              "to": "bob", "body": body}  # fmt: skip
    for text in (human_line(record), json_line(record)):
        assert text.isprintable(), repr(text)
    assert "\\u001b" in human_line(record) or "\\x1b" in human_line(record)
    assert json.loads(json_line(record)) == record  # still valid JSON, and the same data


# --- the key --------------------------------------------------------------------------------


def test_pubkey_prints_pem_or_raw_and_says_when_there_is_none(state: Path) -> None:
    missing = ccc_audit(state, "pubkey")
    assert missing.returncode == 4
    assert "ccc-statusd creates it" in missing.stderr
    key = load_or_create_signing_key(state)
    raw = ccc_audit(state, "pubkey", "--raw")
    assert raw.returncode == 0
    assert raw.stdout.strip() == public_base64(key.public_key())
    pem = ccc_audit(state, "pubkey")
    assert pem.stdout.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert pem.stdout.rstrip().endswith("-----END PUBLIC KEY-----")


# --- finding the log like every operator command ---------------------------------------------


def test_the_config_file_names_the_log_wherever_the_option_is_given(tmp_path: Path) -> None:
    log_dir = tmp_path / "elsewhere"
    write(log_dir, accepted(T0, "alice", "bob", "configured"))
    config = tmp_path / "relay.yaml"
    config.write_text(f"daemon:\n  state_dir: {tmp_path}/st\n  audit:\n    log_path: {log_dir}\n")
    env = {"CCC_CACHE_DIR": str(tmp_path / "unused"), "CCC_CONFIG": ""}
    for args in (["--config", str(config), "audit", "tail"],
                 ["audit", "tail", "--config", str(config)]):  # fmt: skip
        done = run_cli("ccc", *args, "--json", env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[-1])["body"] == "configured"
    via_env = run_cli("ccc", "audit", "tail", "--json", env={**env, "CCC_CONFIG": str(config)})
    assert json.loads(via_env.stdout.splitlines()[-1])["body"] == "configured"


# --- no log where it looks -------------------------------------------------------------------


def test_no_log_where_it_looks_is_not_a_clean_log(tmp_path: Path) -> None:
    """A wrong config or user looks elsewhere: that must fail, not verify 0 lines."""
    empty = tmp_path / "nc-empty"  # does not exist
    env = {"CCC_CACHE_DIR": str(empty), "CCC_CONFIG": ""}
    verify = run_cli("ccc", "audit", "verify", env=env)
    assert verify.returncode == 1 and "OK" not in verify.stdout
    assert verify.stderr.startswith(
        f"error: no audit log in {empty}/audit (the directory does not exist): "
        f"that is where the embedded defaults put it for uid {os.geteuid()}; check that this "
        "is the relay's config ('ccc --config FILE audit ...' or CCC_CONFIG) and that you run "
        "this as the relay's user"
    ), verify.stderr
    as_json = run_cli("ccc", "audit", "verify", "--json", env=env)
    error = json.loads(as_json.stdout)["error"]
    assert (as_json.returncode, error["exit"], error["code"]) == (1, 1, "no_audit_log")
    (empty / "audit").mkdir(parents=True)  # there, but no day file in it
    for command in (["tail"], ["search", "--from", "alice"], ["tail", "-f"]):
        done = run_cli("ccc", "audit", *command, "--json", env=env, timeout=20)
        assert done.returncode == 6, (command, done.stderr)
        assert f"no audit log in {empty}/audit (the directory holds no audit-DAY.jsonl" in (
            done.stderr
        )
        assert json.loads(done.stdout)["error"]["code"] == "not_found"
    config = tmp_path / "relay.yaml"
    config.write_text(f"daemon:\n  state_dir: {tmp_path}/st\n")
    named = run_cli("ccc", "--config", str(config), "audit", "verify", env=env)
    assert named.returncode == 1 and f"where the config {config} put it" in named.stderr
