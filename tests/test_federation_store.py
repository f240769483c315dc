"""relay.db's federation tables: the outbox in order until the stream acks, the
keys of stored envelopes and the ids sent to each host until swept, and an older
file brought up to the current schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ccc_relay.store import Store, StoredMessage
from ccc_relay.store.ops import (
    DeleteForwarded,
    ForgetSeen,
    HoldAndForward,
    ReadArrivalState,
    ReadOutbox,
    StoreArrivals,
)
from ccc_relay.store.records import OutboxEntry
from ccc_relay.store.schema import SCHEMA_VERSION


def entry(n: int, to_host: str = "h2") -> OutboxEntry:
    return OutboxEntry(
        stream_id=f"m_abcdefgh{n:x}",
        to_host=to_host,
        sender="alice",
        recipient=f"bob@{to_host}",
        size=5,
        payload=b'{"kind":"message"}',
        created=100.0 + n,
    )


def message(mid: str, delivery: int, sender: str = "alice@h1") -> StoredMessage:
    return StoredMessage(
        id=mid, sender=sender, recipient="bob", body="hi", sent_at=1.0, delivery=delivery
    )


def test_the_outbox_keeps_order_until_the_stream_acks(tmp_path: Path) -> None:
    store = Store(tmp_path / "relay.db")
    HoldAndForward(held=(), outbox=[entry(1), entry(2), entry(3, "h3")]).apply(store)
    rows = ReadOutbox(10).apply(store)
    assert [r.stream_id for r in rows] == ["m_abcdefgh1", "m_abcdefgh2", "m_abcdefgh3"]
    assert rows[0].payload == b'{"kind":"message"}' and rows[2].to_host == "h3"
    later = ReadOutbox(10, after=rows[0].seq).apply(store)
    assert [r.stream_id for r in later] == ["m_abcdefgh2", "m_abcdefgh3"]
    assert store.outbox_totals() == [("alice", "bob@h2", 2, 10), ("alice", "bob@h3", 1, 5)]
    assert DeleteForwarded(("m_abcdefgh2", "m_unknown1")).apply(store) == [("alice", "bob@h2", 5)]
    store.close()
    again = Store(tmp_path / "relay.db")  # durable across a restart
    assert [r.stream_id for r in ReadOutbox(10).apply(again)] == ["m_abcdefgh1", "m_abcdefgh3"]


def test_arrivals_are_remembered_and_forgotten_after_a_day(tmp_path: Path) -> None:
    store = Store(tmp_path / "relay.db")
    store.insert_messages([message("m_localid01", 1, sender="carol")])
    keys = ("h1/m_remote001", "h1/m_remote002")
    assert ReadArrivalState(keys, ("m_remote001", "m_localid01")).apply(store) == (
        set(),
        {"m_localid01"},
        {},
    )
    StoreArrivals(
        messages=[message("m_remote001", 2)],
        held=[message("m_remote002", 3)],
        seen=keys,
        outbox=[entry(9, "h1")],
        at=1000.0,
    ).apply(store)
    seen, in_use, _sent = ReadArrivalState(keys, ("m_remote001", "m_remote002")).apply(store)
    assert seen == set(keys) and in_use == {"m_remote001", "m_remote002"}
    assert [m.sender for m in store.due("bob", 10.0, 10)] == ["carol", "alice@h1"]
    assert ForgetSeen(1000.0).apply(store) == 0
    assert ForgetSeen(1000.1).apply(store) == 2
    assert ReadArrivalState(keys, ()).apply(store) == (set(), set(), {})


def test_a_version_2_file_gains_the_federation_tables(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TABLE federation_outbox; DROP TABLE federation_seen;"
        "UPDATE meta SET value = '2' WHERE key = 'schema';"
    )
    db.close()
    store = Store(path)
    HoldAndForward(held=(), outbox=[entry(1)]).apply(store)
    assert len(ReadOutbox(10).apply(store)) == 1
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("4",)
    assert SCHEMA_VERSION == 4
    db.close()


def refusal(n: int, to_host: str = "h2") -> OutboxEntry:
    return OutboxEntry(
        stream_id=f"refused:m_remote{n:03d}",
        to_host=to_host,
        sender="relay",
        recipient=f"carol@{to_host}",
        size=0,
        payload=b'{"kind":"refused"}',
        created=100.0,
    )


def test_a_message_put_in_the_outbox_is_remembered_as_sent_until_it_bounces(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "relay.db")
    HoldAndForward(held=(), outbox=[entry(1), entry(2, "h3"), refusal(1)]).apply(store)
    asked = (("m_abcdefgh1", "h2"), ("m_abcdefgh1", "h3"), ("m_abcdefgh2", "h3"))
    _seen, _in_use, sent = ReadArrivalState((), (), asked).apply(store)
    assert sent == {"h2/m_abcdefgh1": "alice", "h3/m_abcdefgh2": "alice"}  # to that host only
    # A refusal this relay sends is not a message it sent: none can bounce.
    assert ReadArrivalState((), (), (("m_remote001", "h2"),)).apply(store)[2] == {}
    # The publish-ack leaves the row; the bounce's transaction takes it.
    DeleteForwarded(("m_abcdefgh1",)).apply(store)
    StoreArrivals([], [], ("h2/refused:m_abcdefgh1",), [], 200.0, (("m_abcdefgh1", "h2"),)).apply(
        store
    )
    assert ReadArrivalState((), (), asked).apply(store)[2] == {"h3/m_abcdefgh2": "alice"}
    # Dropped unpublished (too large for the server): nothing can refuse it.
    DeleteForwarded(("m_abcdefgh2",), unsent_to="h3").apply(store)
    assert ReadArrivalState((), (), asked).apply(store)[2] == {}
    HoldAndForward(held=(), outbox=[entry(5)]).apply(store)  # created 105.0
    ForgetSeen(105.0).apply(store)
    assert ReadArrivalState((), (), (("m_abcdefgh5", "h2"),)).apply(store)[2] != {}
    ForgetSeen(105.1).apply(store)  # swept with the seen keys
    assert ReadArrivalState((), (), (("m_abcdefgh5", "h2"),)).apply(store)[2] == {}


def test_a_version_3_file_remembers_what_its_outbox_holds_as_sent(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = Store(path)
    HoldAndForward(held=(), outbox=[entry(1), refusal(1)]).apply(store)
    store.close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TABLE federation_sent; UPDATE meta SET value = '3' WHERE key = 'schema';"
    )
    db.close()
    store = Store(path)
    asked = (("m_abcdefgh1", "h2"), ("m_remote001", "h2"))
    assert ReadArrivalState((), (), asked).apply(store)[2] == {"h2/m_abcdefgh1": "alice"}
    StoreArrivals([], [], (), [], 200.0, (("m_abcdefgh1", "h2"),)).apply(store)
    store.close()
    store = Store(path)  # a current file is not filled again
    assert ReadArrivalState((), (), asked).apply(store)[2] == {}
    store.close()
