"""Durable state in one SQLite file, behind a narrow interface."""

from ccc_relay.store.sqlite import AgentRecord, SessionRecord, Store, StoredMessage, StoreFailure

__all__ = ["AgentRecord", "SessionRecord", "Store", "StoreFailure", "StoredMessage"]
