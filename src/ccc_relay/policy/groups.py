"""Groups: named lists of agents that one send reaches (``to: "@reviewers"``).

A group is a name and its members. The operator defines groups in the config
file (``groups:``, read at start and on ``reload``) and at run time
(``ccc group add``, kept in relay.db); a group's members are the union of both,
as the pair policy is the union of the file's and the admin plane's rules.

A group grants nothing: a send to ``@reviewers`` reaches only the members the
pair policy lets the sender write to, each as its own message. Group names
follow the agent name rules and are written with a leading ``@`` on the wire,
so ``@alice`` is always a group and ``alice`` always an agent: the two can
never be taken for one another. Groups do not nest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ccc_relay.policy.errors import ConfigError
from ccc_relay.protocol.names import MAX_GROUP_MEMBERS, agent_name_problem

GROUP_PREFIX = "@"
MAX_GROUPS = 1024  # groups in the config file and in relay.db, each; bounds the table's memory


@dataclass(frozen=True, slots=True)
class Group:
    """A group as one source declares it: its name (without ``@``) and members."""

    name: str
    members: tuple[str, ...]


def group_name_problem(name: str) -> str | None:
    """Why ``name`` (without its ``@``) cannot name a group, or None."""
    problem = agent_name_problem(name)
    return problem.replace("an agent name", "a group name") if problem else None


def parse_groups(section: object) -> tuple[Group, ...]:
    """The config file's ``groups:`` section: a mapping of name to a list of
    agent names. Raises ConfigError naming the key and the value."""
    if section is None:
        return ()
    if not isinstance(section, Mapping):
        raise ConfigError(
            f"groups: expected a mapping of group name to a list of agents, got {section!r}"
        )
    if len(section) > MAX_GROUPS:
        raise ConfigError(f"groups: {len(section)} groups; at most {MAX_GROUPS}")
    groups: list[Group] = []
    for key, members in section.items():
        name = key[1:] if isinstance(key, str) and key.startswith(GROUP_PREFIX) else key
        if not isinstance(name, str):
            raise ConfigError(f"groups: {key!r} -- a group name is text")
        problem = group_name_problem(name)
        if problem:
            raise ConfigError(f"groups.{key}: {problem}")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise ConfigError(f"groups.{key}: expected a list of agent names, got {members!r}")
        for member in members:
            if member.startswith(GROUP_PREFIX):
                raise ConfigError(f"groups.{key}: {member!r} -- groups do not nest; name agents")
            problem = agent_name_problem(member)
            if problem:
                raise ConfigError(f"groups.{key}: {member!r} -- {problem}")
        unique = tuple(dict.fromkeys(members))
        if not unique:
            raise ConfigError(f"groups.{key}: a group needs at least one member")
        if len(unique) > MAX_GROUP_MEMBERS:
            raise ConfigError(
                f"groups.{key}: {len(unique)} members; a group has at most {MAX_GROUP_MEMBERS}"
            )
        groups.append(Group(name, unique))
    return tuple(groups)


class GroupTable:
    """Every group the relay knows, from the config file and from relay.db.

    ``members`` is the one lookup the message path makes; the rest serves the
    admin plane.
    """

    __slots__ = ("_admin", "_config", "_members")

    def __init__(
        self, configured: Iterable[Group] = (), stored: Iterable[tuple[str, str]] = ()
    ) -> None:
        """``stored``: (group, member) rows from relay.db."""
        self._config = {g.name: g.members for g in configured}
        admin: dict[str, list[str]] = {}
        for group, member in stored:
            admin.setdefault(group, []).append(member)
        self._admin = {name: tuple(members) for name, members in admin.items()}
        self._members: dict[str, tuple[str, ...]] = {}
        for name in {*self._config, *self._admin}:
            both = (*self._config.get(name, ()), *self._admin.get(name, ()))
            self._members[name] = tuple(dict.fromkeys(both))

    def members(self, name: str) -> tuple[str, ...] | None:
        """The members of group ``name`` (without ``@``); None for no such group."""
        return self._members.get(name)

    def stored(self) -> list[str]:
        """The names of the groups relay.db holds."""
        return list(self._admin)

    def stored_members(self, name: str) -> tuple[str, ...]:
        return self._admin.get(name, ())

    def in_config(self, name: str) -> bool:
        return name in self._config

    def with_source(self) -> list[dict[str, object]]:
        """One row per group and source: ``{"group", "members", "source"}``."""
        rows: list[dict[str, object]] = [
            {"group": name, "members": list(members), "source": "config"}
            for name, members in self._config.items()
        ]
        rows += [
            {"group": name, "members": list(members), "source": "admin"}
            for name, members in self._admin.items()
        ]
        return sorted(rows, key=lambda r: (str(r["group"]), str(r["source"])))
