"""The systemd units, the AppArmor profile and the production config, checked by the real tools."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ccc_relay.policy.config import Config, load_config
from tests.support import run_cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
SERVICE = PACKAGING / "systemd" / "ccc-statusd.service"
SOCKET = PACKAGING / "systemd" / "ccc-statusd.socket"
PROFILE = PACKAGING / "apparmor" / "usr.bin.ccc-statusd"
CONFIG = PACKAGING / "config" / "ccc-statusd.yaml"
MAX_EXPOSURE = 1.0  # DESIGN: the unit must score at most 1.0

Unit = dict[str, list[tuple[str, str]]]

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd)",
)


def read_unit(path: Path) -> Unit:
    """Sections of a unit file as ordered (key, value) pairs; keys may repeat."""
    unit: Unit = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        unit[section].append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    (value,) = values(unit, section, key)
    return value


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(CONFIG)


# --- systemd ----------------------------------------------------------------------


def exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_systemd_analyze
def test_service_exposure_is_at_most_one() -> None:
    assert exposure(SERVICE) <= MAX_EXPOSURE


def _system_units() -> Path | None:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "sysinit.target").exists():
            return candidate
    return None


def _verify(
    tmp_path: Path, service_text: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of the units inside a scratch root.

    The scratch root holds the distribution's own units (which ours depend on)
    and stand-ins for /usr/bin/ccc-statusd and systemd-socket-proxyd: verify
    insists that ExecStart= names an executable, and the real ones are installed
    by pip and by the system, not by the tests.
    """
    units = _system_units()
    assert units is not None
    root = tmp_path / "root"
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/ccc-statusd.service").write_text(service_text)
    shutil.copy(SOCKET, root / "etc/systemd/system/ccc-statusd.socket")
    for name, text in (extra or {}).items():
        (root / "etc/systemd/system" / name).write_text(text)
    for program in ("usr/bin/ccc-statusd", "usr/lib/systemd/systemd-socket-proxyd"):
        stand_in = root / program
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
    return subprocess.run(
        [
            "systemd-analyze",
            "verify",
            f"--root={root}",
            "--man=no",
            "ccc-statusd.service",
            "ccc-statusd.socket",
            *(extra or {}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_systemd_analyze
@pytest.mark.skipif(_system_units() is None, reason="no systemd unit directory to verify against")
def test_units_verify_without_a_single_warning(tmp_path: Path) -> None:
    result = _verify(tmp_path, SERVICE.read_text())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_systemd_analyze
@pytest.mark.skipif(_system_units() is None, reason="no systemd unit directory to verify against")
def test_verify_would_notice_a_bad_line(tmp_path: Path) -> None:
    broken = SERVICE.read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter")
    result = _verify(tmp_path, broken)
    assert "ProtectSystem" in result.stderr or "protect system" in result.stderr


def test_the_packaged_unit_is_what_the_command_makes_for_the_packaged_config() -> None:
    made = run_cli("ccc-statusd", "systemd-unit", "--config", str(CONFIG))
    assert made.returncode == 0, made.stderr
    assert made.stderr == ""  # the config names exactly the unit's user and directories
    assert made.stdout == SERVICE.read_text()


# --- the federating relay's units ---------------------------------------------------

UPSTREAMS = {"127.0.0.1:4222": "192.0.2.10:4222", "127.0.0.1:4223": "[2001:db8::11]:4222"}


@pytest.fixture
def federating_config(tmp_path: Path) -> Path:
    """The packaged config plus a federation: section whose servers are the proxies' ends."""
    files = {}
    for name in ("ca.pem", "h1.pem", "h1-key.pem", "h1.nk"):
        files[name] = tmp_path / name
        files[name].write_text("x\n")
        files[name].chmod(0o600)
    section = {
        "host": "h1",
        "servers": [f"tls://{local}" for local in UPSTREAMS],
        "tls": {k: str(files[f]) for k, f in (("ca", "ca.pem"), ("cert", "h1.pem"))}
        | {"key": str(files["h1-key.pem"])},
        "nkey_seed": str(files["h1.nk"]),
    }
    config = tmp_path / "ccc-statusd.yaml"
    config.write_text(CONFIG.read_text() + "federation: " + json.dumps(section) + "\n")
    return config


@pytest.fixture
def federating_units(tmp_path: Path, federating_config: Path) -> Path:
    out = tmp_path / "units"
    upstreams = [f"--upstream={local}={server}" for local, server in UPSTREAMS.items()]
    made = run_cli(
        "ccc-statusd",
        "systemd-unit",
        "--config",
        str(federating_config),
        *upstreams,
        "--output",
        str(out),
    )
    assert made.returncode == 0, made.stderr
    return out


def test_a_federating_relay_keeps_a_private_network_and_reaches_nats_through_proxies(
    federating_units: Path,
) -> None:
    assert sorted(p.name for p in federating_units.iterdir()) == [
        "ccc-statusd-nats-4222.service",
        "ccc-statusd-nats-4222.socket",
        "ccc-statusd-nats-4223.service",
        "ccc-statusd-nats-4223.socket",
        "ccc-statusd.service",
    ]
    relay = read_unit(federating_units / "ccc-statusd.service")
    assert one(relay, "Service", "PrivateNetwork") == "yes"
    assert one(relay, "Service", "RestrictAddressFamilies") == "AF_UNIX AF_INET"
    assert one(relay, "Service", "IPAddressDeny") == "any"
    assert one(relay, "Service", "IPAddressAllow") == "localhost"
    # Everything else is the packaged unit's.
    packaged = read_unit(SERVICE)
    network = {"PrivateNetwork", "RestrictAddressFamilies", "IPAddressDeny", "IPAddressAllow"}
    assert [kv for kv in relay["Service"] if kv[0] not in network] == [
        kv for kv in packaged["Service"] if kv[0] not in network
    ]
    socket = read_unit(federating_units / "ccc-statusd-nats-4222.socket")
    assert one(socket, "Socket", "ListenStream") == "127.0.0.1:4222"
    assert one(socket, "Socket", "PrivateNetwork") == "yes"
    assert one(socket, "Unit", "JoinsNamespaceOf") == "ccc-statusd.service"
    proxy = read_unit(federating_units / "ccc-statusd-nats-4222.service")
    assert one(proxy, "Service", "ExecStart").endswith("systemd-socket-proxyd 192.0.2.10:4222")
    assert one(proxy, "Service", "IPAddressAllow") == "192.0.2.10"
    assert one(proxy, "Service", "RestrictAddressFamilies") == "AF_INET"
    proxy6 = read_unit(federating_units / "ccc-statusd-nats-4223.service")
    assert one(proxy6, "Service", "IPAddressAllow") == "2001:db8::11"
    assert one(proxy6, "Service", "RestrictAddressFamilies") == "AF_INET6"


@needs_systemd_analyze
@pytest.mark.parametrize(
    "unit",
    ["ccc-statusd.service", "ccc-statusd-nats-4222.service", "ccc-statusd-nats-4223.service"],
)
def test_federating_units_expose_at_most_one(federating_units: Path, unit: str) -> None:
    assert exposure(federating_units / unit) <= MAX_EXPOSURE


@needs_systemd_analyze
@pytest.mark.skipif(_system_units() is None, reason="no systemd unit directory to verify against")
def test_federating_units_verify_without_a_single_warning(
    tmp_path: Path, federating_units: Path
) -> None:
    extra = {p.name: p.read_text() for p in federating_units.iterdir()}
    result = _verify(tmp_path, extra.pop("ccc-statusd.service"), extra)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_server_outside_loopback_or_without_upstream_is_refused(
    tmp_path: Path, federating_config: Path
) -> None:
    missing = run_cli("ccc-statusd", "systemd-unit", "--config", str(federating_config))
    assert missing.returncode == 2
    assert "--upstream 127.0.0.1:4222=SERVER_IP:PORT" in missing.stderr
    direct = tmp_path / "direct.yaml"
    direct.write_text(federating_config.read_text().replace("127.0.0.1:4223", "192.0.2.11:4222"))
    refused = run_cli(
        "ccc-statusd",
        "systemd-unit",
        "--config",
        str(direct),
        "--upstream=127.0.0.1:4222=192.0.2.10:4222",
    )
    assert refused.returncode == 4
    assert "loopback address" in refused.stderr
    named = tmp_path / "named.yaml"
    named.write_text(federating_config.read_text().replace("127.0.0.1:4223", "nats.example:4222"))
    by_name = run_cli("ccc-statusd", "systemd-unit", "--config", str(named))
    assert by_name.returncode == 4
    assert "IP address" in by_name.stderr


def test_socket_unit_is_the_seeds_socket() -> None:
    socket = read_unit(SOCKET)
    assert one(socket, "Socket", "ListenStream") == "/run/claude-ipc.sock"
    assert one(socket, "Socket", "SocketMode") == "0660"
    assert one(socket, "Socket", "SocketUser") == "claude-ipc"
    assert one(socket, "Socket", "SocketGroup") == "claude-agents"
    assert one(socket, "Socket", "FileDescriptorName") == "agents"


def test_service_runs_unprivileged_with_unix_sockets_only() -> None:
    service = read_unit(SERVICE)
    assert one(service, "Service", "ExecStart") == (
        "/usr/bin/ccc-statusd start --config /etc/ccc-statusd/ccc-statusd.yaml"
    )
    assert one(service, "Service", "User") == "claude-ipc"
    assert one(service, "Service", "DynamicUser") == "no"
    assert one(service, "Service", "NoNewPrivileges") == "yes"
    assert one(service, "Service", "CapabilityBoundingSet") == ""
    assert one(service, "Service", "RestrictAddressFamilies") == "AF_UNIX"
    assert one(service, "Service", "PrivateNetwork") == "yes"
    assert one(service, "Service", "MemoryDenyWriteExecute") == "yes"
    assert one(service, "Service", "UMask") == "0077"
    # In a user namespace SO_PEERCRED would report every agent as 65534.
    assert values(service, "Service", "PrivateUsers") == []
    # systemd 252's @system-service lacks them; without them Landlock is refused.
    allowed = " ".join(values(service, "Service", "SystemCallFilter"))
    for call in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
        assert call in allowed


def test_config_example_names_what_the_units_create(config: Config) -> None:
    service = read_unit(SERVICE)
    socket = read_unit(SOCKET)
    assert str(config.socket_path) == one(socket, "Socket", "ListenStream")
    assert config.socket_group == one(socket, "Socket", "SocketGroup")
    assert config.socket_mode == int(one(socket, "Socket", "SocketMode"), 8)
    assert config.user == one(service, "Service", "User") == one(socket, "Socket", "SocketUser")
    assert config.state_dir == Path("/var/lib") / one(service, "Service", "StateDirectory")
    assert config.audit.log_path == Path("/var/log") / one(service, "Service", "LogsDirectory")
    runtime = Path("/run") / one(service, "Service", "RuntimeDirectory")
    assert config.admin_socket_path.parent == runtime
    exec_start = one(service, "Service", "ExecStart").split()
    config_path = Path(exec_start[exec_start.index("--config") + 1])
    assert config_path.parent == Path("/etc") / one(service, "Service", "ConfigurationDirectory")
    assert config_path.name == CONFIG.name


def test_config_example_keeps_the_seeds_limits(config: Config) -> None:
    assert config.limits.max_message_size == 1_000_000
    assert config.limits.rate_per_minute == 100
    assert config.limits.session_timeout == 24 * 3600
    assert config.audit.retention == 30 * 86400
    assert config.audit.log_all_messages


# --- AppArmor ------------------------------------------------------------------------

FEATURES = Path("/usr/share/apparmor-features/features")


@pytest.mark.skipif(
    shutil.which("apparmor_parser") is None,
    reason="apparmor_parser is not installed (apt-get install apparmor)",
)
def test_apparmor_profile_compiles_without_warnings() -> None:
    # Compile against the distribution's feature set when it ships one, so
    # warnings about rules this kernel would not enforce do not depend on the
    # machine; never load anything into the kernel.
    features = [f"--kernel-features={FEATURES}", "--Werror"] if FEATURES.exists() else []
    result = subprocess.run(
        [
            "apparmor_parser",
            "--skip-kernel-load",
            "--skip-cache",
            "--skip-read-cache",
            *features,
            str(PROFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _apparmor_rules() -> list[tuple[re.Pattern[str], str]]:
    """(path pattern, permissions) of the profile's plain file rules."""
    rules = []
    for line in PROFILE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"\s*(/\S+)\s+([rwkmix]+),", line)
        if match:
            rules.append((re.compile(_glob_to_regex(match.group(1))), match.group(2)))
    return rules


def _glob_to_regex(glob: str) -> str:
    out = ""
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "{":
            end = glob.index("}", i)
            out += "(" + "|".join(re.escape(alt) for alt in glob[i + 1 : end].split(",")) + ")"
            i = end + 1
        elif glob[i] == "[":
            end = glob.index("]", i)
            out, i = out + glob[i : end + 1], end + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return out


def _allows(path: str, permission: str) -> bool:
    return any(
        pattern.fullmatch(path) and permission in perms for pattern, perms in _apparmor_rules()
    )


def test_apparmor_profile_allows_exactly_the_configured_places(config: Config) -> None:
    writable = [
        f"{config.state_dir}/relay.db",
        f"{config.state_dir}/relay.db-wal",
        f"{config.audit.log_path}/audit-2030-01-01.jsonl",
        str(config.socket_path),
        str(config.admin_socket_path),
    ]
    for path in writable:
        assert _allows(path, "w"), path
    assert _allows("/etc/ccc-statusd/ccc-statusd.yaml", "r")
    for path in (
        "/etc/ccc-statusd/ccc-statusd.yaml",
        "/etc/shadow",
        "/home/alice/project/x",
        "/var/lib/other/db",
        "/tmp/x",
    ):
        assert not _allows(path, "w"), path


def test_apparmor_profile_allows_no_other_network() -> None:
    text = PROFILE.read_text(encoding="utf-8")
    network = re.findall(r"^\s*network\b.*$", text, flags=re.M)
    assert network
    assert all(re.fullmatch(r"\s*network unix (stream|dgram),", rule) for rule in network)


# --- MemoryDenyWriteExecute ---------------------------------------------------------


def test_the_relays_python_runs_when_writable_code_is_forbidden(tmp_path: Path) -> None:
    # PR_SET_MDWE (Linux 6.3) applies the rule MemoryDenyWriteExecute= sets
    # with seccomp: no mapping may be writable and executable, or become so.
    code = textwrap.dedent("""
        import ctypes, json, mmap, sys
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            print(json.dumps({"skip": "PR_SET_MDWE is not supported by this kernel"}))
            sys.exit(0)
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            wx = "allowed"
        except OSError:
            wx = "refused"

        import asyncio, sqlite3, uvloop
        from cryptography.hazmat.primitives import hashes, hmac
        import ccc_relay.daemon.landlock, ccc_relay.daemon.privileges
        import ccc_relay.policy.config, ccc_relay.protocol.codec, ccc_relay.store.sqlite

        mac = hmac.HMAC(b"k" * 32, hashes.SHA256())
        mac.update(b"message")
        path = sys.argv[1]

        async def roundtrip():
            server = await asyncio.start_unix_server(
                lambda r, w: (w.write(b"pong\\n"), w.close()), path + "/s.sock"
            )
            reader, writer = await asyncio.open_unix_connection(path + "/s.sock")
            line = await reader.readline()
            writer.close()
            server.close()
            return line.decode().strip()

        db = sqlite3.connect(path + "/relay.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        db.commit()
        print(json.dumps({
            "wx": wx,
            "hmac": len(mac.finalize()),
            "loop": uvloop.run(roundtrip()),
        }))
    """)
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    if "skip" in got:
        pytest.skip(got["skip"])
    assert got == {"wx": "refused", "hmac": 32, "loop": "pong"}
