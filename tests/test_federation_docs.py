"""docs/federation.md says what the code does: the NATS permissions it prints are exactly
those the tests' servers grant (tests/nats_support.py), its example of ``ccc federation
status`` is what the command prints, and its relay section is a valid config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ccc_relay.cli.federation_cmd import describe
from ccc_relay.policy.config import ConfigError, load_config
from tests.nats_support import HOSTS, relay_permissions

DOC = Path(__file__).resolve().parents[1] / "docs" / "federation.md"


def blocks() -> list[str]:
    """The fenced code blocks of the document, in order."""
    found, current = [], None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                found.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return found


def block(starting: str) -> str:
    (found,) = [b for b in blocks() if b.startswith(starting)]
    return found


def test_the_documented_permissions_are_the_ones_the_tests_grant() -> None:
    users = block("authorization {")
    entries = users.split("nkey: ")[1:]
    assert len(entries) == len(HOSTS)
    for host, entry in zip(HOSTS, entries, strict=True):
        assert entry.startswith(f'"UA{host.upper()}...{host}\'s public key"')
        publish = re.search(r"publish: \{ allow: (\[.*?\]) \}", entry)
        subscribe = re.search(r"subscribe: \{ allow: (\[.*?\]) \}", entry)
        assert publish and subscribe, entry
        expected = relay_permissions(host)
        assert json.loads(publish.group(1)) == expected["publish"]["allow"]
        assert json.loads(subscribe.group(1)) == expected["subscribe"]["allow"]


def test_the_documented_status_is_what_the_command_prints() -> None:
    shown = block("federation: h1, connected")
    report = {
        "host": "h1",
        "connected": True,
        "server": "192.0.2.11:4222",
        "reconnects": 0,
        "stream": {"name": "CCC_FEDERATION", "messages": 0, "bytes": 0, "replicas": 3},
        "inbound": {"consumer": "relay-h1", "lag": 0, "unacked": 0, "redelivered": 0},
        "outbound": {
            "queued": 0,
            "outbox_loaded": True,
            "published": 12,
            "duplicates": 0,
            "publish_failures": 0,
            "hosts": {
                "h2": {"queued": 0, "oldest_age": None},
                "h3": {"queued": 0, "oldest_age": None},
            },
        },
        "last_error": None,
    }
    assert "\n".join(describe(report)) + "\n" == shown


def test_the_documented_relay_section_is_a_valid_config(tmp_path: Path) -> None:
    section = block("federation:\n  host: h1")
    files = tmp_path / "federation"
    files.mkdir()
    for name in ("ca.pem", "h1.pem", "h1-key.pem", "h1.nk"):
        (files / name).write_text("x\n")
        (files / name).chmod(0o600)
    peer_key = "A" * 43 + "="  # 32 bytes, base64
    text = section.replace("/etc/ccc-statusd/federation/", f"{files}/")
    text = re.sub(r'"<output of .ccc-statusd pubkey. on h\d>"', f'"{peer_key}"', text)
    config = tmp_path / "relay.yaml"
    config.write_text(f"daemon:\n  state_dir: {tmp_path / 'state'}\n" + text)
    try:
        loaded = load_config(config)
    except ConfigError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"docs/federation.md's federation: section is refused: {exc}")
    assert loaded.federation is not None
    assert loaded.federation.host == "h1"
    assert sorted(loaded.federation.peers) == ["h2", "h3"]
    assert len(loaded.federation.servers) == 3
