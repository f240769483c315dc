"""Forward-secure sealing: what an intruder holding the relay's host today cannot do.

The relay seals the log with a key that evolves one way per epoch and destroys
each epoch's key once its seal is committed. The operator exports the epoch-0
key once, at set-up. The tests play the intruder with real files and real
relays: they hold the relay user's access (every file in the state and log
dirs, the Ed25519 checkpoint key, relay.db) but not the exported seal key.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ccc_relay.audit.files import audit_files, line_hash
from ccc_relay.audit.log import AuditLog, AuditRecord
from ccc_relay.audit.recorded import Head, read_recorded_head
from ccc_relay.audit.report import Kind
from ccc_relay.audit.sealing import (
    SEED_FILE,
    STATE_FILE,
    Sealer,
    SealKey,
    destroy_seed,
    next_key,
    read_seed,
    read_state,
    seal_mac,
)
from ccc_relay.audit.signing import checkpoint_fields, load_signing_key, public_pem
from ccc_relay.audit.verify import verify_log
from ccc_relay.daemon.audit_lifecycle import read_alarms, restore_audit_outbox
from ccc_relay.store import Store
from tests.support import FakeClock, run_cli
from tests.test_relay import wait_for

T0 = 1_790_000_000.0  # a fixed noon-ish time: every run writes into one day's file
DOCS = Path(__file__).resolve().parent.parent / "docs" / "audit.md"


def ccc(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("ccc", *args, env={"CCC_CACHE_DIR": str(state), "CCC_CONFIG": ""})


def runs(relay_factory, bodies: list[str]) -> Path:
    """One relay run per body, each sealing at start and at its clean stop; the log dir."""
    clock = FakeClock(T0)
    relay = None
    for i, body in enumerate(bodies):
        relay = relay_factory(clock=clock)
        sender, _ = relay.add_agent(f"sender{i}"), relay.add_agent(f"receiver{i}")
        relay.allow(f"sender{i}", f"receiver{i}")
        with relay.client(sender) as client:
            client.send(f"receiver{i}", body)
        relay.stop()
        clock.advance(60)
    assert relay is not None
    return relay.config.audit.log_path


def export(state: Path) -> str:
    done = ccc(state, "audit", "seal-key", "export")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def records(log_dir: Path) -> list[dict]:
    return [json.loads(x) for p in audit_files(log_dir) for x in p.read_bytes().splitlines()]


def record_head(state: Path, head: Head) -> None:
    """What the intruder does to relay.db so its recorded head matches their log."""
    db = sqlite3.connect(state / "relay.db")
    db.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (str(head),))
    db.commit()
    db.close()


def rewrite(log_dir: Path, change: bytes, to: bytes, seal) -> Head:
    """The intruder's rewrite: change a body, then re-chain every line after it, re-sign
    its checkpoints with the host's own Ed25519 key, and hand each seal after the change
    to ``seal(record, head)`` (which may redo it, drop it, or keep it). Returns the head."""
    state = log_dir.parent
    ed_key = load_signing_key(state)
    seq, head, changed = 0, "0" * 64, False
    for path in audit_files(log_dir):
        out = []
        for raw in path.read_bytes().splitlines():
            record = json.loads(raw)
            if change in raw:
                record = json.loads(raw.replace(change, to))
                changed = True
            if changed:
                record["seq"], record["prev"] = seq + 1, head
                if record["event"] == "checkpoint":
                    record.update(checkpoint_fields(ed_key, seq, head, record["ts"]))
                elif record["event"] == "seal":
                    record = seal(record, seq, head)
                    if record is None:
                        continue
                line = json.dumps(record, separators=(",", ":")).encode()
            else:
                line = raw
            seq, head = record["seq"], line_hash(line)
            out.append(line + b"\n")
        path.write_bytes(b"".join(out))
    assert changed
    return Head(seq, head)


# --- the round trip ---------------------------------------------------------------------------


def test_a_real_relays_log_is_sealed_and_verifies_with_the_exported_key(
    relay_factory, state_dir: Path
) -> None:
    log_dir = runs(relay_factory, ["before the restart", "after the restart"])
    assert (state_dir / SEED_FILE).exists()  # waiting for the operator
    seal_key = export(state_dir)
    assert seal_key.startswith("ccc-audit-seal-1:") and ":0:" in seal_key
    assert not (state_dir / SEED_FILE).exists()  # printed once, then destroyed

    events = [r["event"] for r in records(log_dir)]
    assert events[-2:] == ["checkpoint", "seal"]  # a clean stop ends sealed
    seals = [r for r in records(log_dir) if r["event"] == "seal"]
    assert [s["epoch"] for s in seals] == list(range(len(seals)))  # at start and at stop
    assert len(seals) == 4
    assert read_state(state_dir).epoch == 4  # every sealed epoch's key is gone

    key_file = state_dir.parent / "seal.key"
    key_file.write_text(seal_key + "\n")
    for given in (seal_key, str(key_file)):
        done = ccc(state_dir, "audit", "verify", "--seal-key", given)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"4 seals, 4 verified with seal key {seal_key.split(':')[1]}, epochs 0..3" in (
            done.stdout
        )
    report = json.loads(ccc(state_dir, "audit", "verify", "--seal-key", seal_key, "--json").stdout)
    assert (report["ok"], report["seals_verified"], report["unsealed_tail"]) == (True, 4, None)


def test_the_seal_key_is_exported_once_and_after_that_only_from_the_current_epoch(
    relay_factory, state_dir: Path
) -> None:
    runs(relay_factory, ["one run"])
    first = export(state_dir)
    again = ccc(state_dir, "audit", "seal-key", "export")
    assert again.returncode == 1 and again.stdout == ""
    assert "exported already" in again.stderr and "--force" in again.stderr
    forced = ccc(state_dir, "audit", "seal-key", "export", "--force")
    assert forced.returncode == 0, forced.stderr
    later = SealKey.parse(forced.stdout)
    assert (later.key_id, later.epoch) == (SealKey.parse(first).key_id, 2)
    assert "cannot be verified with it" in forced.stderr
    # The current epoch's key verifies what comes after it, never what came before.
    done = ccc(state_dir, "audit", "verify", "--seal-key", forced.stdout.strip())
    assert done.returncode == 5, done.stdout + done.stderr  # nothing sealed since epoch 2
    assert "2 seal(s) of epochs before 2 were not verified" in done.stderr


# --- an unsealed tail -------------------------------------------------------------------------


def append_chained(path: Path, fields: dict) -> bytes:
    """The intruder appends a correctly chained line to ``path``; its bytes."""
    last = path.read_bytes().splitlines()[-1]
    record = json.loads(last)
    line = json.dumps({"seq": record["seq"] + 1, "ts": record["ts"] + 1, "prev": line_hash(last),
                       **fields}, separators=(",", ":")).encode()  # fmt: skip
    with open(path, "ab") as f:
        f.write(line + b"\n")
    return line


def test_a_line_appended_after_the_last_seal_is_an_unsealed_tail(
    relay_factory, state_dir: Path
) -> None:
    log_dir = runs(relay_factory, ["a real message"])
    seal_key = export(state_dir)
    [path] = audit_files(log_dir)
    forged = append_chained(path, {"event": "accepted", "from": "alice", "to": "bob",
                                   "body": "a forged message"})  # fmt: skip
    record_head(state_dir, Head(json.loads(forged)["seq"], line_hash(forged)))  # careful
    assert ccc(state_dir, "audit", "verify").returncode == 0  # the hashes cannot tell

    done = ccc(state_dir, "audit", "verify", "--seal-key", seal_key)
    assert done.returncode == 5, done.stdout + done.stderr
    seq = json.loads(forged)["seq"]
    assert f"UNSEALED TAIL: seq {seq}..{seq} (1 line(s)) follow the last verified seal" in (
        done.stdout
    )
    report = json.loads(ccc(state_dir, "audit", "verify", "--seal-key", seal_key, "--json").stdout)
    assert report["unsealed_tail"] == {"first_seq": seq, "last_seq": seq}
    allowed = ccc(state_dir, "audit", "verify", "--seal-key", seal_key, "--allow-unsealed-tail")
    assert allowed.returncode == 0 and "(allowed)" in allowed.stderr


# --- rewriting the past -----------------------------------------------------------------------


def resealed_with_the_current_key(state: Path):
    current = read_state(state)
    assert current is not None

    def seal(record: dict, seq: int, head: str) -> dict:
        record.update(sealed_seq=seq, sealed_head=head, mac=seal_mac(
            current.key, current.key_id, record["epoch"], seq, head, record["ts"]))  # fmt: skip
        return record

    return seal


def test_rewriting_a_past_epoch_fails_even_resealed_with_the_current_key(
    relay_factory, state_dir: Path
) -> None:
    log_dir = runs(relay_factory, ["pay 10 dollars", "an unrelated later message"])
    seal_key = export(state_dir)
    pub = state_dir.parent / "audit.pub"
    pub.write_text(public_pem(load_signing_key(state_dir).public_key()))  # exported before
    record_head(state_dir, rewrite(log_dir, b"pay 10 dollars", b"pay 99 dollars",
                                   resealed_with_the_current_key(state_dir)))  # fmt: skip

    done = ccc(state_dir, "audit", "verify", "--pubkey", str(pub))
    assert done.returncode == 0, done.stdout  # the checkpoint key re-signs the past
    done = ccc(state_dir, "audit", "verify", "--pubkey", str(pub), "--seal-key", seal_key)
    assert done.returncode == 1
    # The message went out in epoch 1 (epoch 0 sealed the first start): its seal fails.
    assert done.stdout.startswith("FAIL: forged seal at ")
    assert "the seal of epoch 1 does not verify" in done.stdout
    report = json.loads(ccc(state_dir, "audit", "verify", "--seal-key", seal_key, "--json").stdout)
    assert (report["problem"]["kind"], report["bad_epoch"]) == ("forged seal", 1)
    assert report["seals_verified"] == 1  # epoch 0, before the change, still holds


def seal_once_with_the_current_key(state: Path, path: Path, head: Head) -> None:
    """Append one seal of everything up to ``head``, made with the current epoch's key."""
    current = read_state(state)
    assert current is not None
    seal = {"seq": head.seq + 1, "ts": T0 + 999, "prev": head.hash, "event": "seal",
            "key_id": current.key_id, "epoch": current.epoch, "sealed_seq": head.seq,
            "sealed_head": head.hash, "mac": seal_mac(current.key, current.key_id,
                                                      current.epoch, head.seq, head.hash,
                                                      T0 + 999)}  # fmt: skip
    line = json.dumps(seal, separators=(",", ":")).encode()
    with open(path, "ab") as f:
        f.write(line + b"\n")
    record_head(state, Head(head.seq + 1, line_hash(line)))


