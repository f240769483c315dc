"""The one frozen Config, built and validated before anything binds.

The config file is YAML in the seed's layout (``daemon:`` with ``security:``
and ``audit:`` inside it) plus an optional top-level ``policy:``. The seed's
"Recommended daemon security configuration" block loads as it is. Every
problem names the key and the value; unknown keys are errors, not ignored,
because a misspelt ``rate_limt`` silently doing nothing is a security bug.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ccc_relay.policy.anomaly import DEFAULT_RULES, RULES, AnomalyConfig
from ccc_relay.policy.anomaly import Rule as AnomalyRule
from ccc_relay.policy.sanitize import SanitizeOptions
from ccc_relay.policy.units import UnitError, parse_duration, parse_rate, parse_size
from ccc_relay.protocol.names import agent_name_problem

DEFAULT_MAX_MESSAGE_SIZE = 1_000_000  # the seed's 1MB, SI
DEFAULT_RATE_PER_MINUTE = 100.0
DEFAULT_SESSION_TIMEOUT = 24 * 3600.0
DEFAULT_RETENTION = 30 * 86400.0
# Hard ceiling on max_message_size: the line cap is six times it and every
# connection may hold one line, so a larger value is a memory hazard.
MAX_MESSAGE_SIZE_CEILING = 16 * 1000**2


class ConfigError(ValueError):
    """A config that must not be used; the message names key and value."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    rate_per_minute: float = DEFAULT_RATE_PER_MINUTE  # per session
    agent_rate_per_minute: float = DEFAULT_RATE_PER_MINUTE  # per agent, all sessions together
    pair_rate_per_minute: float = DEFAULT_RATE_PER_MINUTE  # per (sender, recipient)
    global_rate_per_minute: float = 60_000.0  # the whole relay
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    require_session_auth: bool = True
    hello_timeout: float = 5.0  # an unauthenticated connection is closed after this
    max_connections: int = 4096
    max_unauthenticated: int = 64
    auth_failures_per_minute: float = 10.0  # per peer uid, before hellos are throttled
    sanitize: SanitizeOptions = field(default_factory=SanitizeOptions)


@dataclass(frozen=True, slots=True)
class AuditConfig:
    log_path: Path
    log_all_messages: bool = True
    retention: float = DEFAULT_RETENTION
    log_group: str | None = None  # files become 0640 with this group (readers of the log)


