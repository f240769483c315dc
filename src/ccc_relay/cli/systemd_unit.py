"""``ccc-statusd systemd-unit``: the service unit for a config, its network made from it.

The unit is the same for every relay but for its network lines. Without a
``federation:`` section the relay has no network at all: a private network
namespace, Unix sockets only, every IP address denied.

A federating relay keeps its private network namespace too (that is most of
what keeps the unit's ``systemd-analyze security`` exposure under 1.0): it
reaches each NATS server through a ``systemd-socket-proxyd`` whose listening
socket systemd binds inside the relay's namespace (``JoinsNamespaceOf=``) on a
loopback port, and which connects to that one server on the host's network.
So the relay's ``federation.servers`` are loopback addresses, one per server,
and ``--upstream LOCAL=SERVER`` says where each leads. The relay's unit adds
``AF_INET``/``AF_INET6`` and allows only loopback; each proxy's unit allows
only its server's address (``IPAddressAllow=``); the relay's own Landlock rules
add the ports and its seccomp filter keeps to TCP.

``packaging/systemd/ccc-statusd.service`` is this command's output for
``packaging/config/ccc-statusd.yaml`` (a test keeps them equal).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from ccc_relay.cli.common import (
    EXIT_CONFIG,
    EXIT_USAGE,
    config_option,
    fail,
    handle_errors,
    load_host_config,
)
from ccc_relay.daemon.confinement import ServerAddressError, nats_endpoints
from ccc_relay.policy.config import Config

# What the unit creates and runs; a config that names other places is told so.
UNIT_USER = "claude-ipc"
UNIT_STATE = Path("/var/lib/ccc-statusd")
UNIT_LOGS = Path("/var/log/claude-ipc")
UNIT_RUNTIME = Path("/run/ccc-statusd")
SERVICE = "ccc-statusd.service"
SOCKET_PROXYD = "/usr/lib/systemd/systemd-socket-proxyd"

HEADER = """\
# ccc-statusd: the ccc-relay daemon, started by ccc-statusd.socket.
# Made by 'ccc-statusd systemd-unit --config FILE' (the network lines follow
# the config's federation: section).
#
"""

NO_NETWORK = """\
# Network: none. The relay speaks only over Unix sockets, which need no
# network namespace.
PrivateNetwork=yes
RestrictAddressFamilies=AF_UNIX
IPAddressDeny=any
"""

FEDERATING = """\
# Network: a private namespace holding only loopback, where systemd binds the
# listening sockets of the NATS proxies ({proxies}); each proxy reaches
# one NATS server and nothing else. TCP (the relay's Landlock rules: only
# these ports; its seccomp filter: only TCP) and Unix sockets for the agents.
PrivateNetwork=yes
RestrictAddressFamilies={families}
IPAddressDeny=any
IPAddressAllow=localhost
"""

PROXY_SOCKET = """\
# The relay's end of NATS server {upstream}: a listening socket systemd binds
# inside ccc-statusd.service's private network namespace.
# Made by 'ccc-statusd systemd-unit --config FILE --upstream ... --output DIR'.

[Unit]
Description=ccc-relay: NATS server {upstream} for the relay, at {local}
JoinsNamespaceOf=ccc-statusd.service

[Socket]
ListenStream={local}
PrivateNetwork=yes

[Install]
WantedBy=sockets.target
"""

PROXY_SERVICE = """\
# Carries the relay's connections from {local} (in its private network) to
# NATS server {upstream} on this host's network, and nowhere else.
# Made by 'ccc-statusd systemd-unit --config FILE --upstream ... --output DIR'.

[Unit]
Description=ccc-relay: proxy to NATS server {upstream}
Requires={name}.socket
After={name}.socket

[Service]
ExecStart={proxyd} {upstream}
DynamicUser=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
LockPersonality=yes
MemoryDenyWriteExecute=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
PrivateMounts=yes
PrivateIPC=yes
PrivateUsers=yes
RemoveIPC=yes
KeyringMode=private
ProtectProc=invisible
ProcSubset=pid
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
UMask=0077
RestrictAddressFamilies={family}
IPAddressDeny=any
IPAddressAllow={address}
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
"""


@dataclass(frozen=True)
class Proxy:
    """One NATS server as the relay sees it (``local``, loopback) and as it is (``upstream``)."""

    local: tuple[str, int]
    upstream: tuple[str, int]

    @property
    def name(self) -> str:
        return f"ccc-statusd-nats-{self.local[1]}"

    def units(self) -> dict[str, str]:
        local, upstream = _endpoint(self.local), _endpoint(self.upstream)
        version = ipaddress.ip_address(self.upstream[0]).version
        fields = {
            "local": local,
            "upstream": upstream,
            "name": self.name,
            "proxyd": SOCKET_PROXYD,
            "family": "AF_INET" if version == 4 else "AF_INET6",
            "address": self.upstream[0],
        }
        return {
            f"{self.name}.socket": PROXY_SOCKET.format(**fields),
            f"{self.name}.service": PROXY_SERVICE.format(**fields),
        }


class UnitProblem(Exception):
    """The config and the --upstream options do not make a unit; the text says why."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