def test_dropping_the_past_seals_and_sealing_once_with_the_current_key_fails(
    relay_factory, state_dir: Path
) -> None:
    log_dir = runs(relay_factory, ["pay 10 dollars", "an unrelated later message"])
    seal_key = export(state_dir)
    [path] = audit_files(log_dir)
    head = rewrite(log_dir, b"pay 10 dollars", b"pay 99 dollars", lambda *_: None)
    seal_once_with_the_current_key(state_dir, path, head)

    report = json.loads(ccc(state_dir, "audit", "verify", "--seal-key", seal_key, "--json").stdout)
    assert report["problem"]["kind"] == "missing seal", report
    assert (
        "a seal of epoch 4 follows epoch 0: the seals of epochs 1..3 are missing"
        in (report["problem"]["detail"])
    )
    assert report["bad_epoch"] == 1


def test_dropping_every_seal_and_sealing_once_with_the_current_key_fails(
    relay_factory, state_dir: Path
) -> None:
    log_dir = runs(relay_factory, ["one run", "another run"])
    seal_key = export(state_dir)
    # A change before the first seal: every seal has to go.
    head = rewrite(log_dir, b'"event":"daemon_started"', b'"event":"daemon_started","x":1',
                   lambda *_: None)  # fmt: skip
    [path] = audit_files(log_dir)
    seal_once_with_the_current_key(state_dir, path, head)
    report = json.loads(ccc(state_dir, "audit", "verify", "--seal-key", seal_key, "--json").stdout)
    assert report["problem"]["kind"] == "missing seal", report
    assert "is of epoch 4: the seals of epochs 0..3 are missing" in report["problem"]["detail"]
    assert report["bad_epoch"] == 0


