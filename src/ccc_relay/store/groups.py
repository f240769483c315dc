"""Groups the operator defines at run time (``ccc group add``): one row per
(group, member), beside the pair rules of ``agents.py``. The config file's
groups are never stored; the core unites both (``policy/groups.py``).

A mixin of ``Store``: it uses the store's connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable


class GroupRegistry:
    # Provided by Store.
    _db: sqlite3.Connection

    def group_members(self) -> list[tuple[str, str]]:
        """Every (group, member) row, by group, in the order members were added."""
        rows = self._db.execute("SELECT grp, member FROM group_members ORDER BY grp, rowid")
        return [(str(g), str(m)) for g, m in rows]

    def add_group_members(self, group: str, members: Iterable[str]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO group_members (grp, member) VALUES (?, ?)",
            [(group, member) for member in members],
        )

    def remove_group_members(self, group: str, members: Iterable[str] | None) -> int:
        """Remove these members (None: the whole group); how many rows went."""
        if members is None:
            return self._db.execute("DELETE FROM group_members WHERE grp = ?", (group,)).rowcount
        return sum(
            self._db.execute(
                "DELETE FROM group_members WHERE grp = ? AND member = ?", (group, member)
            ).rowcount
            for member in members
        )
