"""The names federation uses on NATS, derived from host names in one place.

A host's messages travel on ``ccc.v1.<host>``; its durable consumer is
``relay-<host>``; its replies and pulled messages arrive under its own inbox prefix
``_ccc_inbox.<host>``, so a server's per-user permissions can let each relay read
only what is meant for it (tests/nats_support.py writes exactly those permissions).
"""

from __future__ import annotations

SUBJECT_PREFIX = "ccc.v1"
STREAM_SUBJECTS = f"{SUBJECT_PREFIX}.*"
# NATS subject tokens are separated by '.', and '*', '>' are wildcards; a consumer
# name may not hold them either. A host is one token.
_NOT_IN_A_TOKEN = frozenset(".*> \t\r\n")


def check_host(host: str) -> str:
    """``host`` when it can be one NATS subject token; raises ValueError otherwise."""
    if not host or any(c in _NOT_IN_A_TOKEN for c in host):
        raise ValueError(f"{host!r} cannot be a federation host name on NATS (one token, no '.')")
    return host


def subject_for(host: str) -> str:
    """The subject messages for ``host`` are published to."""
    return f"{SUBJECT_PREFIX}.{check_host(host)}"


def consumer_name(host: str) -> str:
    """The durable pull consumer ``host``'s relay reads its subject with."""
    return f"relay-{check_host(host)}"


def inbox_prefix(host: str) -> str:
    """Where ``host``'s relay receives API replies, publish-acks and pulled messages."""
    return f"_ccc_inbox.{check_host(host)}"
