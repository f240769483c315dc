"""The shapes of a validated config: frozen values, their defaults, and ConfigError.

Everything here is a plain value: building one checks nothing. Checking is the
loader's job (:mod:`.config`, with :mod:`.config_fields` and
:mod:`.config_sections`), so that a ``Config`` in hand has always been
validated before anything binds. The types live apart from the loader so the
section parsers can build them without importing the loader back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ccc_relay.policy.anomaly import AnomalyConfig
from ccc_relay.policy.errors import ConfigError as ConfigError  # its home; re-exported
from ccc_relay.policy.groups import Group
from ccc_relay.policy.sanitize import SanitizeOptions

DEFAULT_MAX_MESSAGE_SIZE = 1_000_000  # the seed's 1MB, SI
DEFAULT_RATE_PER_MINUTE = 100.0
DEFAULT_SESSION_TIMEOUT = 24 * 3600.0
DEFAULT_RETENTION = 30 * 86400.0
# Hard ceiling on max_message_size: the line cap is six times it and every
# connection may hold one line, so a larger value is a memory hazard.
MAX_MESSAGE_SIZE_CEILING = 16 * 1000**2
# An agent's own socket is alone in a directory named after the agent
# (``agent_socket``): a sandbox mounts that directory, which shows the socket
# the relay binds there anew after a restart, where a mounted socket file would
# keep showing the dead inode.
AGENT_SOCKET_NAME = "relay.sock"


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
    auth_failures_per_minute: float = 10.0  # per (peer uid, agent name), before hellos wait
    sanitize: SanitizeOptions = field(default_factory=SanitizeOptions)
    # Fair shares: what one agent (or one peer uid before its hello) may hold, so
    # one at its cap never makes another wait.
    max_connections_per_agent: int = 16  # authenticated connections
    max_sessions_per_agent: int = 64  # the oldest idle one is forgotten for a new one
    max_unauthenticated_per_uid: int = 16  # connections waiting to say hello
    # Every frame of any type counts; None: 60 per message the agent may send.
    frames_per_minute: float | None = None
    max_queued_messages: int = 10_000  # waiting for one recipient (half of it per sender)
    max_queued_bytes: int = 256 * 1024**2  # of bodies waiting for one recipient (likewise)
    max_queued_messages_total: int = 100_000  # waiting for everyone together
    max_queued_bytes_total: int = 2 * 1024**3
    # Bodies one agent may put into the audit log per minute; past it, their
    # lines keep only the size and SHA-256.
    audit_body_bytes_per_minute: int = 32 * 1024**2
    audit_body_bytes_per_minute_total: int = 256 * 1024**2  # all agents together

    @property
    def frame_rate(self) -> float:
        return self.frames_per_minute or 60 * self.agent_rate_per_minute


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
class FederationConfig:
    """The ``federation:`` section: this relay's host name, how it reaches NATS,
    and the relays it trusts (host -> base64 raw Ed25519 public key, the form
    ``ccc-statusd pubkey`` prints)."""

    host: str
    servers: tuple[str, ...]
    peers: Mapping[str, str] = field(default_factory=dict)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    nkey_seed: Path | None = None
    credentials: Path | None = None  # a NATS .creds file, instead of nkey_seed
    stream: str = "CCC_FEDERATION"
    publish_timeout: float = 5.0  # how long a remote send waits for JetStream's ack

    @property
    def subject(self) -> str:
        """The subject this relay consumes: messages for its own host."""
        return f"ccc.v1.{self.host}"


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
    groups: tuple[Group, ...] = ()  # the file's; the admin plane's live in relay.db
    # One socket per agent, each alone in agent_socket_dir/AGENT/: the socket a
    # container mounts is its identity; on it only that agent can authenticate.
    per_agent_sockets: bool = False
    agent_socket_dir: Path | None = None  # None: <state_dir>/agents
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    federation: FederationConfig | None = None  # None: this relay talks to no other
    source: Path | None = None  # the file this came from; None for embedded defaults

    @property
    def db_path(self) -> Path:
        return self.state_dir / "relay.db"

    @property
    def agent_sockets(self) -> Path:
        return self.agent_socket_dir or self.state_dir / "agents"

    def agent_socket(self, agent: str) -> Path:
        """``agent``'s own socket, alone in its directory ``agent_sockets/AGENT``."""
        return self.agent_sockets / agent / AGENT_SOCKET_NAME

    @property
    def credentials_dir(self) -> Path:
        return self.state_dir / "credentials"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "daemon.pid"
