"""Reconnecting after the relay went away: when, how often, and what is safe to repeat.

Both clients take ``reconnect=Backoff(...)`` (off by default: a one-shot
command should fail at once and say why). With it, a client whose connection
breaks (the relay restarted, crashed, or said ``bye`` on shutdown) connects
again by itself, with exponential backoff and jitter, and says ``hello`` with
``resume`` set to the session its ``welcome`` named, so the relay's seq
numbering continues where it stood. It subscribes again when it was
subscribed, and keeps the ids it took in, so the relay's redelivery of a
message not acknowledged yet is dropped. A resume the relay no longer knows
(``session_expired``) falls back to a new session.

What is repeated after a reconnect:

* ``fetch``, ``ack``, ``agents``, ``ping``: asked again (they change nothing
  twice: acknowledging a settled id settles nothing).
* a ``send`` only when the relay proves it never took it: the connection broke
  before the send was written, or the resumed session's ``welcome.last_seq``
  lies below the send's seq (the seq high-water mark is committed with the
  message, and ``accepted`` only follows that commit). Otherwise whether it was
  accepted is unknown, and the send raises ``RelayUnavailable`` saying so: a
  blind resend could deliver the message twice.

Refusals that no wait can change (``auth_failed``, ``quarantined``,
``unsupported_version``, a bad signature) end the reconnecting; so does
``give_up_after`` seconds without a connection, when set.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec

from ccc_relay.client.base import RelayError, RelayUnavailable

if TYPE_CHECKING:
    import random

from ccc_relay.client.endpoint import Endpoint
from ccc_relay.protocol.codec import encode
from ccc_relay.protocol.frames import Hello

# Codes worth another hello after a wait: the relay is down, restarting, full,
# or its store failed (until it is restarted).
RETRYABLE = frozenset(
    {"relay_unavailable", "busy", "unavailable", "rate_limited", "hello_timeout", "internal"}
)
# A session the relay no longer knows: a new one is started.
SESSION_GONE = "session_expired"


class Backoff(msgspec.Struct, frozen=True):
    """Exponential backoff with jitter: the n-th wait lies in
    ``[d/2, d]`` for ``d = min(maximum, initial * factor**n)``, so clients that
    lost the same relay do not all come back in the same millisecond, and no
    wait is longer than ``maximum``. The first attempt is immediate."""

    initial: float = 0.05
    maximum: float = 5.0
    factor: float = 2.0
    # Seconds of failed attempts after which the client stops and raises; None: never.
    give_up_after: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1:
            raise ValueError("Backoff needs 0 < initial <= maximum and factor >= 1")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits before each attempt: 0 first, then growing, jittered."""
        import random  # not at module level: the hooks load this module

        uniform = (rng or random).uniform
        yield 0.0
        delay = self.initial
        while True:
            yield uniform(delay / 2, delay)
            delay = min(self.maximum, delay * self.factor)


def retryable(exc: RelayError) -> bool:
    """Whether another hello after a wait may succeed where this one failed."""
    return exc.code in RETRYABLE or exc.code == SESSION_GONE


def outcome_unknown(seq: int) -> RelayUnavailable:
    """What a send raises when the connection broke after the relay took its seq."""
    return RelayUnavailable(
        f"the connection broke after send seq {seq} reached the relay; whether it was "
        "accepted is unknown (the recipient's inbox tells), so it was not sent again"
    )


def hello_line(endpoint: Endpoint, resume: str | None) -> bytes:
    """The ``hello`` a client says, resuming session ``resume`` when given.

    ``ClientSession.hello`` enters the request (its answer is a ``welcome``);
    this is the same frame with ``resume`` set.
    """
    return encode(
        Hello(
            agent=endpoint.agent,
            credential=endpoint.credential.reveal(),
            signatures=endpoint.relay_pubkey is not None,
            show_delivered=True,
            resume=resume,
        )
    )
