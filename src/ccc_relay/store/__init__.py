"""Durable state in one SQLite file, behind a narrow interface.

The typed rows (``records``) and operations (``ops``) import no SQLite, so the
relay core can name them; ``Store`` itself is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ccc_relay.store.records import AgentRecord, SessionRecord, StoredMessage

if TYPE_CHECKING:
    from ccc_relay.store.sqlite import Store, StoreFailure

__all__ = ["AgentRecord", "SessionRecord", "Store", "StoreFailure", "StoredMessage"]


def __getattr__(name: str) -> Any:
    if name in ("Store", "StoreFailure"):
        from ccc_relay.store import sqlite

        return getattr(sqlite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
