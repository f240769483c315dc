"""Rate limiting: "at most N messages in any window", with bounded memory.

A limiter counts events in fixed slots (60 per window by default) and counts
the slot the window's start falls into as a whole, so it errs on the strict
side: it never lets N+1 events through inside one window. Memory is a fixed
ring of slot counters however high N is (benchmarks raise it to millions).

The clock is always passed in; nothing here reads time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SLOTS_PER_WINDOW = 60  # one-second slots for the seed's per-minute limit


class WindowLimiter:
    __slots__ = (
        "_counts",
        "_expired_at",
        "_indexes",
        "_slots",
        "_total",
        "_width",
        "limit",
        "window",
    )

    def __init__(self, limit: float, window: float = 60.0, slots: int = SLOTS_PER_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._slots = slots
        self._width = window / slots
        # slots + 1 ring entries: the partial oldest slot is still counted.
        self._counts = [0] * (slots + 1)
        self._indexes = [-1] * (slots + 1)
        self._total = 0
        self._expired_at = -1

    def _expire(self, idx: int) -> None:
        if idx == self._expired_at:
            return  # nothing can have aged out within the same slot
        self._expired_at = idx
        oldest_kept = idx - self._slots
        for pos, slot_idx in enumerate(self._indexes):
            if slot_idx != -1 and slot_idx < oldest_kept:
                self._total -= self._counts[pos]
                self._counts[pos] = 0
                self._indexes[pos] = -1

    def retry_after(self, now: float, count: int = 1) -> float:
        """0.0 when ``count`` more events are allowed now; else seconds until
        they are (``count`` at most ``limit``)."""
        idx = math.floor(now / self._width)
        self._expire(idx)
        if self._total + count <= self.limit:
            return 0.0
        # Drop the oldest slots until the events fit; the last dropped slot's
        # expiry is when that happens.
        excess = self._total + count - self.limit
        for slot_idx, count in sorted(
            (s, c) for s, c in zip(self._indexes, self._counts, strict=True) if s != -1
        ):
            excess -= count
            if excess <= 0:
                return max((slot_idx + self._slots + 1) * self._width - now, self._width / 1000)
        return self.window  # unreachable with a positive limit; be strict anyway

    def record(self, now: float) -> None:
        self._record_at(math.floor(now / self._width))

    def _record_at(self, idx: int) -> None:
        pos = idx % (self._slots + 1)
        if self._indexes[pos] != idx:
            self._total -= self._counts[pos]
            self._counts[pos] = 0
            self._indexes[pos] = idx
        self._counts[pos] += 1
        self._total += 1

    def room(self, now: float) -> int:
        """How many more events fit now."""
        idx = math.floor(now / self._width)
        if idx != self._expired_at:
            self._expire(idx)
        return max(0, math.floor(self.limit - self._total))

    def record_many(self, now: float, count: int) -> None:
        """Record ``count`` events at once (they fit: see ``room``)."""
        idx = math.floor(now / self._width)
        pos = idx % (self._slots + 1)
        if self._indexes[pos] != idx:
            self._total -= self._counts[pos]
            self._counts[pos] = 0
            self._indexes[pos] = idx
        self._counts[pos] += count
        self._total += count

    @property
    def count(self) -> int:
        return self._total


def admit(limiters: Sequence[WindowLimiter], now: float) -> float:
    """Record one event against every limiter if all allow it.

    Returns 0.0 on success, else the longest retry_after (nothing recorded).
    """
    # Every send passes four limiters (session, agent, pair, global): each
    # one's slot is worked out once, and only a refusal pays for retry_after's
    # search.
    slots: list[int] = []
    for limiter in limiters:
        idx = math.floor(now / limiter._width)
        if idx != limiter._expired_at:
            limiter._expire(idx)
        if limiter._total + 1 > limiter.limit:
            return max(other.retry_after(now) for other in limiters)
        slots.append(idx)
    for limiter, idx in zip(limiters, slots, strict=True):
        limiter._record_at(idx)
    return 0.0
