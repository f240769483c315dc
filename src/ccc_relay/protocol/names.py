"""Agent names: the one rule for what may be a name.

Names end up in file paths (credential files, per-agent sockets), audit lines
and terminal output, so the alphabet is small and lower-case only: no path
separators, no ``..``, nothing a terminal interprets, and no two names that
differ only by case.
"""

from __future__ import annotations

import re

MAX_AGENT_NAME = 64  # long enough for "team-project-role-3", short enough for a path component

# "\Z", not "$": in Python's re (which msgspec's Meta(pattern=) uses) "$" also
# matches before a final newline, and "bob\n" is not a name.
AGENT_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]|\.(?!\.)){0,63}\Z"
_AGENT_NAME = re.compile(AGENT_NAME_PATTERN)
# Where a send may go: an agent, or a group as "@" + a name of the same alphabet.
RECIPIENT_PATTERN = "^@?" + AGENT_NAME_PATTERN[1:]
MAX_RECIPIENT = MAX_AGENT_NAME + 1
# Members of one group, from all its sources: one send to a group is one
# transaction with a message row and an audit line per member, and one answer
# naming each, so a group's size bounds the work a single frame can ask for.
MAX_GROUP_MEMBERS = 256

# Names the relay itself speaks as; no agent may take them.
RESERVED_NAMES = frozenset({"operator", "relay", "admin", "root"})


def agent_name_problem(name: str) -> str | None:
    """Return why ``name`` is not a valid agent name, or None when it is."""
    if not name:
        return "an agent name cannot be empty"
    if len(name) > MAX_AGENT_NAME:
        return f"an agent name has at most {MAX_AGENT_NAME} characters"
    if not _AGENT_NAME.fullmatch(name):
        return (
            "an agent name uses lower-case letters, digits, '-', '_' and single '.', "
            "and starts with a letter or digit"
        )
    if name in RESERVED_NAMES:
        return f"{name!r} is reserved for the relay"
    return None


def is_agent_name(name: str) -> bool:
    return agent_name_problem(name) is None
