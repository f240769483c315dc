"""Start-up step 5's confinement: Landlock to the relay's own dirs, then the self-check.

A relay with a ``federation:`` section may also connect over TCP to its NATS
servers' ports (Landlock rules by port; the systemd unit's ``IPAddressAllow=``
holds the addresses) and keeps reading its TLS and NKEY files, which each
reconnect loads again. Its servers must be written as IP addresses: confined,
the relay reads no /etc/hosts and may send no DNS query.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ccc_relay.daemon.landlock import LandlockError, LandlockStatus, restrict_to
from ccc_relay.policy.config import Config
from ccc_relay.policy.config_types import FederationConfig

log = logging.getLogger("ccc_relay.daemon")

# Directories that are never confined-to as a whole: the admin socket's parent
# is added to the Landlock rules only when it is a directory of the relay's own.
_SHARED_RUNTIME_DIRS = frozenset({Path("/run"), Path("/var/run"), Path("/tmp"), Path("/")})  # noqa: S108
CONFINEMENT_PROBE = Path("/etc/hostname")  # must be unreadable once confined
# Directories too wide to open for reading because a config file sits there.
_SHARED_CONFIG_DIRS = frozenset(
    Path(p)
    for p in ("/", "/etc", "/tmp", "/var/tmp", "/run", "/var/run", "/var", "/home", "/root")  # noqa: S108
) | frozenset({Path("/dev/shm"), Path("/srv"), Path("/opt"), Path("/var/lib")})  # noqa: S108
_HOME_ROOTS = frozenset({Path("/home")})  # /home/NAME is someone's home


class ServerAddressError(LandlockError):
    """A NATS server named by a host name, which a confined relay cannot resolve."""


def nats_endpoints(federation: FederationConfig) -> list[tuple[str, int]]:
    """(IP address, port) of each of ``federation.servers``, in order.

    Raises ServerAddressError for a server written as a host name.
    """
    endpoints = []
    for url in federation.servers:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ServerAddressError(
                f"federation.servers: {url!r} names its server by name, and the confined "
                "relay reads no /etc/hosts and sends no DNS query: write its IP address "
                f"(e.g. {parts.scheme}://192.0.2.10:{port}) and give the NATS server's "
                "certificate that address as a subjectAltName"
            ) from None
        assert port is not None  # the config checked it
        endpoints.append((str(address), port))
    return endpoints


def federation_files(federation: FederationConfig) -> list[Path]:
    """The TLS and NKEY files the link reads again at every (re)connect. Raises nothing."""
    files = (
        federation.tls_ca,
        federation.tls_cert,
        federation.tls_key,
        federation.nkey_seed,
        federation.credentials,
    )
    return [f for f in files if f is not None]


def confine(config: Config) -> tuple[LandlockStatus, dict[str, Any]]:
    """Landlock: read-write only in the state, log and admin-socket dirs; TCP only to
    the NATS servers' ports when the relay federates, else none.

    Returns the status and the sandbox report ``ccc status`` shows. Raises
    LandlockError (ServerAddressError for a NATS server given by name).
    """
    writable = [config.state_dir, config.audit.log_path]
    if config.per_agent_sockets and config.agent_sockets not in writable:
        writable.append(config.agent_sockets)  # sockets of agents added later
    admin_dir = config.admin_socket_path.parent
    if admin_dir not in _SHARED_RUNTIME_DIRS and admin_dir not in writable:
        writable.append(admin_dir)
    # The config stays readable so that a reload (SIGHUP) still works.
    readable, config_dir = config_read_rules(config.source)
    ports: list[int] = []
    if config.federation is not None:
        ports = [port for _, port in nats_endpoints(config.federation)]
        readable += federation_files(config.federation)
    status = restrict_to(writable, readable, files_ro=config_dir, connect_ports=ports)
    sandbox = {
        "landlock": status.message,
        "abi": status.abi,
        "writable": [str(p) for p in writable],
    }
    if config.source is not None and not config_dir:
        log.warning(
            "%s lies in %s, which is shared, so only the file itself stays readable: a reload "
            "after an editor saves it by rename (sed -i, vim) will be refused; keep the config "
            "in a directory of its own, e.g. /etc/ccc-statusd/",
            config.source,
            config.source.parent,
        )
    return status, sandbox


def config_read_rules(source: Path | None) -> tuple[list[Path], list[Path]]:
    """(files, directories) a confined relay keeps reading for reloads. Raises nothing.

    Editors and ``sed -i`` save by writing a new file and renaming it over the
    old one, so a rule on the file alone would end with the first such save.
    The config's directory is allowed instead -- its files read, never listed --
    unless it is shared with things the relay must not read (``/etc``, ``/tmp``,
    a home directory): then only the file, and a warning says so.
    """
    if source is None:
        return [], []
    directory = source.resolve().parent  # a link's target is what gets replaced
    if _shared_dir(directory):
        return [source], []
    return [], [directory]


def _shared_dir(directory: Path) -> bool:
    if directory in _SHARED_CONFIG_DIRS or directory.parent in _HOME_ROOTS:
        return True
    if CONFINEMENT_PROBE.is_relative_to(directory):
        return True
    with contextlib.suppress(RuntimeError, KeyError):
        if directory == Path.home():
            return True
    return False


def check_confinement(status: LandlockStatus, sandbox: dict[str, Any]) -> None:
    """When enforced, prove it: opening ``CONFINEMENT_PROBE`` must fail (noted in ``sandbox``).

    Raises RuntimeError when the probe opens; logs the status otherwise.
    """
    if status.enforced:
        try:
            CONFINEMENT_PROBE.open("rb").close()
        except PermissionError:
            sandbox["probe"] = f"open({CONFINEMENT_PROBE}) denied"
        except OSError as exc:
            sandbox["probe"] = f"open({CONFINEMENT_PROBE}) failed: {exc.strerror}"
        else:
            raise RuntimeError(f"Landlock reported enforced but {CONFINEMENT_PROBE} opened")
    log.info("%s", status.message)
