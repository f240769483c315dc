"""A federating relay keeps its confinement: TCP only to its NATS servers' ports, nothing else.

The rule builders are checked directly (Landlock through a dry-run seam, the seccomp
rules as libseccomp compiles them); then real processes: a child interpreter confined
by the relay's own ``confine`` and seccomp filter for a federating config tries every
other way out, the same for a relay without ``federation:``, and two relays started
with ``ccc-statusd start`` (hardened as in production) deliver through a real
nats-server with mutual TLS and NKEYs.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ccc_relay.client import RelayClient
from ccc_relay.daemon.confinement import (
    ServerAddressError,
    federation_files,
    nats_endpoints,
)
from ccc_relay.daemon.landlock import (
    NET_BIND_TCP,
    NET_CONNECT_TCP,
    LandlockError,
    LandlockSyscalls,
    restrict_to,
)
from ccc_relay.daemon.seccomp import (
    AF_UNIX,
    DAEMON_POLICY,
    FEDERATING_POLICY,
    compile_filter,
    daemon_policy,
)
from ccc_relay.policy.config_types import FederationConfig
from ccc_relay.protocol.frames import Accepted
from tests.federation_support import HardenedRelay, wait_for
from tests.nats_support import NatsServer, Pki, free_loopback_port

pytest_plugins = ("tests.nats_fixtures",)


def kernel_abi() -> int:
    try:
        return LandlockSyscalls().abi_version()
    except OSError:
        return 0


ABI = kernel_abi()
x86_64_only = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the child's probes use x86_64 conventions"
)


def federation(*servers: str) -> FederationConfig:
    return FederationConfig(host="h1", servers=servers)


# --- the rules, built ------------------------------------------------------------------


def test_nats_endpoints_are_the_addresses_and_ports_of_the_servers() -> None:
    config = federation("tls://127.0.0.1:4222", "nats://[::1]:4333", "tls://10.0.0.7:7422")
    assert nats_endpoints(config) == [("127.0.0.1", 4222), ("::1", 4333), ("10.0.0.7", 7422)]


def test_a_server_named_by_host_name_is_refused_with_what_to_write() -> None:
    with pytest.raises(ServerAddressError, match=r"IP address.*subjectAltName") as refused:
        nats_endpoints(federation("tls://127.0.0.1:4222", "tls://nats1.example:4222"))
    assert "nats1.example" in str(refused.value)
    assert isinstance(refused.value, LandlockError)  # ccc-statusd start reports it as such


def test_the_link_keeps_reading_its_tls_and_nkey_files(tmp_path: Path) -> None:
    files = {n: tmp_path / n for n in ("ca.pem", "h1.pem", "h1-key.pem", "h1.nk")}
    config = FederationConfig(
        host="h1",
        servers=("tls://127.0.0.1:4222",),
        tls_ca=files["ca.pem"],
        tls_cert=files["h1.pem"],
        tls_key=files["h1-key.pem"],
        nkey_seed=files["h1.nk"],
    )
    assert federation_files(config) == list(files.values())


class DryRun(LandlockSyscalls):
    """The real kernel builds the ruleset; nothing is enforced on the test process."""

    def __init__(self, abi: int) -> None:
        super().__init__()
        self.forced_abi = abi
        self.attrs: list[bytes] = []
        self.net_rules: list[tuple[int, int]] = []

    def abi_version(self) -> int:
        return self.forced_abi

    def create_ruleset(self, attr: bytes) -> int:
        self.attrs.append(attr)
        return super().create_ruleset(attr)

    def add_net_rule(self, ruleset_fd: int, allowed_access: int, port: int) -> None:
        self.net_rules.append((allowed_access, port))
        super().add_net_rule(ruleset_fd, allowed_access, port)

    def set_no_new_privs(self) -> None:
        pass

    def count_threads(self) -> int:
        return 1

    def restrict_self(self, ruleset_fd: int, flags: int) -> None:
        pass


@pytest.mark.skipif(ABI < 4, reason="Landlock before ABI 4 does not handle TCP")
def test_landlock_allows_connect_to_the_given_ports_only_and_bind_nowhere(tmp_path: Path) -> None:
    kernel = DryRun(ABI)
    status = restrict_to([tmp_path], connect_ports=[4222, 6222, 4222], syscalls=kernel)
    # Each port once, connect only; bind is handled by the ruleset and given no rule.
    assert kernel.net_rules == [(NET_CONNECT_TCP, 4222), (NET_CONNECT_TCP, 6222)]
    handled_net = int.from_bytes(kernel.attrs[0][8:16], "little")
    assert handled_net == NET_BIND_TCP | NET_CONNECT_TCP
    assert "TCP connect only to ports 4222, 6222, no TCP bind" in status.message


@pytest.mark.skipif(ABI < 4, reason="Landlock before ABI 4 does not handle TCP")
def test_without_ports_landlock_denies_all_tcp(tmp_path: Path) -> None:
    kernel = DryRun(ABI)
    status = restrict_to([tmp_path], syscalls=kernel)
    assert kernel.net_rules == []
    assert "TCP denied" in status.message


@pytest.mark.skipif(ABI < 1, reason="this kernel has no usable Landlock")
def test_before_abi_4_no_network_rule_is_made_and_the_status_says_so(tmp_path: Path) -> None:
    kernel = DryRun(3)
    status = restrict_to([tmp_path], connect_ports=[4222], syscalls=kernel)
    assert kernel.net_rules == []
    assert "TCP not restricted (ABI before 4)" in status.message


def test_a_port_out_of_range_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LandlockError, match="not a TCP port"):
        restrict_to([tmp_path], connect_ports=[70000], syscalls=DryRun(ABI or 4))


def test_seccomp_adds_tcp_only_for_a_federating_relay() -> None:
    assert daemon_policy(federating=False) is DAEMON_POLICY
    assert daemon_policy(federating=True) is FEDERATING_POLICY
    assert not DAEMON_POLICY.tcp and DAEMON_POLICY.socket_family == AF_UNIX
    assert FEDERATING_POLICY.tcp and FEDERATING_POLICY.socket_family == AF_UNIX
    # Everything else the relay never does stays refused in both.
    assert FEDERATING_POLICY.denied == DAEMON_POLICY.denied
    assert "socket (but family 1 and TCP)" in FEDERATING_POLICY.refused()
    assert "socket (but family 1)" in DAEMON_POLICY.refused()
    assert compile_filter(FEDERATING_POLICY) != compile_filter(DAEMON_POLICY)


# --- real confined processes -----------------------------------------------------------

CHILD = """
    import errno, json, socket, sys
    from ccc_relay.daemon.confinement import confine
    from ccc_relay.daemon.seccomp import DaemonFilter, daemon_policy
    from ccc_relay.policy.config import load_config

    def attempt(fn):
        try:
            fn()
        except OSError as exc:
            return errno.errorcode.get(exc.errno, str(exc))
        return "ok"

    def connect(family, address):
        def go():
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(address)
        return go

    def bind_tcp():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))

    config = load_config(sys.argv[1])
    # Listeners made before the confinement, as a NATS server and another service would be.
    listeners, held = {}, []
    for name, port in json.loads(sys.argv[2]).items():
        listener = socket.socket()
        listener.bind(("127.0.0.1", port))
        listener.listen()
        listeners[name] = port
        held.append(listener)
    syscalls = DaemonFilter(daemon_policy(federating=config.federation is not None))
    status, sandbox = confine(config)
    syscalls.enforce()
    seen = {"landlock": status.message}
    for name, port in listeners.items():
        seen[name] = attempt(connect(socket.AF_INET, ("127.0.0.1", port)))
    seen["bind_tcp"] = attempt(bind_tcp)
    seen["udp"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
    seen["udp6"] = attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close())
    seen["raw"] = attempt(
        lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    )
    seen["sctp"] = attempt(
        lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close()
    )
    seen["netlink"] = attempt(
        lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()
    )
    seen["tcp6_socket"] = attempt(lambda: socket.socket(socket.AF_INET6).close())
    a, b = socket.socketpair()
    a.sendall(b"ping")
    seen["unix"] = b.recv(4).decode()
    seen["secrets"] = [attempt(lambda p=p: open(p, "rb").close()) for p in sys.argv[3:]]
    print(json.dumps(seen))