def test_a_running_relay_destroys_a_sealed_epochs_key_right_after_the_seal(
    relay_factory, state_dir: Path
) -> None:
    relay = relay_factory(clock=FakeClock(T0))
    wait_for(lambda: any(r["event"] == "seal" for r in records(relay.config.audit.log_path)))
    wait_for(lambda: read_state(state_dir).epoch == 1)  # not 5 minutes later, at the next seal
    relay.stop()


# --- the documented stand-alone check -------------------------------------------------------


def documented_script() -> str:
    block = DOCS.read_text().split("<!-- seal-check.py -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_seal_script_in_the_docs_checks_seals_with_python_alone(
    relay_factory, state_dir: Path, tmp_path: Path
) -> None:
    log_dir = runs(relay_factory, ["pay 10 dollars", "an unrelated later message"])
    seal_key = export(state_dir)
    script = tmp_path / "seal-check.py"
    script.write_text(documented_script())

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-I", str(script), seal_key, str(log_dir)],
                              capture_output=True, text=True, check=False)  # fmt: skip

    done = check()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "seals verified up to epoch 3 (seq 24); 0 line(s) after it"
    original = {p: p.read_bytes() for p in audit_files(log_dir)}
    # Old seals kept verbatim over a re-chained log: they no longer seal what precedes them.
    rewrite(log_dir, b"pay 10 dollars", b"pay 99 dollars", lambda record, *_: record)
    done = check()
    assert done.returncode == 1 and "does not seal the line before it" in done.stderr
    for path, data in original.items():
        path.write_bytes(data)
    rewrite(log_dir, b"pay 10 dollars", b"pay 99 dollars",
            resealed_with_the_current_key(state_dir))  # fmt: skip
    done = check()
    assert done.returncode == 1 and "FORGED: the seal of epoch 1 at seq 13" in done.stderr


