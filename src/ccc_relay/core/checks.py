"""Checks every message gets, wherever it comes from: a local send or another
relay's envelope. Pure."""

from __future__ import annotations

from ccc_relay.policy.sanitize import Sanitized
from ccc_relay.policy.sanitize_unicode import strip_unicode
from ccc_relay.protocol.codec import body_size
from ccc_relay.protocol.errors import ErrorCode, ProtocolError, Refusal

# Normalisations that say nothing about intent; the rest count towards the
# "sanitized" anomaly rule.
BENIGN_CHANGES = frozenset({"newline", "nfc"})


def findings(cleaned: Sanitized | None) -> int:
    """What the sanitiser removed that says something about the sender's intent."""
    if cleaned is None or not cleaned.changes:
        return 0
    return sum(n for kind, n in cleaned.changes.items() if kind not in BENIGN_CHANGES)


def clean_thread(thread: str) -> str:
    """A thread name as it may reach a terminal or a model: one line, no control,
    bidi or invisible characters."""
    if thread.isascii() and thread.isprintable():
        return thread
    cleaned = strip_unicode(thread, {})
    return " ".join(cleaned.split()) if not cleaned.isprintable() else cleaned


def size_refusal(body: str, limit: int, *, closes: bool = True) -> Refusal | None:
    """TOO_LARGE for a body over ``limit`` bytes (fatal: the connection that sent
    it closes, unless ``closes`` is false), INVALID for one that is not UTF-8."""
    try:
        size = body_size(body)
    except ProtocolError as exc:  # a lone surrogate
        return exc.refusal
    if size > limit:
        then = "; the connection is closed" if closes else ""
        return Refusal(
            ErrorCode.TOO_LARGE,
            f"body is {size} bytes; the limit is {limit} bytes{then}",
            fatal=closes,
        )
    return None