UNIT = """\
{header}# systemd creates /run/claude-ipc.sock (owner claude-ipc, group claude-agents,
# mode 0660) and hands it over as file descriptor 3 ($LISTEN_FDS=1,
# $LISTEN_PID, $LISTEN_FDNAMES=agents), so the relay itself never needs root:
# it starts as claude-ipc with no capabilities at all. Check the sandbox with
#   systemd-analyze security ccc-statusd.service
# (the unit scores 0.4 "SAFE"; see docs/deploy.md for what each line buys).

[Unit]
Description=ccc-relay message relay for agents in isolated containers
Requires=ccc-statusd.socket
After=ccc-statusd.socket

[Service]
Type=exec
ExecStart=/usr/bin/ccc-statusd start --config /etc/ccc-statusd/ccc-statusd.yaml
Restart=on-failure
RestartSec=2s

# Identity: a static system user, with its primary group (DynamicUser would
# give the database and the audit log a different owner on every boot).
User=claude-ipc
DynamicUser=no

# Directories systemd creates, owns to claude-ipc and leaves writable under
# ProtectSystem=strict; they match state_dir, audit.log_path and
# admin_socket_path in /etc/ccc-statusd/ccc-statusd.yaml.
StateDirectory=ccc-statusd
StateDirectoryMode=0700
LogsDirectory=claude-ipc
LogsDirectoryMode=0700
RuntimeDirectory=ccc-statusd
RuntimeDirectoryMode=0700
ConfigurationDirectory=ccc-statusd
UMask=0077

# max_connections is 4096 by default; the usual soft limit of 1024 descriptors
# would refuse agents long before that.
LimitNOFILE=8192
TasksMax=64

# Privileges: none, and no way to gain any.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
SecureBits=noroot-locked
RestrictSUIDSGID=yes
LockPersonality=yes
# CPython, uvloop, cryptography and SQLite never map writable code (checked
# under PR_SET_MDWE by tests/test_packaging.py).
MemoryDenyWriteExecute=yes

# Filesystem: the OS read-only, homes and other services' /tmp invisible.
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
PrivateMounts=yes
PrivateIPC=yes
RemoveIPC=yes
KeyringMode=private
ProtectProc=invisible
ProcSubset=pid
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
# PrivateUsers= is deliberately absent: in a user namespace the agents' uids
# would read back as 65534 through SO_PEERCRED and could not be checked.

{network}
# System calls: the service set minus privileged and resource-changing calls.
# systemd 252's @system-service lacks the Landlock calls the relay uses to
# confine itself further, so they are listed explicitly. A refused call fails
# with EPERM (which the relay reports) instead of killing the process.
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=landlock_create_ruleset landlock_add_rule landlock_restrict_self
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

# Confined by packaging/apparmor/usr.bin.ccc-statusd where AppArmor is on;
# the leading "-" starts the service anyway where it is not.
AppArmorProfile=-ccc-statusd

[Install]
WantedBy=multi-user.target
"""


def parse_endpoint(text: str) -> tuple[str, int]:
    """``ADDRESS:PORT`` (``[V6]:PORT``) as (address, port). Raises UnitProblem."""
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise UnitProblem(f"{text!r} is not ADDRESS:PORT with an IP address") from None
    if not 0 < number < 65536:
        raise UnitProblem(f"{text!r}: {number} is not a TCP port")
    return str(address), number


