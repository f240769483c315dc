"""The ``federation:`` section: this relay's host name, its NATS link, its peers.

Everything is checked before anything binds: the host name's alphabet, the
server URLs (``nats://`` or ``tls://`` with a host and a port), that the TLS,
NKEY and credentials files exist as regular files and that the secret ones
are open to nobody but the relay's user and group (0600 or 0640), and that each
peer's key is a base64 Ed25519 public key. Without the section the relay talks
to no other relay and opens no network socket.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ccc_relay.policy.config_fields import read_duration, read_section, reject_unknown_keys
from ccc_relay.policy.config_types import ConfigError, FederationConfig
from ccc_relay.protocol.names import host_problem

_KEYS = {
    "host",
    "servers",
    "tls",
    "nkey_seed",
    "credentials",
    "stream",
    "publish_timeout",
    "peers",
}
_TLS_KEYS = {"ca", "cert", "key"}
_PEER_KEYS = {"key"}
_STREAM = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # JetStream stream names: no dots, spaces or *>
MAX_SERVERS = 32
MAX_PEERS = 1024
MAX_SECRET_FILE = 64 * 1024  # a seed, a key or a creds file is a few hundred bytes
P = "federation."


def parse_federation(section: object) -> FederationConfig | None:
    """The section's value, or None when the file has none. Raises ConfigError."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(
            f"federation: expected a mapping with host, servers and peers, got {section!r}"
        )
    reject_unknown_keys(section, _KEYS, P)
    host = section.get("host")
    if not isinstance(host, str):
        raise ConfigError(f"{P}host: {host!r} -- expected this relay's host name, e.g. h1")
    problem = host_problem(host)
    if problem:
        raise ConfigError(f"{P}host: {host!r} -- {problem}")
    tls = read_section(section, "tls", P)
    reject_unknown_keys(tls, _TLS_KEYS, f"{P}tls.")
    servers = _servers(section.get("servers"))
    if any(url.startswith("tls://") for url in servers) and not tls:
        raise ConfigError(
            f"{P}tls: a tls:// server needs the relay's certificate: add tls: {{ca: ..., "
            "cert: ..., key: ...}}"
        )
    if tls and set(tls) != _TLS_KEYS:
        missing = ", ".join(sorted(_TLS_KEYS - set(tls)))
        raise ConfigError(f"{P}tls: mutual TLS needs ca, cert and key; missing: {missing}")
    nkey_seed = _file(section, "nkey_seed", P, secret=True)
    creds = _file(section, "credentials", P, secret=True)
    if nkey_seed is not None and creds is not None:
        raise ConfigError(f"{P}nkey_seed and {P}credentials: give one of them, not both")
    if nkey_seed is None and creds is None:
        raise ConfigError(
            f"{P}nkey_seed: the relay must authenticate to NATS: give nkey_seed (a file with "
            "its NKEY seed, made by 'nsc generate nkey --user') or credentials (a .creds file)"
        )
    stream = section.get("stream", "CCC_FEDERATION")
    if not isinstance(stream, str) or not _STREAM.match(stream):
        raise ConfigError(
            f"{P}stream: {stream!r} -- a stream name uses letters, digits, '-' and '_' (at most 64)"
        )
    return FederationConfig(
        host=host,
        servers=servers,
        peers=_peers(section.get("peers"), host),
        tls_ca=_file(tls, "ca", f"{P}tls.", secret=False),
        tls_cert=_file(tls, "cert", f"{P}tls.", secret=False),
        tls_key=_file(tls, "key", f"{P}tls.", secret=True),
        nkey_seed=nkey_seed,
        credentials=creds,
        stream=stream,
        publish_timeout=read_duration(section, "publish_timeout", P, 5.0, 0.1),
    )


def _servers(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{P}servers: {value!r} -- expected a list of NATS URLs, e.g. "
            '["tls://nats1.example:4222"]'
        )
    if len(value) > MAX_SERVERS:
        raise ConfigError(f"{P}servers: at most {MAX_SERVERS} URLs")
    for url in value:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            port = None
            parts = None
        if (
            parts is None
            or parts.scheme not in ("nats", "tls")
            or not parts.hostname
            or port is None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise ConfigError(
                f"{P}servers: {url!r} -- expected nats://HOST:PORT or tls://HOST:PORT"
            )
        if parts.username or parts.password:
            raise ConfigError(
                f"{P}servers: {url!r} -- no user or password in the URL; the relay "
                "authenticates with nkey_seed or credentials"
            )
    return tuple(value)


def _peers(value: object, own: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{P}peers: expected a mapping of host: {{key: ...}}, got {value!r}")
    if len(value) > MAX_PEERS:
        raise ConfigError(f"{P}peers: at most {MAX_PEERS} peers")
    peers: dict[str, str] = {}
    for host, spec in value.items():
        prefix = f"{P}peers.{host}"
        problem = host_problem(host) if isinstance(host, str) else "expected a host name"
        if problem:
            raise ConfigError(f"{prefix}: {problem}")
        if host == own:
            raise ConfigError(f"{prefix}: that is this relay's own host name")
        if not isinstance(spec, dict):
            raise ConfigError(
                f"{prefix}: expected {{key: <the output of 'ccc-statusd pubkey' on {host}>}}"
            )
        reject_unknown_keys(spec, _PEER_KEYS, f"{prefix}.")
        peers[host] = _public_key(spec.get("key"), f"{prefix}.key", host)
    return peers


def _public_key(value: object, where: str, host: str) -> str:
    hint = f"paste the output of 'ccc-statusd pubkey' run on {host}"
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} -- {hint}")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{where}: {value!r} is not a base64 Ed25519 public key; {hint}")
    return value.strip()


def _file(section: Mapping[str, Any], key: str, prefix: str, *, secret: bool) -> Path | None:
    """An absolute path to a regular file that exists; a secret one must be
    0600 or 0640 (open to the relay's user and at most read by its group)."""
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{prefix}{key}: {value!r} -- expected a path")
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"{prefix}{key}: {value!r} -- must be an absolute path")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{prefix}{key}: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{prefix}{key}: cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{prefix}{key}: {path} is not a regular file")
    if not os.access(path, os.R_OK) and os.geteuid() != 0:
        raise ConfigError(f"{prefix}{key}: {path} is not readable by this user")
    if secret:
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o037:
            raise ConfigError(
                f"{prefix}{key}: {path} is mode {mode:04o}; a secret must be open to nobody "
                f"else: chmod 600 {path} (or 640 with the relay's group)"
            )
        if info.st_size > MAX_SECRET_FILE:
            raise ConfigError(f"{prefix}{key}: {path} is too large to be a key")
    return path
