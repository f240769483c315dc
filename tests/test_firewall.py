"""The egress firewall: its text, nft's verdict on it, and its effect on packets.

Every nft and packet test runs in network namespaces the test creates; the
host's own ruleset and interfaces are never touched and no packet leaves them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from ccc_relay.cli.containers_cmd import firewall
from ccc_relay.containers.firewall import (
    BLOCKED_V4,
    BLOCKED_V6,
    TABLE,
    FirewallError,
    addresses_from_ip_json,
    nft_ruleset,
    parse_address,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("CCC_UPDATE_GOLDEN") == "1"

# The ranges the seed and the brief name; each must be dropped as it is or inside a larger one.
REQUIRED_V4 = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
]
REQUIRED_V6 = ["fc00::/7", "fe80::/10", "::1/128"]


def _private_netns() -> list[str]:
    # Root gets a bare network namespace; anyone else maps themselves to root in
    # a user namespace first, which is enough for nft inside it.
    if os.geteuid() == 0:
        return ["unshare", "--net"]
    return ["unshare", "--user", "--map-root-user", "--net"]


def _need_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install nftables iproute2 util-linux)")
    probe = subprocess.run([*_private_netns(), "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a private network namespace: {probe.stderr.decode().strip()}")


def _in_netns(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_private_netns(), "sh", "-euc", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _sample_ruleset() -> str:
    return nft_ruleset(
        bridge="ccc0",
        host_addresses=[parse_address("203.0.113.7"), parse_address("2001:db8::7")],
        allow_dns_to=[parse_address("10.89.0.1")],
    )


# --- the text ---------------------------------------------------------------


def test_ruleset_matches_golden_file() -> None:
    path = GOLDEN / "firewall.nft"
    text = _sample_ruleset()
    if UPDATE_GOLDEN:
        path.write_text(text)
    assert text == path.read_text(), "ruleset changed; CCC_UPDATE_GOLDEN=1 rewrites the file"


@pytest.mark.parametrize("cidr", REQUIRED_V4 + REQUIRED_V6)
def test_required_range_is_dropped(cidr: str) -> None:
    wanted = ipaddress.ip_network(cidr)
    blocked = [ipaddress.ip_network(c) for c, _ in BLOCKED_V4 + BLOCKED_V6]
    assert any(
        wanted.version == net.version and wanted.subnet_of(net)  # type: ignore[arg-type]
        for net in blocked
    )


@pytest.mark.parametrize("table", [BLOCKED_V4, BLOCKED_V6], ids=["v4", "v6"])
def test_blocked_ranges_do_not_overlap(table: tuple[tuple[str, str], ...]) -> None:
    # One interval set holds them; nft refuses overlapping intervals.
    nets = [ipaddress.ip_network(cidr) for cidr, _ in table]
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            assert not a.overlaps(b), f"{a} overlaps {b}"


def test_every_range_says_why() -> None:
    assert all(why.strip() for _, why in BLOCKED_V4 + BLOCKED_V6)


def test_public_addresses_are_not_blocked() -> None:
    blocked = [ipaddress.ip_network(c) for c, _ in BLOCKED_V4 + BLOCKED_V6]
    for public in ("1.1.1.1", "93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"):
        address = ipaddress.ip_address(public)
        assert not any(address in net for net in blocked), public


@pytest.mark.parametrize("bridge", ['ccc0"; flush ruleset; #', "a" * 16, "", "br 0", "ccc0\n"])
def test_bridge_name_that_could_inject_or_cannot_exist_is_refused(bridge: str) -> None:
    with pytest.raises(FirewallError, match="interface name"):
        nft_ruleset(bridge=bridge)


def test_host_addresses_and_dns_land_in_their_own_sets() -> None:
    text = _sample_ruleset()
    assert re.search(r"set host_ip \{[^}]*elements = \{ 203\.0\.113\.7 \}", text)
    assert re.search(r"set host_ip6 \{[^}]*elements = \{ 2001:db8::7 \}", text)
    assert "ip daddr @dns_ip meta l4proto { tcp, udp } th dport 53 accept" in text
    # The DNS exception comes before any drop.
    assert text.index("@dns_ip") < text.index("counter drop")


def test_ruleset_without_hosts_or_dns_has_no_empty_sets() -> None:
    text = nft_ruleset()
    assert "set host_" not in text
    assert "set dns_" not in text
    assert "fib daddr type local counter drop" in text


def test_addresses_are_read_from_ip_json() -> None:
    sample = """[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1"},
      {"family":"inet6","local":"::1"}]},
      {"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24},
      {"family":"inet6","local":"fe80::fc:ff:fe00:1","scope":"link"}]},
      {"ifname":"down0","addr_info":[]}]"""
    assert [str(a) for a in addresses_from_ip_json(sample)] == [
        "127.0.0.1",
        "::1",
        "192.0.2.2",
        "fe80::fc:ff:fe00:1",
    ]


@pytest.mark.parametrize("text", ["not json", '[{"addr_info": [{"local": "nope"}]}]'])
def test_unreadable_ip_json_is_an_error(text: str) -> None:
    with pytest.raises(FirewallError):
        addresses_from_ip_json(text)


def test_cli_prints_the_ruleset_with_given_addresses() -> None:
    result = CliRunner().invoke(
        firewall,
        [
            "--print",
            "--bridge",
            "br-agents",
            "--no-detect-host-addresses",
            "--host-address",
            "198.51.100.20",
            "--allow-dns-to",
            "10.89.0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert 'iifname "br-agents" jump from_sandbox' in result.output
    assert "elements = { 198.51.100.20 }" in result.output
    assert "@dns_ip" in result.output


def test_cli_refuses_a_bad_address() -> None:
    result = CliRunner().invoke(firewall, ["--no-detect-host-addresses", "--host-address", "x"])
    assert result.exit_code == 1
    assert "'x' is not an IP address" in result.output


def test_cli_apply_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(firewall, ["--apply", "--no-detect-host-addresses"])
    assert result.exit_code == 1
    assert "--apply needs root" in result.output


# --- nft's verdict, in a private namespace ------------------------------------------


def test_nft_accepts_the_ruleset(tmp_path: Path) -> None:
    _need_tools("nft", "unshare")
    path = tmp_path / "egress.nft"
    path.write_text(_sample_ruleset())
    result = _in_netns(f"nft -c -f {path}")
    assert result.returncode == 0, result.stderr


def test_loaded_ruleset_lists_the_drops(tmp_path: Path) -> None:
    _need_tools("nft", "unshare")
    path = tmp_path / "egress.nft"
    path.write_text(_sample_ruleset())
    # Loading twice proves a reload replaces the table instead of failing or doubling it.
    result = _in_netns(f"nft -f {path} && nft -f {path} && nft list ruleset")
    assert result.returncode == 0, result.stderr
    listing = result.stdout
    assert listing.count(f"table inet {TABLE}") == 1
    assert "type filter hook prerouting priority raw; policy accept;" in listing
    assert 'iifname "ccc0" jump from_sandbox' in listing
    for rule in (
        "ip daddr @blocked_ip counter",
        "ip6 daddr @blocked_ip6 counter",
        "ip daddr @host_ip counter",
        "fib daddr type local counter",
    ):
        assert rule in listing, rule
    for cidr in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "::1",
    ):
        assert cidr in listing, cidr


def test_cli_apply_loads_the_table_in_a_private_namespace() -> None:
    _need_tools("nft", "unshare", "ip")
    program = "from ccc_relay.cli.containers_cmd import firewall; firewall.main(['--apply'])"
    script = f'ip link set lo up; {sys.executable} -c "{program}"; nft list table inet {TABLE}'
    if os.geteuid() != 0:
        pytest.skip("--apply checks for root; the user-namespace root is not euid 0 outside")
    result = _in_netns(script)
    assert result.returncode == 0, result.stderr
    assert "loaded table inet ccc_relay_egress" in result.stderr
    # The namespace's only address, loopback, was read from the (namespace's) host.
    assert re.search(r"set host_ip \{.*?127\.0\.0\.1", result.stdout, re.S)


# --- packets, between namespaces the test makes ---------------------------------------

# The "host" is a fresh network namespace; inside it: bridge ccc0 (10.200.0.1)
# with two "containers" (10.200.0.2 and .3, each its own namespace), a "LAN"
# interface (192.168.77.1; a veth, as some kernels lack the dummy driver), and
# an uplink to an "internet" namespace (host 93.184.216.1, internet
# 93.184.216.34) that also holds a private neighbour 172.20.0.5. These
# addresses exist only inside those namespaces.
_TOPOLOGY = r"""
PY="$1"; RULESET="$2"
PIDS=""
cleanup() { kill $PIDS 2>/dev/null || true; }
trap cleanup EXIT
ip link set lo up
unshare --net sleep 300 >/dev/null & SANDBOX=$!
unshare --net sleep 300 >/dev/null & OTHER=$!
unshare --net sleep 300 >/dev/null & NET=$!
PIDS="$SANDBOX $OTHER $NET"
for pid in $SANDBOX $OTHER $NET; do
  while [ "$(readlink /proc/$pid/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do :; done
done
in_ns() { pid=$1; shift; nsenter -t "$pid" -n "$@"; }

ip link add ccc0 type bridge
ip addr add 10.200.0.1/24 dev ccc0
ip link set ccc0 up
n=2
for pid in $SANDBOX $OTHER; do
  ip link add "veth$n" type veth peer name "peer$n"
  ip link set "veth$n" master ccc0 up
  ip link set "peer$n" netns "$pid"
  in_ns "$pid" ip link set lo up
  in_ns "$pid" ip link set "peer$n" name eth0
  in_ns "$pid" ip addr add "10.200.0.$n/24" dev eth0
  in_ns "$pid" ip link set eth0 up
  in_ns "$pid" ip route add default via 10.200.0.1
  n=$((n + 1))
done

ip link add lan0 type veth peer name lan-peer
ip addr add 192.168.77.1/24 dev lan0
ip link set lan0 up

ip link add wan0 type veth peer name wan-peer
ip link set wan-peer netns "$NET"
ip addr add 93.184.216.1/24 dev wan0
ip link set wan0 up
ip route add 172.20.0.0/16 via 93.184.216.34
in_ns "$NET" ip link set lo up
in_ns "$NET" ip addr add 93.184.216.34/24 dev wan-peer
in_ns "$NET" ip addr add 172.20.0.5/32 dev lo
in_ns "$NET" ip link set wan-peer up
in_ns "$NET" ip route add 10.200.0.0/24 via 93.184.216.1
echo 1 > /proc/sys/net/ipv4/ip_forward
BRNF=/proc/sys/net/bridge/bridge-nf-call-iptables
echo "bridge-nf-call-iptables=$(cat $BRNF 2>/dev/null || echo absent)"

# Started directly (not through in_ns) so that $! is the server itself.
"$PY" -c "$SERVE" 0.0.0.0 8080 >/dev/null & PIDS="$PIDS $!"
nsenter -t "$NET" -n "$PY" -c "$SERVE" 0.0.0.0 8080 >/dev/null & PIDS="$PIDS $!"
nsenter -t "$OTHER" -n "$PY" -c "$SERVE" 0.0.0.0 8080 >/dev/null & PIDS="$PIDS $!"
sleep_until_listening() { in_ns "$1" "$PY" -c "$PROBE" wait "$2"; }
sleep_until_listening $NET 93.184.216.34
sleep_until_listening $OTHER 10.200.0.3
"$PY" -c "$PROBE" wait 192.168.77.1

check() { in_ns "$SANDBOX" "$PY" -c "$PROBE" "$1" 93.184.216.34 172.20.0.5 10.200.0.1 \
  192.168.77.1 93.184.216.1 10.200.0.3 loopback; }
check before
nft -f "$RULESET"
check after
nft list table inet ccc_relay_egress | grep -c "counter packets [1-9]" | sed 's/^/counters_hit=/'
"""

_SERVE = textwrap.dedent("""
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(16)
    while True:
        c, _ = s.accept()
        c.sendall(b"hi")
        c.close()
""")

_PROBE = textwrap.dedent("""
    import socket, sys, time
    def reach(host, port=8080, timeout=1.0):
        try:
            with socket.create_connection((host, port), timeout=timeout) as c:
                return c.recv(2) == b"hi"
        except OSError:
            return False
    if sys.argv[1] == "wait":
        deadline = time.monotonic() + 10
        while not reach(sys.argv[2], timeout=0.2) and time.monotonic() < deadline:
            time.sleep(0.05)
        sys.exit(0)
    label = sys.argv[1]
    for host in sys.argv[2:]:
        if host == "loopback":
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            c = socket.create_connection(server.getsockname(), timeout=1)
            ok = server.accept()[0] is not None
            c.close()
        else:
            ok = reach(host)
        print(label, host, "open" if ok else "blocked", flush=True)
""")


@pytest.mark.slow
def test_bridge_side_reaches_public_but_not_private_or_host(tmp_path: Path) -> None:
    _need_tools("nft", "unshare", "ip", "nsenter")
    if os.geteuid() != 0:
        pytest.skip("building veth/bridge topologies across namespaces needs root")
    ruleset = tmp_path / "egress.nft"
    # 93.184.216.1 is on the namespace's uplink; listing it also exercises the
    # explicit host set (fib would catch it anyway).
    ruleset.write_text(nft_ruleset(host_addresses=[parse_address("93.184.216.1")]))
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "SERVE": _SERVE,
        "PROBE": _PROBE,
    }
    result = subprocess.run(
        [*_private_netns(), "bash", "-euc", _TOPOLOGY, "topology", sys.executable, str(ruleset)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    seen = dict(
        ((label, host), state)
        for label, host, state in (
            line.split()
            for line in result.stdout.splitlines()
            if line.startswith(("before ", "after "))
        )
    )
    # Without the ruleset everything answers: the drops below are the ruleset's doing.
    assert {state for (label, _), state in seen.items() if label == "before"} == {"open"}, seen
    after = {host: state for (label, host), state in seen.items() if label == "after"}
    assert after == {
        "93.184.216.34": "open",  # public egress through the host
        "172.20.0.5": "blocked",  # a private address beyond the host
        "10.200.0.1": "blocked",  # the bridge gateway, an address of the host
        "192.168.77.1": "blocked",  # the host's LAN address
        "93.184.216.1": "blocked",  # the host's public address
        "10.200.0.3": "blocked" if "bridge-nf-call-iptables=1" in result.stdout else "open",
        "loopback": "open",  # the sandbox's own loopback is its own business
    }, result.stdout
    assert re.search(r"counters_hit=[1-9]", result.stdout)
