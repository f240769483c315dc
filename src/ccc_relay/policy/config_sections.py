"""What each config section means: security limits, sanitising, anomaly rules, the pair policy.

Each parser takes one already-extracted section (a mapping, or ``None`` when the
file leaves it out) and returns the frozen value it configures, built from the
field readers in :mod:`.config_fields`. The rules that span several keys live
here: the message-size ceiling, session auth that may not be switched off,
per-pair rates defaulting to the session rate, and ``a <-> b`` meaning two rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ccc_relay.policy.anomaly import DEFAULT_RULES, RULES, AnomalyConfig
from ccc_relay.policy.anomaly import Rule as AnomalyRule
from ccc_relay.policy.config_fields import (
    read_bool,
    read_duration,
    read_positive_int,
    read_positive_number,
    read_rate,
    read_section,
    read_size,
    reject_unknown_keys,
)
from ccc_relay.policy.config_types import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_RATE_PER_MINUTE,
    DEFAULT_SESSION_TIMEOUT,
    MAX_MESSAGE_SIZE_CEILING,
    ConfigError,
    Limits,
    Rule,
)
from ccc_relay.policy.sanitize import SanitizeOptions
from ccc_relay.protocol.names import address_problem, is_remote, split_address

_ANOMALY_KEYS = {"window", "jump_min_messages", "rules"}
_ANOMALY_RULE_KEYS = {"threshold", "quarantine"}
_POLICY_KEYS = {"allow", "hold"}


def parse_limits(security: Mapping[str, Any]) -> Limits:
    p = "daemon.security."
    size = read_size(security, "max_message_size", p, DEFAULT_MAX_MESSAGE_SIZE)
    if not 1 <= size <= MAX_MESSAGE_SIZE_CEILING:
        raise ConfigError(
            f"{p}max_message_size: {security.get('max_message_size')!r} is out of range "
            f"(1 byte to {MAX_MESSAGE_SIZE_CEILING // 1000**2}MB)"
        )
    rate = read_rate(security, "rate_limit", p, DEFAULT_RATE_PER_MINUTE)
    require_auth = read_bool(security, "require_session_auth", p, True)
    if not require_auth:
        raise ConfigError(
            f"{p}require_session_auth: false is not supported; every session must "
            "authenticate (the relay is default-deny)"
        )
    return Limits(
        max_message_size=size,
        rate_per_minute=rate,
        agent_rate_per_minute=read_rate(security, "agent_rate_limit", p, rate),
        pair_rate_per_minute=read_rate(security, "pair_rate_limit", p, rate),
        global_rate_per_minute=read_rate(security, "global_rate_limit", p, 60_000.0),
        session_timeout=read_duration(security, "session_timeout", p, DEFAULT_SESSION_TIMEOUT, 1.0),
        require_session_auth=True,
        hello_timeout=read_duration(security, "hello_timeout", p, 5.0, 0.05),
        max_connections=read_positive_int(security, "max_connections", p, 4096),
        max_unauthenticated=read_positive_int(security, "max_unauthenticated", p, 64),
        auth_failures_per_minute=read_positive_number(
            security, "auth_failures_per_minute", p, 10.0
        ),
        sanitize=_sanitize_options(security, p),
        max_connections_per_agent=read_positive_int(security, "max_connections_per_agent", p, 16),
        max_sessions_per_agent=read_positive_int(security, "max_sessions_per_agent", p, 64),
        max_unauthenticated_per_uid=read_positive_int(
            security, "max_unauthenticated_per_uid", p, 16
        ),
        frames_per_minute=(
            read_rate(security, "frame_rate_limit", p, 0.0)
            if "frame_rate_limit" in security
            else None
        ),
        max_queued_messages=read_positive_int(security, "max_queued_messages", p, 10_000),
        max_queued_bytes=read_size(security, "max_queued_bytes", p, 256 * 1024**2),
        max_queued_messages_total=read_positive_int(
            security, "max_queued_messages_total", p, 100_000
        ),
        max_queued_bytes_total=read_size(security, "max_queued_bytes_total", p, 2 * 1024**3),
        audit_body_bytes_per_minute_total=read_size(
            security, "audit_body_bytes_per_minute_total", p, 256 * 1024**2
        ),
        audit_body_bytes_per_minute=read_size(
            security, "audit_body_bytes_per_minute", p, 32 * 1024**2
        ),
    )


def _sanitize_options(security: Mapping[str, Any], p: str) -> SanitizeOptions:
    paths = security.get("sanitize_paths", "escape")
    if paths not in ("escape", "redact", "off"):
        raise ConfigError(f"{p}sanitize_paths: {paths!r} -- expected escape, redact or off")
    return SanitizeOptions(
        enabled=read_bool(security, "sanitize", p, True),
        paths=paths,
        redact_secrets=read_bool(security, "redact_secrets", p, True),
    )


def parse_rule(text: str, action: str = "allow") -> list[Rule]:
    """``"a -> b"`` is one rule; ``"a <-> b"`` is two. Either side may be another
    relay's agent (``bob@h2``), not both."""
    for arrow, both in (("<->", True), ("->", False)):  # noqa: B007 - used after the loop
        if arrow in text:
            left, right = (part.strip() for part in text.split(arrow, 1))
            break
    else:
        raise ConfigError(f"policy.{action}: {text!r} -- write 'sender -> recipient' or 'a <-> b'")
    problem = pair_problem(left, right, action, both=both)
    if problem:
        raise ConfigError(f"policy.{action}: {text!r} -- {problem}")
    rules = [Rule(left, right, action)]
    if both:
        rules.append(Rule(right, left, action))
    return rules


