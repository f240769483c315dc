"""Durable state in one SQLite file, behind a narrow interface."""

from ccc_relay.store.records import AgentRecord, SessionRecord, StoredMessage
from ccc_relay.store.sqlite import Store, StoreFailure

__all__ = ["AgentRecord", "SessionRecord", "Store", "StoreFailure", "StoredMessage"]
