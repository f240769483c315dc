"""The one frozen Config, built and validated before anything binds.

The config file is YAML in the seed's layout (``daemon:`` with ``security:``
and ``audit:`` inside it) plus optional top-level ``policy:`` and ``groups:``.
The seed's "Recommended daemon security configuration" block loads as it is. Every
problem names the key and the value; unknown keys are errors, not ignored,
because a misspelt ``rate_limt`` silently doing nothing is a security bug.

This module owns the entry points (reading the file, the embedded defaults,
assembling the ``daemon:`` section) and is the one place callers import from.
The frozen types are in :mod:`.config_types`, the per-value readers in
:mod:`.config_fields` and the per-section parsers in :mod:`.config_sections`;
the names callers use are re-exported here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from ccc_relay.policy.config_federation import parse_federation
from ccc_relay.policy.config_fields import (
    parse_socket_mode,
    read_absolute_path,
    read_bool,
    read_duration,
    read_optional_name,
    read_section,
    reject_unknown_keys,
)
from ccc_relay.policy.config_sections import (
    pair_problem,
    parse_anomaly,
    parse_limits,
    parse_policy,
    parse_rule,
)
from ccc_relay.policy.config_types import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_RATE_PER_MINUTE,
    DEFAULT_RETENTION,
    DEFAULT_SESSION_TIMEOUT,
    MAX_MESSAGE_SIZE_CEILING,
    AuditConfig,
    Config,
    ConfigError,
    FederationConfig,
    Limits,
    Rule,
)
from ccc_relay.policy.groups import parse_groups

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_RATE_PER_MINUTE",
    "DEFAULT_RETENTION",
    "DEFAULT_SESSION_TIMEOUT",
    "MAX_MESSAGE_SIZE_CEILING",
    "PRODUCTION_STATE_DIR",
    "AuditConfig",
    "Config",
    "ConfigError",
    "FederationConfig",
    "Limits",
    "Rule",
    "config_from_mapping",
    "default_agent_socket_dir",
    "default_state_dir",
    "embedded_defaults",
    "load_config",
    "local_address",
    "local_rules",
    "pair_problem",
    "parse_rule",
]


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$CCC_CACHE_DIR``, else ``$XDG_CACHE_HOME/ccc-status``, else ``~/.cache/ccc-status``."""
    env = os.environ if env is None else env
    if env.get("CCC_CACHE_DIR"):
        return Path(env["CCC_CACHE_DIR"]).expanduser()
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "ccc-status"
    return Path.home() / ".cache" / "ccc-status"


# The state dir of a relay that runs as its own user (daemon.user) when the file
# names none: systemd's StateDirectory=ccc-statusd, and the same for whoever reads
# the file (root, the relay's user, an operator), where a home-based default
# would differ per reader and lie in a home the relay's user may not enter.
PRODUCTION_STATE_DIR = Path("/var/lib/ccc-statusd")


def embedded_defaults(env: Mapping[str, str] | None = None) -> Config:
    """The config without a file: per-agent sockets where ``ccc run``'s sandboxes reach them."""
    state = default_state_dir(env).absolute()
    return Config(
        state_dir=state,
        socket_path=state / "daemon.sock",
        admin_socket_path=state / "admin.sock",
        audit=AuditConfig(log_path=state / "audit"),
        per_agent_sockets=True,
        agent_socket_dir=default_agent_socket_dir(state),
    )


# Root's per-agent sockets on embedded defaults: outside root's home (mode 0700,
# so no sandbox uid could walk to a socket inside it), on tmpfs, one directory
# per state dir so that relays with different state dirs never share sockets.
ROOT_AGENT_SOCKETS = Path("/run/ccc-status")


def default_agent_socket_dir(state_dir: Path, *, euid: int | None = None) -> Path:
    """Where embedded defaults put the per-agent sockets. Raises nothing.

    A normal user's sandboxes run as that user, who can walk into the state
    dir: ``STATE_DIR/agents``. Root's run as other uids:
    ``/run/ccc-status/agents-HASH`` (HASH: 12 hex digits of the state dir's path).
    """
    if (os.geteuid() if euid is None else euid) != 0:
        return state_dir / "agents"
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return ROOT_AGENT_SOCKETS / f"agents-{digest}"


# --- loading ----------------------------------------------------------------

