"""Stable error codes: the one list every refusal is drawn from.

A code is part of the wire contract -- clients and scripts branch on it -- so a
code is never renamed or reused. The human sentence that travels with it may
change. Codes are grouped by who is at fault: the peer (``invalid``,
``too_large``...), policy (``forbidden``, ``rate_limited``...), or the relay
itself (``unavailable``, ``internal``).
"""

from __future__ import annotations

import enum

import msgspec


class ErrorCode(enum.StrEnum):
    # The peer sent something malformed.
    INVALID = "invalid"  # schema: unknown field, wrong type, missing field, bad UTF-8
    TOO_LARGE = "too_large"  # body over max_message_size, or frame over the line cap
    UNSUPPORTED_VERSION = "unsupported_version"
    REPLAY = "replay"  # seq not above the session's high-water mark
    OUT_OF_ORDER = "out_of_order"  # seq skipped ahead
    # Identity and session.
    AUTH_REQUIRED = "auth_required"  # a frame other than hello before authenticating
    AUTH_FAILED = "auth_failed"
    SESSION_EXPIRED = "session_expired"
    HELLO_TIMEOUT = "hello_timeout"
    # Policy.
    FORBIDDEN = "forbidden"  # no allow rule (also: unknown recipient -- same answer)
    RATE_LIMITED = "rate_limited"
    QUARANTINED = "quarantined"
    BUSY = "busy"  # too many connections
    QUEUE_FULL = "queue_full"  # the recipient's queue (or the sender's half of it) is full
    TOO_SLOW = "too_slow"  # a long line stopped arriving at a sane rate
    # Admin plane.
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    # The relay itself.
    UNAVAILABLE = "unavailable"  # durable store failed; acceptance stopped
    INTERNAL = "internal"


# A msgspec Struct, not a dataclass: Claude Code hooks load this module and
# the dataclasses module alone costs them more start-up time than msgspec's Structs.
class Refusal(msgspec.Struct, frozen=True):
    """A refusal as a value: a stable code, a sentence a human can act on, and
    whether the connection ends after the error frame (``fatal``).

    The relay's decisions return these; nothing is raised for a peer's mistake
    or a policy's no.
    """

    code: ErrorCode
    message: str
    fatal: bool = False
    retry_after: float | None = None


class ProtocolError(Exception):
    """A refusal raised where a call cannot return one: decoding a line, the
    clients, the admin plane. Carries the same fields as :class:`Refusal`.

    ``fatal`` errors close the connection after the error frame is sent.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        fatal: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.value!r}, {self.message!r})"

    @property
    def refusal(self) -> Refusal:
        return Refusal(self.code, self.message, self.fatal, self.retry_after)