"""


def run_confined(config: Path, listeners: dict[str, int], *readable: Path) -> dict[str, object]:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(CHILD),
            str(config),
            json.dumps(listeners),
            *map(str, readable),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def write_config(state: Path, federation: dict[str, object] | None) -> Path:
    config = state / "relay.yaml"
    body: dict[str, object] = {"daemon": {"state_dir": str(state / "relay")}}
    if federation is not None:
        body["federation"] = federation
    config.write_text(json.dumps(body) + "\n")
    (state / "relay").mkdir(mode=0o700)
    (state / "relay" / "audit").mkdir(mode=0o700)
    return config


@x86_64_only
@pytest.mark.skipif(ABI < 4, reason="Landlock before ABI 4 does not handle TCP")
def test_a_confined_federating_relay_connects_to_its_nats_port_and_nowhere_else(
    state_dir: Path, nats_pki: Pki
) -> None:
    identity = nats_pki.relays["h1"]
    nats_port, other_port = free_loopback_port(), free_loopback_port()
    config = write_config(
        state_dir,
        {
            "host": "h1",
            "servers": [f"tls://127.0.0.1:{nats_port}"],
            "tls": {"ca": str(identity.ca), "cert": str(identity.cert), "key": str(identity.key)},
            "nkey_seed": str(identity.nkey_seed),
        },
    )
    seen = run_confined(
        config, {"nats": nats_port, "other": other_port}, identity.key, identity.nkey_seed
    )
    assert f"TCP connect only to port {nats_port}, no TCP bind" in str(seen.pop("landlock"))
    assert seen == {
        "nats": "ok",  # the configured server's port
        "other": "EACCES",  # Landlock: a port that is not a NATS server's
        "bind_tcp": "EACCES",  # Landlock: no listening on TCP
        "udp": "EPERM",  # seccomp: TCP only (Landlock does not cover UDP)
        "udp6": "EPERM",
        "raw": "EPERM",
        "sctp": "EPERM",
        "netlink": "EPERM",
        "tcp6_socket": "ok",
        "unix": "ping",
        "secrets": ["ok", "ok"],  # the link reads them again at every reconnect
    }


@x86_64_only
def test_a_relay_without_federation_opens_no_network_socket_at_all(
    state_dir: Path,
) -> None:
    other_port = free_loopback_port()
    seen = run_confined(write_config(state_dir, None), {"other": other_port})
    seen.pop("landlock")
    assert seen == {
        "other": "EPERM",  # seccomp: no AF_INET socket can even be made
        "bind_tcp": "EPERM",
        "udp": "EPERM",
        "udp6": "EPERM",
        "raw": "EPERM",
        "sctp": "EPERM",
        "netlink": "EPERM",
        "tcp6_socket": "EPERM",
        "unix": "ping",
        "secrets": [],
    }


# --- the real daemon -------------------------------------------------------------------


@pytest.mark.slow
def test_hardened_relays_deliver_through_nats(state_dir: Path, nats_server: NatsServer) -> None:
    h1 = HardenedRelay(state_dir / "h1", "h1")
    h2 = HardenedRelay(state_dir / "h2", "h2")
    h1.configure(nats_server.relays["h1"], nats_server.urls, {"h2": h2.key}, ["alice -> bob@h2"])
    h2.configure(nats_server.relays["h2"], nats_server.urls, {"h1": h1.key}, ["alice@h1 -> bob"])
    try:
        h1.start()
        h2.start()
        sandbox = h1.status()["sandbox"]
        assert sandbox["seccomp_probe"] == "unshare(0) refused: EPERM"
        if ABI >= 4:
            assert f"TCP connect only to port {nats_server.port}," in sandbox["landlock"]
        alice, bob = h1.add_agent("alice"), h2.add_agent("bob")
        with RelayClient(alice, timeout=15) as a, RelayClient(bob, timeout=15) as b:

            def forwarded() -> Accepted | None:
                answer = a.send("bob@h2", "through two confined relays")
                assert isinstance(answer, Accepted)
                return answer if answer.forwarded else None

            sent = wait_for(forwarded)
            got = wait_for(b.inbox)
        assert [(m.id, m.sender, m.body) for m in got] == [
            (sent.id, "alice@h1", "through two confined relays")
        ]
    finally:
        h1.stop()
        h2.stop()
