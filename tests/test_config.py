"""Config: the seed's block loads as pasted; every mistake names key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccc_relay.policy.config import (
    ConfigError,
    Rule,
    config_from_mapping,
    embedded_defaults,
    load_config,
)
from ccc_relay.policy.units import UnitError, parse_duration, parse_rate, parse_size
from tests.support import run_cli

SEED_BLOCK = """\
# Recommended daemon security configuration
daemon:
  user: claude-ipc          # Non-root user
  socket_path: /var/run/claude-ipc.sock
  socket_mode: 0660
  socket_group: claude-agents

  security:
    max_message_size: 1MB
    rate_limit: 100 msg/min/session
    session_timeout: 24h
    require_session_auth: true

  audit:
    log_all_messages: true
    log_path: /var/log/claude-ipc/
    retention: 30d
"""


def test_the_seed_block_loads_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_BLOCK)
    config = load_config(path)
    assert config.user == "claude-ipc"
    assert config.socket_path == Path("/var/run/claude-ipc.sock")
    assert config.socket_mode == 0o660
    assert config.socket_group == "claude-agents"
    assert config.limits.max_message_size == 1_000_000
    assert config.limits.rate_per_minute == 100
    assert config.limits.session_timeout == 24 * 3600
    assert config.limits.require_session_auth is True
    assert config.audit.log_all_messages is True
    assert config.audit.log_path == Path("/var/log/claude-ipc")
    assert config.audit.retention == 30 * 86400


def test_a_relay_with_its_own_user_keeps_its_state_in_var_lib(tmp_path: Path) -> None:
    # The seed names no state_dir: whoever reads the file (root starting it, the
    # relay's user, an operator) must find the same directory, and never the
    # reader's own development state in a home.
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_BLOCK)
    for env in ({"HOME": "/root"}, {"CCC_CACHE_DIR": str(tmp_path / "dev")}, {}):
        config = load_config(path, env=env)
        assert config.state_dir == Path("/var/lib/ccc-statusd")
        assert config.admin_socket_path == Path("/var/lib/ccc-statusd/admin.sock")
    assert load_config(path).audit.log_path == Path("/var/log/claude-ipc")
    # Without daemon.user the relay is a user's own: the development default.
    mine = config_from_mapping({"daemon": {}}, env={"CCC_CACHE_DIR": str(tmp_path / "dev")})
    assert mine.state_dir == tmp_path / "dev"
    # A state_dir given is kept.
    given = config_from_mapping(
        {"daemon": {"user": "claude-ipc", "state_dir": str(tmp_path / "st")}}, env={}
    )
    assert given.state_dir == tmp_path / "st"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1MB", 1_000_000),
        ("1MiB", 1_048_576),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("512", 512),
        ("2 GB", 2_000_000_000),
        ("1.5KB", 1500),
        (64, 64),
    ],
)
def test_sizes_follow_iec_and_si(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1XB", "-1", "MB", "1.5B", True, "1 M B"])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(UnitError):
        parse_size(text)


def test_durations_and_rates() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("250ms") == 0.25
    assert parse_duration(5) == 5
    assert parse_rate("100 msg/min/session") == (100, "session")
    assert parse_rate("10/s") == (600, "session")
    assert parse_rate("6000 msg/hour/agent") == (100, "agent")
    with pytest.raises(UnitError):
        parse_duration("3 fortnights")
    with pytest.raises(UnitError):
        parse_rate("100 per minute")


@pytest.mark.parametrize(
    ("data", "key", "value"),
    [
        (
            {"daemon": {"security": {"max_message_size": "1XB"}}},
            "daemon.security.max_message_size",
            "1XB",
        ),
        (
            {"daemon": {"security": {"rate_limt": "1/s"}}},
            "daemon.security.rate_limt",
            "unknown key",
        ),
        ({"daemon": {"socket_mode": 0o666}}, "daemon.socket_mode", "every local user"),
        ({"daemon": {"socket_mode": 660}}, "daemon.socket_mode", "660"),
        ({"daemon": {"socket_mode": "rw"}}, "daemon.socket_mode", "'rw'"),
        (
            {"daemon": {"security": {"session_timeout": "soon"}}},
            "daemon.security.session_timeout",
            "soon",
        ),
        (
            {"daemon": {"security": {"require_session_auth": False}}},
            "require_session_auth",
            "false",
        ),
        (
            {"daemon": {"audit": {"log_all_messages": "yes"}}},
            "daemon.audit.log_all_messages",
            "yes",
        ),
        ({"daemon": {"socket_path": "relative.sock"}}, "daemon.socket_path", "absolute"),
        ({"daemon": {"security": {"max_message_size": "1GB"}}}, "max_message_size", "out of range"),
        ({"policy": {"allow": ["alice => bob"]}}, "policy.allow", "alice => bob"),
        ({"policy": {"allow": ["alice -> ../x"]}}, "policy.allow", "../x"),
        ({"demon": {}}, "demon", "unknown key"),
    ],
)
def test_invalid_configs_name_the_key_and_value(data: dict, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(data)
    assert key in str(caught.value)
    assert value in str(caught.value)


def test_policy_rules_from_the_config() -> None:
    config = config_from_mapping(
        {"policy": {"allow": ["alice -> bob", "carol <-> dave"], "hold": ["eve -> bob"]}}
    )
    assert set(config.rules) == {
        Rule("alice", "bob"),
        Rule("carol", "dave"),
        Rule("dave", "carol"),
        Rule("eve", "bob", "hold"),
    }


def test_defaults_follow_the_cache_dir_rules(tmp_path: Path) -> None:
    assert (
        embedded_defaults({"CCC_CACHE_DIR": str(tmp_path)}).socket_path == tmp_path / "daemon.sock"
    )
    xdg = embedded_defaults({"XDG_CACHE_HOME": str(tmp_path)})
    assert xdg.state_dir == tmp_path / "ccc-status"
    home = embedded_defaults({})
    assert home.state_dir == Path.home() / ".cache" / "ccc-status"


def test_path_prints_the_default_socket(tmp_path: Path) -> None:
    result = run_cli("ccc-statusd", "path", "--socket", env={"CCC_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0
    assert result.stdout.strip() == str(tmp_path / "daemon.sock")
    result = run_cli(
        "ccc-statusd",
        "path",
        "--socket",
        env={"CCC_CACHE_DIR": "", "XDG_CACHE_HOME": str(tmp_path)},
    )
    assert result.stdout.strip() == str(tmp_path / "ccc-status" / "daemon.sock")


def test_check_config_prints_effective_settings_and_names_missing_user(tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_BLOCK.replace("claude-ipc  ", "ccc-no-such-user"))
    result = run_cli("ccc-statusd", "check-config", str(path))
    assert "max_message_size" in result.stdout and "1000000 bytes (1MB)" in result.stdout
    assert "100 msg/min/session" in result.stdout
    assert "useradd --system" in result.stderr and "ccc-no-such-user" in result.stderr
    assert result.returncode == 4
    # start refuses with the same sentence and the same exit status, binding nothing.
    started = run_cli("ccc-statusd", "start", "--config", str(path))
    assert started.returncode == result.returncode
    assert "useradd --system" in started.stderr and "ccc-no-such-user" in started.stderr


def test_check_config_rejects_a_bad_file_with_key_and_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("daemon:\n  security:\n    max_message_size: huge\n")
    result = run_cli("ccc-statusd", "check-config", str(path))
    assert result.returncode == 4
    assert "daemon.security.max_message_size" in result.stderr and "huge" in result.stderr


def test_start_with_invalid_config_binds_nothing(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"daemon:\n  socket_path: {sock}\n  state_dir: {tmp_path}/st\n"
        "  security:\n    rate_limit: fast\n"
    )
    result = run_cli("ccc-statusd", "start", "--config", str(path), "--allow-root")
    assert result.returncode == 4
    assert "daemon.security.rate_limit" in result.stderr and "fast" in result.stderr
    assert not sock.exists()
    assert not (tmp_path / "st").exists()


def test_start_with_missing_group_says_how_to_create_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"daemon:\n  state_dir: {tmp_path}/st\n  socket_group: ccc-no-such-group\n")
    result = run_cli("ccc-statusd", "start", "--config", str(path), "--allow-root")
    assert result.returncode == 4
    assert "groupadd --system ccc-no-such-group" in result.stderr