# --- the key on disk --------------------------------------------------------------------------


def test_the_key_file_after_an_epoch_change_cannot_give_back_the_previous_key(
    tmp_path: Path,
) -> None:
    sealer = Sealer.open(tmp_path)
    seed = read_seed(tmp_path)
    assert seed is not None and (seed.epoch, seed.key_id) == (0, sealer.key_id)
    path = tmp_path / STATE_FILE
    inode = path.stat().st_ino
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    mac0 = seal_mac(seed.key, seed.key_id, 0, 5, "ab" * 32, T0)
    assert sealer.fields(5, "ab" * 32, T0)["mac"] == mac0
    sealer.evolve()
    sealer.close()
    link = tmp_path / "seed-link"  # another name for the seed's bytes, as a snapshot would be
    os.link(tmp_path / SEED_FILE, link)
    destroy_seed(tmp_path)  # what the export does once it printed the seed
    assert not (tmp_path / SEED_FILE).exists()
    assert link.read_bytes().strip(b"\0") == b""  # overwritten, not only unlinked

    data = path.read_bytes()
    assert path.stat().st_ino == inode  # overwritten in place, not replaced beside a copy
    assert seed.key.hex().encode() not in data and seed.key not in data
    current = read_state(tmp_path)
    assert current is not None and current.epoch == 1
    assert current.key == next_key(seed.key)  # derived one way from the old key
    key = current.key
    for epoch in range(1, 200):  # nothing the file leads to makes epoch 0's key or seal
        assert key != seed.key
        assert seal_mac(key, seed.key_id, 0, 5, "ab" * 32, T0) != mac0
        assert seal_mac(key, seed.key_id, epoch, 5, "ab" * 32, T0) != mac0
        key = next_key(key)


def test_after_export_no_file_on_the_host_holds_a_past_epochs_key(
    relay_factory, state_dir: Path
) -> None:
    runs(relay_factory, ["one run", "another run"])
    seed = SealKey.parse(export(state_dir))
    current = read_state(state_dir)
    assert current is not None and current.epoch == 4
    past, key = [], seed.key
    for _ in range(current.epoch):
        past.append(key)
        key = next_key(key)
    assert key == current.key
    for path in state_dir.rglob("*"):
        if path.is_file() and not path.is_socket():
            data = path.read_bytes()
            for old in past:
                assert old not in data and old.hex().encode() not in data, path


# --- a crash around a seal --------------------------------------------------------------------


