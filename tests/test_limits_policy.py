"""Rate limiting and who-may-talk-to-whom, as pure functions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ccc_relay.policy.acl import Policy
from ccc_relay.policy.config import Rule
from ccc_relay.policy.limits import WindowLimiter, admit


def test_the_101st_message_inside_a_minute_is_refused() -> None:
    limiter = WindowLimiter(100, 60)
    now = 1000.0
    for i in range(100):
        assert admit([limiter], now + i * 0.5) == 0.0
    wait = admit([limiter], now + 50)
    assert wait > 0
    # Allowed again once the first messages have left the window.
    assert admit([limiter], now + 50 + wait) == 0.0


def test_retry_after_points_at_when_a_slot_frees() -> None:
    limiter = WindowLimiter(2, 60)
    assert admit([limiter], 0.0) == 0.0
    assert admit([limiter], 30.0) == 0.0
    wait = admit([limiter], 31.0)
    assert 29.0 <= wait <= 31.0
    assert admit([limiter], 31.0 + wait) == 0.0


def test_admit_records_nothing_when_any_limiter_refuses() -> None:
    roomy, tight = WindowLimiter(10, 60), WindowLimiter(1, 60)
    assert admit([roomy, tight], 0.0) == 0.0
    assert admit([roomy, tight], 1.0) > 0
    assert roomy.count == 1


@settings(max_examples=200)
@given(st.lists(st.floats(0, 300, allow_nan=False), min_size=1, max_size=300), st.integers(1, 20))
def test_never_more_than_the_limit_in_any_window(times: list[float], limit: int) -> None:
    limiter = WindowLimiter(limit, 60)
    admitted = [t for t in sorted(times) if admit([limiter], t) == 0.0]
    for i, start in enumerate(admitted):
        inside = [t for t in admitted[i:] if t < start + 60]
        assert len(inside) <= limit


def _admit_reference(limiters: list[WindowLimiter], now: float) -> float:
    """admit() spelled out with the public methods: every check, then every record."""
    wait = max(limiter.retry_after(now) for limiter in limiters)
    if not wait:
        for limiter in limiters:
            limiter.record(now)
    return wait


@settings(max_examples=200)
@given(
    st.lists(st.floats(0, 400, allow_nan=False), min_size=1, max_size=200),
    st.lists(st.integers(1, 12), min_size=1, max_size=4),
    st.sampled_from([10.0, 60.0]),
)
def test_admit_answers_as_checking_then_recording_every_limiter_would(
    times: list[float], limits: list[int], window: float
) -> None:
    fast = [WindowLimiter(n, window) for n in limits]
    reference = [WindowLimiter(n, window) for n in limits]
    for t in sorted(times):
        assert admit(fast, t) == _admit_reference(reference, t)
        assert [x.count for x in fast] == [x.count for x in reference]


def test_default_deny_and_unknown_equals_forbidden() -> None:
    policy = Policy.from_rules([Rule("alice", "bob")])
    known = {"alice", "bob", "carol"}
    assert policy.action("alice", "bob", known) == "allow"
    assert policy.action("bob", "alice", known) is None
    assert policy.action("alice", "carol", known) is None
    assert policy.action("alice", "nobody", known) is None
    assert policy.action("alice", "bob", {"alice"}) is None  # removed agents lose their rules


def test_hold_wins_over_allow_and_peers_are_listed_both_ways() -> None:
    policy = Policy.from_rules([Rule("a", "b"), Rule("a", "b", "hold"), Rule("c", "a")])
    known = {"a", "b", "c", "d"}
    assert policy.action("a", "b", known) == "hold"
    assert policy.peers_of("a", known) == [("b", True, False), ("c", False, True)]
    assert policy.peers_of("d", known) == []