# The key sets config_from_mapping checks itself; those of the sections it hands
# off (anomaly, policy) are checked by their parsers in config_sections.
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
    "max_connections_per_agent",
    "max_sessions_per_agent",
    "max_unauthenticated_per_uid",
    "frame_rate_limit",
    "max_queued_messages",
    "max_queued_bytes",
    "max_queued_messages_total",
    "max_queued_bytes_total",
    "audit_body_bytes_per_minute_total",
    "audit_body_bytes_per_minute",
    "sanitize",
    "sanitize_paths",
    "redact_secrets",
}
_AUDIT_KEYS = {"log_all_messages", "log_path", "retention", "log_group"}


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
    reject_unknown_keys(data, {"daemon", "policy", "groups", "federation"}, "")
    daemon = read_section(data, "daemon", "")
    reject_unknown_keys(daemon, _DAEMON_KEYS, "daemon.")
    security = read_section(daemon, "security", "daemon.")
    reject_unknown_keys(security, _SECURITY_KEYS, "daemon.security.")
    audit = read_section(daemon, "audit", "daemon.")
    reject_unknown_keys(audit, _AUDIT_KEYS, "daemon.audit.")

    base = embedded_defaults(env)
    default_state = PRODUCTION_STATE_DIR if daemon.get("user") is not None else base.state_dir
    state_dir = read_absolute_path(daemon, "state_dir", "daemon.", default_state)
    limits = parse_limits(security)
    federation = parse_federation(
        data.get("federation"), user=read_optional_name(daemon, "user", "daemon.")
    )
    config = Config(
        state_dir=state_dir,
        socket_path=read_absolute_path(daemon, "socket_path", "daemon.", state_dir / "daemon.sock"),
        admin_socket_path=read_absolute_path(
            daemon, "admin_socket_path", "daemon.", state_dir / "admin.sock"
        ),
        socket_mode=parse_socket_mode(daemon.get("socket_mode", 0o660)),
        socket_group=read_optional_name(daemon, "socket_group", "daemon."),
        user=read_optional_name(daemon, "user", "daemon."),
        limits=limits,
        audit=AuditConfig(
            log_path=read_absolute_path(audit, "log_path", "daemon.audit.", state_dir / "audit"),
            log_all_messages=read_bool(audit, "log_all_messages", "daemon.audit.", True),
            retention=read_duration(audit, "retention", "daemon.audit.", DEFAULT_RETENTION),
            log_group=read_optional_name(audit, "log_group", "daemon.audit."),
        ),
        rules=local_rules(parse_policy(data.get("policy")), federation),
        groups=parse_groups(data.get("groups")),
        per_agent_sockets=read_bool(daemon, "per_agent_sockets", "daemon.", False),
        agent_socket_dir=read_absolute_path(
            daemon, "agent_socket_dir", "daemon.", state_dir / "agents"
        ),
        anomaly=parse_anomaly(read_section(daemon, "anomaly", "daemon.")),
        federation=federation,
        source=source,
    )
    if config.socket_path == config.admin_socket_path:
        raise ConfigError("daemon.admin_socket_path must differ from daemon.socket_path")
    return config


def local_rules(rules: tuple[Rule, ...], federation: FederationConfig | None) -> tuple[Rule, ...]:
    """The rules with ``name@<this host>`` written as plain ``name``. Raises
    ConfigError for a rule naming another relay's agent without a federation
    section (nothing could reach it)."""
    out: list[Rule] = []
    for rule in rules:
        sender, recipient = (local_address(a, federation) for a in (rule.sender, rule.recipient))
        if federation is None and "@" in sender + recipient:
            raise ConfigError(
                f"policy.{rule.action}: '{rule.sender} -> {rule.recipient}' names another "
                "relay's agent, but this relay has no federation: section"
            )
        problem = pair_problem(sender, recipient, rule.action)
        if problem:
            raise ConfigError(
                f"policy.{rule.action}: '{rule.sender} -> {rule.recipient}' -- {problem}"
            )
        out.append(Rule(sender, recipient, rule.action))
    return tuple(out)


def local_address(address: str, federation: FederationConfig | None) -> str:
    """``bob@<this relay's host>`` is plain ``bob``; any other address as it is."""
    if federation is not None and address.endswith("@" + federation.host):
        return address[: -len(federation.host) - 1]
    return address