def commit(store: Store, log: AuditLog) -> None:
    """What the committer's commit does for the audit: record the head."""
    store.set_meta("audit_head", f"{log.seq} {log.head}")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def open_log(state: Path) -> AuditLog:
    log = AuditLog(state / "audit")
    log.sealer = Sealer.open(state)
    return log


def test_a_seal_that_was_never_committed_keeps_its_key_and_seals_again(state: Path) -> None:
    store = Store(state / "relay.db")
    log = open_log(state)
    seed = read_seed(state)
    assert seed is not None
    log.append([AuditRecord(T0 + i, "accepted", {"n": i}) for i in range(3)])
    commit(store, log)
    assert log.seal(T0 + 10)
    log.close()  # the process dies before the commit that would record the seal

    log = open_log(state)
    restore_audit_outbox(store, log, T0 + 20)  # the uncommitted seal is set apart
    assert read_alarms(store) == []  # a crash, not an intruder
    assert log.sealer is not None and log.sealer.epoch == 0  # its key was not destroyed
    assert log.seal(T0 + 22)
    commit(store, log)
    assert log.settle_seal(log.seq)
    log.close()

    report = verify_log(state / "audit", recorded=read_recorded_head(state / "relay.db"),
                        seal_key=seed)  # fmt: skip
    assert report.ok, report.problem
    assert (report.seals_verified, report.sealed_epochs, report.unsealed) == (1, (0, 0), None)
    store.close()


def test_a_committed_seal_whose_key_was_not_destroyed_yet_is_settled_at_start(
    state: Path,
) -> None:
    store = Store(state / "relay.db")
    log = open_log(state)
    seed = read_seed(state)
    log.append([AuditRecord(T0, "accepted", {"n": 1})])
    assert log.seal(T0 + 1)
    assert not log.settle_seal(log.seq - 1)  # not committed yet: the key stays
    commit(store, log)
    log.close()  # the process dies before the key is destroyed

    log = open_log(state)
    assert log.sealer is not None and log.sealer.epoch == 0
    restore_audit_outbox(store, log, T0 + 2)
    assert log.sealer.epoch == 1  # destroyed now, before anything else is sealed
    assert read_alarms(store) == []
    log.append([AuditRecord(T0 + 3, "accepted", {"n": 2})])
    assert log.seal(T0 + 4)
    commit(store, log)
    log.close()
    report = verify_log(state / "audit", recorded=read_recorded_head(state / "relay.db"),
                        seal_key=seed)  # fmt: skip
    assert report.ok, report.problem
    assert report.sealed_epochs == (0, 1)
    store.close()


def test_a_rolled_back_seal_is_taken_back_with_its_batch(state: Path) -> None:
    log = open_log(state)
    log.append([AuditRecord(T0, "accepted", {"n": 1})])
    mark = log.mark()
    log.append_unsynced([AuditRecord(T0 + 1, "accepted", {"n": 2})])
    assert log.seal(T0 + 2)
    log.rewind(mark)  # the transaction failed: the seal never happened
    assert log.sealer is not None and log.sealer.epoch == 0
    assert log.seal(T0 + 3)  # epoch 0 again: nothing was destroyed for the one taken back
    assert [r["epoch"] for r in records(state / "audit") if r["event"] == "seal"] == [0]
    log.close()


def test_a_damaged_or_exposed_seal_key_file_is_refused(state: Path) -> None:
    Sealer.open(state).close()
    path = state / STATE_FILE
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="readable by others"):
        Sealer.open(state)
    os.chmod(path, 0o600)
    data = bytearray(path.read_bytes())
    data[40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        Sealer.open(state)


def test_verify_reports_a_seal_that_does_not_seal_the_line_before_it(state: Path) -> None:
    log = open_log(state)
    seed = read_seed(state)
    log.append([AuditRecord(T0, "accepted", {"n": 1})])
    assert log.seal(T0 + 1)
    log.close()
    [path] = audit_files(state / "audit")
    lines = path.read_bytes().splitlines()
    lines[-1] = lines[-1].replace(b'"sealed_seq":', b'"sealed_seq":1', 1)
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = verify_log(state / "audit", seal_key=seed)
    assert report.problem is not None and report.problem.kind == Kind.EDITED
    assert "does not seal the line before it" in report.problem.detail