def pair_problem(sender: str, recipient: str, action: str, *, both: bool = False) -> str | None:
    """Why a rule for this pair cannot be, or None: a relay decides only for its own
    agents (one side must be local), and a message for another relay is held, if at
    all, by that relay (``hold`` names a local recipient). Neither side may be a
    reserved name (``relay@h2`` is whom another relay's notices come from)."""
    for name in (sender, recipient):
        problem = address_problem(name)
        if problem:
            return problem
    if sender == recipient:
        return "an agent does not message itself"
    if is_remote(sender) and is_remote(recipient):
        return "one side must be an agent of this relay"
    if action == "hold" and (is_remote(recipient) or (both and is_remote(sender))):
        return (
            "hold a message on the relay of its recipient: there, 'ccc allow "
            f"{sender} {split_address(recipient)[0]} --hold' with the sender as name@host"
        )
    return None


def parse_anomaly(section: Mapping[str, Any]) -> AnomalyConfig:
    p = "daemon.anomaly."
    reject_unknown_keys(section, _ANOMALY_KEYS, p)
    rules = dict(DEFAULT_RULES)
    given = read_section(section, "rules", p)
    reject_unknown_keys(given, set(RULES), f"{p}rules.")
    for name, spec in given.items():
        prefix = f"{p}rules.{name}."
        if spec is False or spec is None:
            del rules[name]  # "rule: false" switches a rule off
            continue
        if not isinstance(spec, dict):
            raise ConfigError(f"{p}rules.{name}: expected a mapping with threshold/quarantine")
        reject_unknown_keys(spec, _ANOMALY_RULE_KEYS, prefix)
        default = DEFAULT_RULES[name]
        rules[name] = AnomalyRule(
            threshold=read_positive_number(spec, "threshold", prefix, default.threshold),
            quarantine=read_bool(spec, "quarantine", prefix, default.quarantine),
        )
    return AnomalyConfig(
        window=read_duration(section, "window", p, 300.0, 1.0),
        rules=rules,
        jump_min_messages=read_positive_int(section, "jump_min_messages", p, 50),
    )


def parse_policy(policy: object) -> tuple[Rule, ...]:
    if policy is None:
        return ()
    if not isinstance(policy, dict):
        raise ConfigError(
            f"policy: expected a mapping with 'allow:' and/or 'hold:', got {policy!r}"
        )
    reject_unknown_keys(policy, _POLICY_KEYS, "policy.")
    rules: list[Rule] = []
    for action in ("allow", "hold"):
        entries = policy.get(action) or []
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ConfigError(f"policy.{action}: expected a list of 'a -> b' strings")
        for entry in entries:
            rules.extend(parse_rule(entry, action))
    return tuple(rules)
