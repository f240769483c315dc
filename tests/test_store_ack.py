"""Acks in the store: a message in flight is deleted by its delivery number without
reading its body back, and what an ack reports is always what was really deleted.

A real SQLite file in a temporary directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ccc_relay.store import Store, StoredMessage

T0 = 1_714_521_600.0


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "relay.db")
    yield store
    store.close()


def queue(store: Store, *messages: tuple[int, str, str, str]) -> None:
    """(delivery, sender, recipient, body) rows, committed."""
    store.begin()
    rows = [
        StoredMessage(
            id=f"m_acktest{n:x}",
            sender=sender,
            recipient=recipient,
            body=body,
            sent_at=T0,
            delivery=n,
        )
        for n, sender, recipient, body in messages
    ]
    store.insert_messages(rows)
    store.commit()


def ack(store: Store, recipient: str, known=(), by_id=()) -> list[tuple[str, int]]:
    store.begin()
    deleted = store.ack(recipient, known, by_id)
    store.commit()
    return deleted


def test_known_messages_are_deleted_and_reported_as_the_relay_knew_them(store: Store) -> None:
    queue(store, (1, "alice", "bob", "one"), (2, "carol", "bob", "two!"), (3, "alice", "bob", "x"))
    assert ack(store, "bob", [(1, "alice", 3), (2, "carol", 4)]) == [("alice", 3), ("carol", 4)]
    assert [m.delivery for m in store.due("bob", T0, 10)] == [3]


def test_a_known_message_already_gone_is_not_reported(store: Store) -> None:
    queue(store, (1, "alice", "bob", "one"), (2, "carol", "bob", "zwei ü"))
    # By id the row is read back: its size in UTF-8 bytes, not characters.
    assert ack(store, "bob", by_id=["m_acktest2"]) == [("carol", 7)]
    # The relay still thought 2 was in flight: only the rows the store held count.
    assert ack(store, "bob", [(1, "alice", 3), (2, "carol", 7)]) == [("alice", 3)]
    assert store.pending_count("bob") == 0


def test_only_the_recipients_own_rows_are_deleted(store: Store) -> None:
    queue(store, (1, "alice", "bob", "for bob"), (2, "alice", "carol", "for carol"))
    assert ack(store, "bob", [(2, "alice", 9)], ["m_acktest2"]) == []
    assert store.pending_count("carol") == 1
    assert ack(store, "bob", [(1, "alice", 7)]) == [("alice", 7)]


def test_a_long_ack_is_deleted_in_chunks(store: Store) -> None:
    queue(store, *[(n, "alice", "bob", "b") for n in range(1, 1201)])
    known = [(n, "alice", 1) for n in range(1, 1201) if n != 600]
    assert ack(store, "bob", known, ["m_acktest258"]) == [("alice", 1)] * 1200
    assert store.pending_count("bob") == 0
