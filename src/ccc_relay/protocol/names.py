"""Agent names, host names and addresses: the one rule for what may be a name.

Names end up in file paths (credential files, per-agent sockets), audit lines
and terminal output, so the alphabet is small and lower-case only: no path
separators, no ``..``, nothing a terminal interprets, and no two names that
differ only by case.

An address is ``name`` (an agent of this relay) or ``name@host`` (an agent of
the federated relay whose host name is ``host``: lower-case letters, digits,
``-`` and ``_``, at most 63 characters -- no ``.``, because a host name is one
token of a NATS subject). Local agents' names never contain ``@``.
"""

from __future__ import annotations

import re

MAX_AGENT_NAME = 64  # long enough for "team-project-role-3", short enough for a path component

# "\Z", not "$": in Python's re (which msgspec's Meta(pattern=) uses) "$" also
# matches before a final newline, and "bob\n" is not a name.
AGENT_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]|\.(?!\.)){0,63}\Z"
_AGENT_NAME = re.compile(AGENT_NAME_PATTERN)
MAX_HOST = 63  # a DNS label's length: host names are often the machine's short name
_NAME = r"[a-z0-9](?:[a-z0-9_-]|\.(?!\.)){0,63}"
_HOST = r"[a-z0-9][a-z0-9_-]{0,62}"
HOST_PATTERN = rf"^{_HOST}\Z"
_HOST_NAME = re.compile(HOST_PATTERN)
# An agent here ("bob") or an agent of another relay ("bob@build1").
ADDRESS_PATTERN = rf"^{_NAME}(?:@{_HOST})?\Z"
MAX_ADDRESS = MAX_AGENT_NAME + 1 + MAX_HOST
# Where a send may go: an address, or a group as "@" + a name of the agent alphabet.
RECIPIENT_PATTERN = rf"^(?:@{_NAME}|{_NAME}(?:@{_HOST})?)\Z"
MAX_RECIPIENT = MAX_ADDRESS
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


def host_problem(host: str) -> str | None:
    """Return why ``host`` is not a valid relay host name, or None when it is."""
    if not host:
        return "a host name cannot be empty"
    if len(host) > MAX_HOST:
        return f"a host name has at most {MAX_HOST} characters"
    if not _HOST_NAME.fullmatch(host):
        return (
            "a host name uses lower-case letters, digits, '-' and '_' (no '.': it is one "
            "token of a NATS subject), and starts with a letter or digit"
        )
    return None


def split_address(address: str) -> tuple[str, str | None]:
    """``"bob@h2"`` -> ``("bob", "h2")``; ``"bob"`` -> ``("bob", None)``. Checks nothing."""
    name, at, host = address.partition("@")
    return (name, host) if at else (name, None)


def address_problem(address: str) -> str | None:
    """Return why ``address`` is neither an agent name nor ``name@host``, or None."""
    name, host = split_address(address)
    problem = agent_name_problem(name)
    if problem is None and host is not None:
        problem = host_problem(host)
    return problem


def is_remote(address: str) -> bool:
    """Whether ``address`` names an agent of another relay (``name@host``)."""
    return "@" in address