@dataclass(frozen=True, slots=True)
class Rule:
    """A declared pair: ``sender`` may send to ``recipient``."""

    sender: str
    recipient: str
    action: str = "allow"  # allow | hold


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: Path
    socket_path: Path
    admin_socket_path: Path
    audit: AuditConfig
    limits: Limits = field(default_factory=Limits)
    socket_mode: int = 0o660
    socket_group: str | None = None
    user: str | None = None
    rules: tuple[Rule, ...] = ()
    # One socket per agent in agent_socket_dir: the socket a container mounts is
    # its identity; a connection on it can only authenticate as that agent.
    per_agent_sockets: bool = False
    agent_socket_dir: Path | None = None  # None: <state_dir>/agents
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    source: Path | None = None  # the file this came from; None for embedded defaults

    @property
    def db_path(self) -> Path:
        return self.state_dir / "relay.db"

    @property
    def agent_sockets(self) -> Path:
        return self.agent_socket_dir or self.state_dir / "agents"

    def agent_socket(self, agent: str) -> Path:
        return self.agent_sockets / f"{agent}.sock"

    @property
    def credentials_dir(self) -> Path:
        return self.state_dir / "credentials"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "daemon.pid"


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$CCC_CACHE_DIR``, else ``$XDG_CACHE_HOME/ccc-status``, else ``~/.cache/ccc-status``."""
    env = os.environ if env is None else env
    if env.get("CCC_CACHE_DIR"):
        return Path(env["CCC_CACHE_DIR"]).expanduser()
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "ccc-status"
    return Path.home() / ".cache" / "ccc-status"


def embedded_defaults(env: Mapping[str, str] | None = None) -> Config:
    state = default_state_dir(env).absolute()
    return Config(
        state_dir=state,
        socket_path=state / "daemon.sock",
        admin_socket_path=state / "admin.sock",
        audit=AuditConfig(log_path=state / "audit"),
    )


# --- loading ----------------------------------------------------------------

_DAEMON_KEYS = {
    "user",
    "socket_path",
    "socket_mode",
    "socket_group",
    "state_dir",
    "admin_socket_path",
    "security",
    "audit",
    "anomaly",
    "per_agent_sockets",
    "agent_socket_dir",
}
_ANOMALY_KEYS = {"window", "jump_min_messages", "rules"}
_ANOMALY_RULE_KEYS = {"threshold", "quarantine"}
_SECURITY_KEYS = {
    "max_message_size",
    "rate_limit",
    "agent_rate_limit",
    "pair_rate_limit",
    "global_rate_limit",
    "session_timeout",
    "require_session_auth",
    "hello_timeout",
    "max_connections",
    "max_unauthenticated",
    "auth_failures_per_minute",
    "sanitize",
    "sanitize_paths",
    "redact_secrets",
}
_AUDIT_KEYS = {"log_all_messages", "log_path", "retention", "log_group"}
_POLICY_KEYS = {"allow", "hold"}


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file.

    Raises ConfigError naming the offending key and value.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return config_from_mapping(data if data is not None else {}, env=env, source=path.absolute())


def config_from_mapping(
    data: object, *, env: Mapping[str, str] | None = None, source: Path | None = None
) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping with a 'daemon:' section")
    _no_unknown(data, {"daemon", "policy"}, "")
    daemon = _section(data, "daemon", "")
    _no_unknown(daemon, _DAEMON_KEYS, "daemon.")
    security = _section(daemon, "security", "daemon.")
    _no_unknown(security, _SECURITY_KEYS, "daemon.security.")
    audit = _section(daemon, "audit", "daemon.")
    _no_unknown(audit, _AUDIT_KEYS, "daemon.audit.")

    base = embedded_defaults(env)
    state_dir = _path(daemon, "state_dir", "daemon.", base.state_dir)
    limits = _limits(security)
    config = Config(
        state_dir=state_dir,
        socket_path=_path(daemon, "socket_path", "daemon.", state_dir / "daemon.sock"),
        admin_socket_path=_path(daemon, "admin_socket_path", "daemon.", state_dir / "admin.sock"),
        socket_mode=_mode(daemon.get("socket_mode", 0o660)),
        socket_group=_optional_name(daemon, "socket_group", "daemon."),
        user=_optional_name(daemon, "user", "daemon."),
        limits=limits,
        audit=AuditConfig(
            log_path=_path(audit, "log_path", "daemon.audit.", state_dir / "audit"),
            log_all_messages=_bool(audit, "log_all_messages", "daemon.audit.", True),
            retention=_duration(audit, "retention", "daemon.audit.", DEFAULT_RETENTION),
            log_group=_optional_name(audit, "log_group", "daemon.audit."),
        ),
        rules=_rules(data.get("policy")),
        per_agent_sockets=_bool(daemon, "per_agent_sockets", "daemon.", False),
        agent_socket_dir=_path(daemon, "agent_socket_dir", "daemon.", state_dir / "agents"),
        anomaly=_anomaly(_section(daemon, "anomaly", "daemon.")),
        source=source,
    )
    if config.socket_path == config.admin_socket_path:
        raise ConfigError("daemon.admin_socket_path must differ from daemon.socket_path")
    return config


def _no_unknown(section: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for key in section:
        if key not in known:
            hint = ", ".join(sorted(known))
            raise ConfigError(f"{prefix}{key}: unknown key (known here: {hint})")


def _section(parent: Mapping[str, Any], key: str, prefix: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{prefix}{key}: expected a mapping, got {value!r}")
    return value


def _limits(security: Mapping[str, Any]) -> Limits:
    p = "daemon.security."
    size = _size(security, "max_message_size", p, DEFAULT_MAX_MESSAGE_SIZE)
    if not 1 <= size <= MAX_MESSAGE_SIZE_CEILING:
        raise ConfigError(
            f"{p}max_message_size: {security.get('max_message_size')!r} is out of range "
            f"(1 byte to {MAX_MESSAGE_SIZE_CEILING // 1000**2}MB)"
        )
    rate = _rate(security, "rate_limit", p, DEFAULT_RATE_PER_MINUTE)
    require_auth = _bool(security, "require_session_auth", p, True)
    if not require_auth:
        raise ConfigError(
            f"{p}require_session_auth: false is not supported; every session must "
            "authenticate (the relay is default-deny)"
        )
    return Limits(
        max_message_size=size,
        rate_per_minute=rate,
        agent_rate_per_minute=_rate(security, "agent_rate_limit", p, rate),
        pair_rate_per_minute=_rate(security, "pair_rate_limit", p, rate),
        global_rate_per_minute=_rate(security, "global_rate_limit", p, 60_000.0),
        session_timeout=_duration(security, "session_timeout", p, DEFAULT_SESSION_TIMEOUT, 1.0),
        require_session_auth=True,
        hello_timeout=_duration(security, "hello_timeout", p, 5.0, 0.05),
        max_connections=_int(security, "max_connections", p, 4096),
        max_unauthenticated=_int(security, "max_unauthenticated", p, 64),
        auth_failures_per_minute=_number(security, "auth_failures_per_minute", p, 10.0),
        sanitize=_sanitize(security, p),
    )


def _sanitize(security: Mapping[str, Any], p: str) -> SanitizeOptions:
    paths = security.get("sanitize_paths", "escape")
    if paths not in ("escape", "redact", "off"):
        raise ConfigError(f"{p}sanitize_paths: {paths!r} -- expected escape, redact or off")
    return SanitizeOptions(
        enabled=_bool(security, "sanitize", p, True),
        paths=paths,
        redact_secrets=_bool(security, "redact_secrets", p, True),
    )


def _size(section: Mapping[str, Any], key: str, prefix: str, default: int) -> int:
    if key not in section:
        return default
    try:
        return parse_size(section[key])
    except UnitError as exc:
        raise ConfigError(f"{prefix}{key}: {section[key]!r} -- {exc}") from None


def _duration(
    section: Mapping[str, Any], key: str, prefix: str, default: float, minimum: float = 0.0
) -> float:
    if key not in section:
        return default
    try:
        value = parse_duration(section[key])
    except UnitError as exc:
        raise ConfigError(f"{prefix}{key}: {section[key]!r} -- {exc}") from None
    if value < minimum:
        raise ConfigError(f"{prefix}{key}: {section[key]!r} -- must be at least {minimum:g}s")
    return value


def _rate(section: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
    if key not in section:
        return default
    try:
        per_minute, _scope = parse_rate(section[key])
    except UnitError as exc:
        raise ConfigError(f"{prefix}{key}: {section[key]!r} -- {exc}") from None
    return per_minute


def _bool(section: Mapping[str, Any], key: str, prefix: str, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}{key}: {value!r} -- expected true or false")
    return value


def _int(section: Mapping[str, Any], key: str, prefix: str, default: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{prefix}{key}: {value!r} -- expected a positive whole number")
    return value


def _number(section: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{prefix}{key}: {value!r} -- expected a positive number")
    return float(value)


def _path(section: Mapping[str, Any], key: str, prefix: str, default: Path) -> Path:
    value = section.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{prefix}{key}: {value!r} -- expected a path")
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"{prefix}{key}: {value!r} -- must be an absolute path")
    return path


def _mode(value: object) -> int:
    # YAML 1.1 (PyYAML) reads an unquoted 0660 as the octal integer 432.
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise ConfigError(
                f"daemon.socket_mode: {value!r} -- expected an octal mode such as 0660"
            ) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ConfigError(f"daemon.socket_mode: {value!r} -- expected an octal mode such as 0660")
    if mode & ~0o777:
        raise ConfigError(
            f"daemon.socket_mode: {value!r} -- not a permission mode; write it in octal, e.g. 0660"
        )
    if mode & 0o007:
        raise ConfigError(
            f"daemon.socket_mode: {oct(mode)} gives every local user access; "
            "use 0660 with daemon.socket_group"
        )
    if mode & 0o600 != 0o600:
        raise ConfigError(
            f"daemon.socket_mode: {oct(mode)} -- the owner needs read and write (0600)"
        )
    return mode


def _optional_name(section: Mapping[str, Any], key: str, prefix: str) -> str | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise ConfigError(f"{prefix}{key}: {value!r} -- expected a user or group name")
    return str(value)


def parse_rule(text: str, action: str = "allow") -> list[Rule]:
    """``"a -> b"`` is one rule; ``"a <-> b"`` is two."""
    for arrow, both in (("<->", True), ("->", False)):  # noqa: B007 - used after the loop
        if arrow in text:
            left, right = (part.strip() for part in text.split(arrow, 1))
            break
    else:
        raise ConfigError(f"policy.{action}: {text!r} -- write 'sender -> recipient' or 'a <-> b'")
    for name in (left, right):
        problem = agent_name_problem(name)
        if problem:
            raise ConfigError(f"policy.{action}: {text!r} -- {problem}")
    if left == right:
        raise ConfigError(f"policy.{action}: {text!r} -- an agent does not message itself")
    rules = [Rule(left, right, action)]
    if both:
        rules.append(Rule(right, left, action))
    return rules


def _anomaly(section: Mapping[str, Any]) -> AnomalyConfig:
    p = "daemon.anomaly."
    _no_unknown(section, _ANOMALY_KEYS, p)
    rules = dict(DEFAULT_RULES)
    given = _section(section, "rules", p)
    _no_unknown(given, set(RULES), f"{p}rules.")
    for name, spec in given.items():
        prefix = f"{p}rules.{name}."
        if spec is False or spec is None:
            del rules[name]  # "rule: false" switches a rule off
            continue
        if not isinstance(spec, dict):
            raise ConfigError(f"{p}rules.{name}: expected a mapping with threshold/quarantine")
        _no_unknown(spec, _ANOMALY_RULE_KEYS, prefix)
        default = DEFAULT_RULES[name]
        rules[name] = AnomalyRule(
            threshold=_number(spec, "threshold", prefix, default.threshold),
            quarantine=_bool(spec, "quarantine", prefix, default.quarantine),
        )
    return AnomalyConfig(
        window=_duration(section, "window", p, 300.0, 1.0),
        rules=rules,
        jump_min_messages=_int(section, "jump_min_messages", p, 50),
    )


def _rules(policy: object) -> tuple[Rule, ...]:
    if policy is None:
        return ()
    if not isinstance(policy, dict):
        raise ConfigError(
            f"policy: expected a mapping with 'allow:' and/or 'hold:', got {policy!r}"
        )
    _no_unknown(policy, _POLICY_KEYS, "policy.")
    rules: list[Rule] = []
    for action in ("allow", "hold"):
        entries = policy.get(action) or []
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ConfigError(f"policy.{action}: expected a list of 'a -> b' strings")
        for entry in entries:
            rules.extend(parse_rule(entry, action))
    return tuple(rules)