def _endpoint(endpoint: tuple[str, int]) -> str:
    address, port = endpoint
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def proxies(config: Config, upstreams: Sequence[str]) -> list[Proxy]:
    """One proxy per NATS server of ``config``. Raises UnitProblem, ServerAddressError."""
    if config.federation is None:
        if upstreams:
            raise UnitProblem("--upstream is for a relay with a federation: section")
        return []
    leads: dict[tuple[str, int], tuple[str, int]] = {}
    for option in upstreams:
        local, sep, server = option.partition("=")
        if not sep:
            raise UnitProblem(f"--upstream {option!r}: expected LOCAL=SERVER")
        leads[parse_endpoint(local)] = parse_endpoint(server)
    found = []
    for endpoint in nats_endpoints(config.federation):
        if not ipaddress.ip_address(endpoint[0]).is_loopback:
            raise UnitProblem(
                f"federation.servers names {_endpoint(endpoint)}, but under the unit the relay "
                "has a private network: write each server as a loopback address (e.g. "
                "tls://127.0.0.1:4222) and say where it leads with --upstream "
                "127.0.0.1:4222=SERVER_IP:4222",
                EXIT_CONFIG,
            )
        if endpoint not in leads:
            raise UnitProblem(
                f"federation.servers names {_endpoint(endpoint)}: say which NATS server it "
                f"leads to with --upstream {_endpoint(endpoint)}=SERVER_IP:PORT"
            )
        found.append(Proxy(endpoint, leads.pop(endpoint)))
    if leads:
        extra = ", ".join(_endpoint(e) for e in leads)
        raise UnitProblem(f"--upstream {extra}: not one of federation.servers")
    return found


def network_lines(config: Config, found: Sequence[Proxy]) -> str:
    """The relay unit's network lines."""
    if config.federation is None:
        return NO_NETWORK
    versions = {ipaddress.ip_address(p.local[0]).version for p in found}
    families = ["AF_UNIX"] + [f for v, f in ((4, "AF_INET"), (6, "AF_INET6")) if v in versions]
    names = ", ".join(f"{p.name}.socket" for p in found)
    return FEDERATING.format(families=" ".join(families), proxies=names)


def render_units(config: Config, upstreams: Sequence[str] = ()) -> dict[str, str]:
    """Every unit file ``config`` needs, by file name: ccc-statusd.service first.

    Raises UnitProblem or ServerAddressError.
    """
    found = proxies(config, upstreams)
    units = {SERVICE: UNIT.format(header=HEADER, network=network_lines(config, found))}
    for proxy in found:
        units.update(proxy.units())
    return units


def mismatches(config: Config) -> list[str]:
    """Where ``config`` names other places than the unit creates, as sentences."""
    expected = (
        ("daemon.user", config.user, UNIT_USER, "User="),
        ("daemon.state_dir", config.state_dir, UNIT_STATE, "StateDirectory="),
        ("daemon.audit.log_path", config.audit.log_path, UNIT_LOGS, "LogsDirectory="),
        (
            "daemon.admin_socket_path",
            config.admin_socket_path.parent,
            UNIT_RUNTIME,
            "RuntimeDirectory=",
        ),
    )
    return [
        f"{key} is {value}, but the unit's {line} gives {want}: change one of them"
        for key, value, want, line in expected
        if (str(value) if value is not None else None) != str(want)
    ]


@click.command("systemd-unit")
@config_option
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="LOCAL=SERVER",
    help="A NATS server: the loopback ADDRESS:PORT federation.servers names = the server's "
    "IP:PORT (once per server).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write every unit into this directory instead of printing ccc-statusd.service.",
)
@handle_errors
def systemd_unit(config_path: str | None, upstreams: tuple[str, ...], output: Path | None) -> None:
    """Make ccc-statusd.service (and the NATS proxies' units) for the relay's config.

    Without a federation: section the relay gets no network at all
    (PrivateNetwork=yes, RestrictAddressFamilies=AF_UNIX, IPAddressDeny=any).
    A federating relay keeps its private network: each NATS server is reached
    through a systemd-socket-proxyd listening inside it on the loopback address
    federation.servers names; --upstream says which server each one leads to,
    and only that address is allowed to the proxy. The unit runs the config
    installed as /etc/ccc-statusd/ccc-statusd.yaml; where the config names
    other places than the unit creates, a note on stderr says which.

    \b
    Examples:
      ccc-statusd systemd-unit --config /etc/ccc-statusd/ccc-statusd.yaml
      ccc-statusd systemd-unit --config /etc/ccc-statusd/ccc-statusd.yaml \
          --upstream 127.0.0.1:4222=192.0.2.10:4222 --output /etc/systemd/system
    """
    config = load_host_config(config_path, operator=False)
    try:
        units = render_units(config, upstreams)
    except ServerAddressError as exc:
        fail(str(exc), EXIT_CONFIG)
    except UnitProblem as exc:
        fail(str(exc), exc.exit_code)
    for problem in mismatches(config):
        click.echo(f"note: {problem}", err=True)
    if output is None:
        click.echo(units[SERVICE], nl=False)
        if len(units) > 1:
            click.echo(
                f"note: the relay also needs {', '.join(list(units)[1:])}: add --output DIR",
                err=True,
            )
        return
    output.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (output / name).write_text(text)
        click.echo(f"wrote {output / name}")
