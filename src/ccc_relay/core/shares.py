"""Fair shares: what one agent may use of the relay, so one at its cap never
makes another wait.

* **Frames.** Every frame an agent sends, of any kind, counts against
  ``frame_rate`` per minute across its connections (an ack one more per 64
  ids it names); the frames past it are refused ``rate_limited``.
* **Queues.** Messages and body bytes waiting for one recipient are capped
  (``max_queued_messages``, ``max_queued_bytes``), and one sender may fill at
  most half of each: a flood to an offline agent cannot crowd out the others
  writing to it; all recipients together have caps of their own. A message
  counts from admission until its recipient acks it.
* **Audit.** The body bytes one agent, and all agents together, may put into
  the audit log per minute; past it, lines keep the size and SHA-256 instead of
  the body.
* **Refusals.** The first refusal of each kind per agent (or per peer uid
  before a name is proven) and interval is audited in full; the rest of that
  interval are counted into one ``refusals_counted`` line at its end.

Plain data, time passed in; memory is bounded by the registered agents and the
peer uids, never by what a peer claims.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ccc_relay.audit.records import AuditRecord
from ccc_relay.policy.config_types import Limits
from ccc_relay.policy.limits import WindowLimiter
from ccc_relay.protocol.errors import ErrorCode, Refusal

RATE_WINDOW = 60.0
SUMMARY_INTERVAL = 10.0  # seconds of repeated refusals folded into one counted line
ACK_IDS_PER_FRAME = 64  # an ack naming more ids costs as much as more frames
QUEUE_RETRY_AFTER = 5.0  # a full queue drains only as fast as its recipient reads


@dataclass(slots=True)
class _Refusals:
    started: float
    fields: dict[str, object]
    seen: set[str] = field(default_factory=set)
    counted: Counter[str] = field(default_factory=Counter)


class Shares:
    def __init__(self, limits: Limits, queued: Iterable[tuple[str, str, int, int]]) -> None:
        """``queued``: (sender, recipient, messages, bytes) waiting in the store."""
        self.limits = limits
        self._frames: dict[str, WindowLimiter] = {}
        self._audit_bytes: dict[str, WindowLimiter] = {}
        self._to: dict[str, list[int]] = {}  # recipient -> [messages, bytes]
        self._pair: dict[tuple[str, str], list[int]] = {}  # (sender, recipient) -> likewise
        self._total = [0, 0]  # everything waiting: [messages, bytes]
        self._audit_total = WindowLimiter(limits.audit_body_bytes_per_minute_total, RATE_WINDOW)
        for sender, recipient, count, size in queued:
            self._add(sender, recipient, count, size)
        self._refusals: dict[object, _Refusals] = {}

    # --- frames ------------------------------------------------------------------

    def frames_allowed(self, agent: str, costs: list[int], now: float) -> int:
        """How many of these frames (each with its cost) ``agent`` may send now;
        those are counted."""
        limiter = self._frames.get(agent)
        if limiter is None:
            limiter = self._frames[agent] = WindowLimiter(self.limits.frame_rate, RATE_WINDOW)
        room = limiter.room(now)
        spent = allowed = 0
        for cost in costs:
            if spent + cost > room:
                break
            spent += cost
            allowed += 1
        if spent:
            limiter.record_many(now, spent)
        return allowed

    # --- queues ----------------------------------------------------------------------

    def queue_refusal(self, sender: str, recipient: str, size: int) -> Refusal | None:
        """Whether one more message of ``size`` bytes may wait for ``recipient``."""
        limits = self.limits
        to = self._to.get(recipient, (0, 0))
        pair = self._pair.get((sender, recipient), (0, 0))
        total = self._total
        if (
            total[0] + 1 > limits.max_queued_messages_total
            or total[1] + size > limits.max_queued_bytes_total
        ):
            whose = "the relay's queues are full"
        elif to[0] + 1 > limits.max_queued_messages or to[1] + size > limits.max_queued_bytes:
            whose = f"{recipient!r}'s queue is full"
        elif (
            pair[0] + 1 > limits.max_queued_messages // 2
            or pair[1] + size > limits.max_queued_bytes // 2
        ):
            whose = f"your messages fill half of {recipient!r}'s queue, the most one sender may"
        else:
            return None
        return Refusal(
            ErrorCode.QUEUE_FULL,
            f"{whose}; it drains as {recipient!r} reads its messages",
            retry_after=QUEUE_RETRY_AFTER,
        )

    def queued(self, sender: str, recipient: str, size: int) -> None:
        self._add(sender, recipient, 1, size)

    def unqueued(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """(sender, recipient, bytes) left the queue: acked, or never stored."""
        for sender, recipient, size in rows:
            self._add(sender, recipient, -1, -size)

    def _add(self, sender: str, recipient: str, count: int, size: int) -> None:
        self._total[0] += count
        self._total[1] += size
        to = self._to.setdefault(recipient, [0, 0])
        to[0] += count
        to[1] += size
        if to[0] <= 0:
            del self._to[recipient]
        pair = self._pair.setdefault((sender, recipient), [0, 0])
        pair[0] += count
        pair[1] += size
        if pair[0] <= 0:
            del self._pair[(sender, recipient)]

    # --- the audit ---------------------------------------------------------------------

    def audit_body(self, agent: str, size: int, now: float) -> bool:
        """Whether ``agent``'s next body of ``size`` bytes still goes into the audit whole."""
        limiter = self._audit_bytes.get(agent)
        if limiter is None:
            limiter = WindowLimiter(self.limits.audit_body_bytes_per_minute, RATE_WINDOW)
            self._audit_bytes[agent] = limiter
        total = self._audit_total
        if limiter.room(now) < size or total.room(now) < size:
            return False
        limiter.record_many(now, size)
        total.record_many(now, size)
        return True

    # --- refusals ------------------------------------------------------------------------

    def refusal_lines(
        self, key: object, code: str, fields: dict[str, object], now: float
    ) -> list[AuditRecord]:
        """The audit lines one refusal of ``code`` by ``key`` (an agent, or a peer
        uid) makes: its own ``refused`` line when the code is new in the interval,
        else none (it is counted), after the summary of an interval that ended."""
        window = self._refusals.get(key)
        records: list[AuditRecord] = []
        if window is not None and now - window.started >= SUMMARY_INTERVAL:
            records += self._summary(key, window, now)
            window = None
        if window is None:
            window = self._refusals[key] = _Refusals(now, fields)
        if code in window.seen:
            window.counted[code] += 1
            return records
        window.seen.add(code)
        records.append(AuditRecord(now, "refused", fields))
        return records

    def refusals_due(self, now: float, *, everything: bool = False) -> list[AuditRecord]:
        """The summaries of intervals that have ended (all of them at a stop)."""
        records: list[AuditRecord] = []
        for key, window in list(self._refusals.items()):
            if everything or now - window.started >= SUMMARY_INTERVAL:
                records += self._summary(key, window, now)
        return records

    def _summary(self, key: object, window: _Refusals, now: float) -> list[AuditRecord]:
        del self._refusals[key]
        if not window.counted:
            return []
        who = {k: v for k, v in window.fields.items() if k in _WHO}
        fields = {
            **who,
            "since": window.started,
            "count": sum(window.counted.values()),
            "codes": dict(window.counted),
        }
        return [AuditRecord(now, "refusals_counted", fields)]


_WHO = frozenset({"agent", "claimed", "peer_uid"})
