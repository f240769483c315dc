"""Anomaly detection: per-agent counters over sliding windows, and their thresholds.

Every refusal and every accepted message is an observation. A rule fires when
an agent's count of its kind of event within ``window`` reaches the rule's
threshold; it then stays quiet for that agent until a window has passed, so
one burst raises one alert, not hundreds. Two rules look at shape rather than
counts: ``fan_out`` (distinct recipients in the window) and ``rate_jump``
(this minute's messages against the agent's own recent per-minute baseline).

Pure: time is passed in; the daemon decides what an alert does (audit line,
status counter, quarantine when the rule says so).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

# Which refusal codes feed which rule.
CODE_RULES = {
    "auth_failed": "auth_failures",
    "forbidden": "forbidden",
    "rate_limited": "rate_limited",
    "too_large": "invalid_frames",
    "invalid": "invalid_frames",
    "replay": "replays",
    "out_of_order": "replays",
}
COUNT_RULES = (
    "auth_failures",
    "forbidden",
    "rate_limited",
    "invalid_frames",
    "replays",
    "sanitized",
)
RULES = (*COUNT_RULES, "fan_out", "rate_jump")

BASELINE_MINUTES = 10  # per-minute history kept for the rate-jump baseline
MIN_BASELINE_MINUTES = 3  # no baseline, no jump: a brand-new agent is not an anomaly


@dataclass(frozen=True, slots=True)
class Rule:
    threshold: float
    quarantine: bool = False


@dataclass(frozen=True, slots=True)
class AnomalyConfig:
    window: float = 300.0
    rules: Mapping[str, Rule] = field(default_factory=lambda: dict(DEFAULT_RULES))
    # rate_jump fires when this minute >= factor x baseline and >= min_messages.
    jump_min_messages: int = 50


DEFAULT_RULES: dict[str, Rule] = {
    # Failed hellos are attributed to the name they claimed, which anyone can
    # claim: quarantining on them would let a stranger lock an agent out.
    "auth_failures": Rule(5),
    "forbidden": Rule(10),
    "rate_limited": Rule(20),
    "invalid_frames": Rule(10),
    "replays": Rule(5),
    "sanitized": Rule(20),
    "fan_out": Rule(10),  # distinct recipients within the window
    "rate_jump": Rule(10),  # factor over the agent's own per-minute baseline
}


@dataclass(frozen=True, slots=True)
class Alert:
    agent: str
    rule: str
    value: float
    threshold: float
    window: float
    quarantine: bool

    def describe(self) -> str:
        if self.rule == "rate_jump":
            return (
                f"{self.agent}: {self.value:g} messages this minute, "
                f"over {self.threshold:g}x its own baseline"
            )
        if self.rule == "fan_out":
            return (
                f"{self.agent}: wrote to {self.value:g} distinct recipients within "
                f"{self.window:g}s (threshold {self.threshold:g})"
            )
        return (
            f"{self.agent}: {self.value:g} {self.rule.replace('_', ' ')} within "
            f"{self.window:g}s (threshold {self.threshold:g})"
        )


class _AgentState:
    __slots__ = ("events", "last_alert", "minute", "minutes", "recipients")

    def __init__(self) -> None:
        self.events: dict[str, deque[float]] = {}
        self.recipients: dict[str, float] = {}  # recipient -> last time written to
        self.last_alert: dict[str, float] = {}
        self.minute = -1
        self.minutes: deque[int] = deque(maxlen=BASELINE_MINUTES + 1)


class AnomalyDetector:
    def __init__(self, config: AnomalyConfig) -> None:
        self.config = config
        self._agents: dict[str, _AgentState] = {}

    def refused(self, agent: str, code: str, now: float) -> list[Alert]:
        rule = CODE_RULES.get(code)
        return self._count(agent, rule, now) if rule else []

    def sanitized(self, agent: str, findings: int, now: float) -> list[Alert]:
        alerts: list[Alert] = []
        for _ in range(findings):
            alerts += self._count(agent, "sanitized", now)
        return alerts

    def accepted(self, agent: str, recipient: str, now: float, count: int = 1) -> list[Alert]:
        """``count`` messages from ``agent`` to ``recipient`` were accepted at ``now``."""
        state = self._state(agent)
        alerts: list[Alert] = []
        # fan-out: distinct recipients written to within the window
        window = self.config.window
        state.recipients[recipient] = now
        if len(state.recipients) > 1:
            for name, seen in list(state.recipients.items()):
                if seen <= now - window:
                    del state.recipients[name]
        rule = self.config.rules.get("fan_out")
        if rule is not None and len(state.recipients) >= rule.threshold:
            alerts += self._fire(agent, state, "fan_out", len(state.recipients), rule, now)
        # rate jump: this minute against the mean of the previous full minutes
        minute = math.floor(now / 60)
        if minute != state.minute:
            gap = minute - state.minute if state.minute >= 0 else 1
            for _ in range(min(gap, BASELINE_MINUTES + 1)):
                state.minutes.append(0)
            state.minute = minute
        state.minutes[-1] += count
        rule = self.config.rules.get("rate_jump")
        history = list(state.minutes)[:-1]
        current = state.minutes[-1]
        if rule is not None and len(history) >= MIN_BASELINE_MINUTES:
            baseline = max(sum(history) / len(history), 1.0)
            if current >= self.config.jump_min_messages and current >= rule.threshold * baseline:
                alerts += self._fire(agent, state, "rate_jump", current, rule, now)
        return alerts

    def forget(self, agent: str) -> None:
        self._agents.pop(agent, None)

    def _state(self, agent: str) -> _AgentState:
        state = self._agents.get(agent)
        if state is None:
            state = self._agents[agent] = _AgentState()
        return state

    def _count(self, agent: str, kind: str, now: float) -> list[Alert]:
        rule = self.config.rules.get(kind)
        if rule is None:
            return []
        state = self._state(agent)
        events = state.events.setdefault(kind, deque())
        events.append(now)
        horizon = now - self.config.window
        while events and events[0] <= horizon:
            events.popleft()
        if len(events) >= rule.threshold:
            return self._fire(agent, state, kind, len(events), rule, now)
        return []

    def _fire(
        self, agent: str, state: _AgentState, kind: str, value: float, rule: Rule, now: float
    ) -> list[Alert]:
        last = state.last_alert.get(kind)
        if last is not None and now - last < self.config.window:
            return []
        state.last_alert[kind] = now
        state.events.pop(kind, None)
        return [Alert(agent, kind, value, rule.threshold, self.config.window, rule.quarantine)]
