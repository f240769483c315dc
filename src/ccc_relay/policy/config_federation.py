"""The ``federation:`` section: this relay's host name, its NATS link, its peers.

Everything is checked before anything binds: the host name's alphabet, the
server URLs (``nats://`` or ``tls://`` with a host and a port), that the TLS,
NKEY and credentials files exist as regular files and that the secret ones
are open to nobody but the relay's user and group (0600 or 0640, owned by the
relay's user or root, a readable group being the relay's), and that each peer's
key is a base64 Ed25519 public key. Without the section the relay talks
to no other relay and opens no network socket.
"""

from __future__ import annotations

import base64
import binascii
import grp
import os
import pwd
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Owner:
    """Who the relay runs as: whose secret files it may use."""

    user: str | None  # daemon.user, or None: this process's own ids
    uid: int
    gid: int

    @classmethod
    def of(cls, user: str | None) -> _Owner | None:
        """None: ``daemon.user`` does not exist on this host. The relay cannot start
        without it (preflight refuses), and reads this file again when it starts, so
        the owner is checked then; a config checked elsewhere gets the mode check."""
        if user is None:
            return cls(None, os.geteuid(), os.getegid())
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            entry = None
            if user.isdigit():
                try:
                    entry = pwd.getpwuid(int(user))
                except KeyError:
                    entry = None
        if entry is None:
            return None
        return cls(user, entry.pw_uid, entry.pw_gid)

    @property
    def name(self) -> str:
        return _user_name(self.uid)

    @property
    def group(self) -> str:
        return _group_name(self.gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def parse_federation(section: object, *, user: str | None = None) -> FederationConfig | None:
    """The section's value, or None when the file has none. Raises ConfigError.

    ``user`` is ``daemon.user``: the secret files must belong to it (or root) and be
    readable by it; without one, to the user (and group) running this process.
    """
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
    owner = _Owner.of(user) or True
    nkey_seed = _file(section, "nkey_seed", P, secret=owner)
    creds = _file(section, "credentials", P, secret=owner)
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
        tls_key=_file(tls, "key", f"{P}tls.", secret=owner),
        nkey_seed=nkey_seed,
        credentials=creds,
        stream=stream,
        publish_timeout=read_duration(section, "publish_timeout", P, 5.0, 0.1),
    )


def redact_url(url: str) -> str:
    """``url`` with everything before its host's last ``@`` (a user, a password, however
    odd its characters) replaced by ``***``: fit for an error."""
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def _redacted(value: object) -> object:
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _servers(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{P}servers: {_redacted(value)!r} -- expected a list of NATS URLs, e.g. "
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
                f"{P}servers: {redact_url(url)!r} -- expected nats://HOST:PORT or tls://HOST:PORT"
            )
        if parts.username or parts.password:
            raise ConfigError(
                f"{P}servers: {redact_url(url)!r} -- no user or password in the URL; the relay "
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


def _file(
    section: Mapping[str, Any], key: str, prefix: str, *, secret: _Owner | bool
) -> Path | None:
    """An absolute path to a regular file that exists; a secret one (``secret`` is
    the relay's account) must be 0600 or 0640, owned by the relay's user or root,
    readable by the relay, and with 0640 its group must be the relay's group."""
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
    if secret is not False:
        _check_secret(info, path, f"{prefix}{key}", secret)
    return path


def _check_secret(info: os.stat_result, path: Path, where: str, relay: _Owner | bool) -> None:
    """Open to nobody but the relay: a file another user owns could be swapped or read
    by that user, and a group read bit is only as private as the group."""
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o037:
        raise ConfigError(
            f"{where}: {path} is mode {mode:04o}; a secret must be open to nobody "
            f"else: chmod 600 {path} (or 640 with the relay's group)"
        )
    if info.st_size > MAX_SECRET_FILE:
        raise ConfigError(f"{where}: {path} is too large to be a key")
    if not isinstance(relay, _Owner):
        return  # daemon.user is not on this host: see _Owner.of
    if info.st_uid not in (relay.uid, 0):
        raise ConfigError(
            f"{where}: {path} belongs to {_user_name(info.st_uid)}; a secret must belong to "
            f"the relay's user {relay.name} (or root): chown {relay.name} {path}"
        )
    if mode & 0o040 and info.st_gid != relay.gid:
        raise ConfigError(
            f"{where}: {path} is readable by the group {_group_name(info.st_gid)}, not the "
            f"relay's group {relay.group}: chgrp {relay.group} {path} (or chmod 600 {path})"
        )
    readable = relay.uid in (0, info.st_uid) or mode & 0o040
    if not readable:
        raise ConfigError(
            f"{where}: {path} belongs to root with mode {mode:04o}, so the relay's user "
            f"{relay.name} cannot read it: chown {relay.name} {path} (or chgrp "
            f"{relay.group} {path} and chmod 640 {path})"
        )
