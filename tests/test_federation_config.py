"""The federation: section, addresses and rules naming name@host: validated
before anything binds, printed by check-config."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ccc_relay.policy.acl import Policy
from ccc_relay.policy.config import ConfigError, Rule, config_from_mapping
from ccc_relay.protocol.codec import decode_client_frame
from ccc_relay.protocol.names import address_problem, host_problem, split_address
from tests.support import run_cli

KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, mode in (
        ("ca.pem", 0o644),
        ("h1.pem", 0o644),
        ("h1-key.pem", 0o600),
        ("h1.nk", 0o600),
    ):
        path = tmp_path / name
        path.write_text("x\n")
        path.chmod(mode)
        out[name] = path
    return out


def section(files: dict[str, Path], **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "host": "h1",
        "servers": ["tls://127.0.0.1:4222"],
        "tls": {
            "ca": str(files["ca.pem"]),
            "cert": str(files["h1.pem"]),
            "key": str(files["h1-key.pem"]),
        },
        "nkey_seed": str(files["h1.nk"]),
        "peers": {"h2": {"key": KEY}},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_a_full_section_loads(files: dict[str, Path]) -> None:
    config = config_from_mapping({"federation": section(files, publish_timeout="2s", stream="FED")})
    fed = config.federation
    assert fed is not None
    assert fed.host == "h1" and fed.servers == ("tls://127.0.0.1:4222",)
    assert fed.tls_key == files["h1-key.pem"] and fed.nkey_seed == files["h1.nk"]
    assert fed.peers == {"h2": KEY} and fed.stream == "FED" and fed.publish_timeout == 2.0
    assert fed.subject == "ccc.v1.h1"
    assert config_from_mapping({}).federation is None


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"host": "H1"}, "federation.host: 'H1' -- a host name uses lower-case"),
        ({"host": None}, "federation.host: None -- expected this relay's host name"),
        ({"servers": ["http://x:1"]}, "expected nats://HOST:PORT or tls://HOST:PORT"),
        ({"servers": ["nats://x"]}, "expected nats://HOST:PORT"),
        ({"servers": ["nats://u:p@x:4222"]}, "no user or password in the URL"),
        ({"servers": []}, "federation.servers: [] -- expected a list of NATS URLs"),
        ({"tls": None}, "a tls:// server needs the relay's certificate"),
        ({"nkey_seed": None}, "the relay must authenticate to NATS"),
        (
            {"nkey_seed": "/nonexistent/seed"},
            "federation.nkey_seed: /nonexistent/seed does not exist",
        ),
        ({"nkey_seed": "seed.nk"}, "must be an absolute path"),
        (
            {"peers": {"h2": {"key": "abc"}}},
            "federation.peers.h2.key: 'abc' is not a base64 Ed25519",
        ),
        ({"peers": {"h1": {"key": KEY}}}, "federation.peers.h1: that is this relay's own host"),
        ({"peers": {"h2": {"key": KEY, "x": 1}}}, "federation.peers.h2.x: unknown key"),
        ({"stream": "a.b"}, "federation.stream: 'a.b'"),
        ({"publish_timeout": "0s"}, "federation.publish_timeout: '0s' -- must be at least 0.1s"),
        ({"nats": 1}, "federation.nats: unknown key"),
    ],
)
def test_a_bad_section_is_named(
    files: dict[str, Path], changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({"federation": section(files, **changes)})
    assert words in str(caught.value)


def test_secret_files_must_be_private(files: dict[str, Path]) -> None:
    files["h1.nk"].chmod(0o644)
    with pytest.raises(
        ConfigError, match=r"mode 0644; a secret must be open to nobody else: chmod 600"
    ):
        config_from_mapping({"federation": section(files)})
    files["h1.nk"].chmod(0o640)  # the relay's group may read it
    assert config_from_mapping({"federation": section(files)}).federation is not None
    creds = files["h1.nk"].with_name("h1.creds")
    creds.write_text("x")
    creds.chmod(0o600)
    with pytest.raises(ConfigError, match="give one of them, not both"):
        config_from_mapping({"federation": section(files, credentials=str(creds))})
    config = config_from_mapping(
        {"federation": section(files, nkey_seed=None, credentials=str(creds))}
    )
    assert config.federation is not None and config.federation.credentials == creds


def test_addresses() -> None:
    assert split_address("bob@h2") == ("bob", "h2") and split_address("bob") == ("bob", None)
    assert address_problem("bob@h2") is None and address_problem("bob") is None
    assert address_problem("bob@") is not None and address_problem("Bob@h2") is not None
    assert host_problem("h" * 63) is None and host_problem("h" * 64) is not None
    # A send may name another relay's agent; the frame's pattern says what an address is.
    frame = decode_client_frame(b'{"type":"send","seq":1,"to":"bob@build-1","body":"x"}')
    assert frame.to == "bob@build-1"  # type: ignore[union-attr]
    for bad in ("bob@", "bob@h@h", "@grp@h2", "bob@H2", "bob@a.b"):
        data = json.dumps({"type": "send", "seq": 1, "to": bad, "body": "x"}).encode()
        with pytest.raises(Exception, match="to"):
            decode_client_frame(data)


def test_rules_may_name_another_relays_agent(files: dict[str, Path]) -> None:
    fed = section(files)
    config = config_from_mapping(
        {
            "federation": fed,
            "policy": {
                "allow": ["alice -> bob@h2", "carol@h1 -> dave", "bob@h2 -> alice"],
                "hold": ["eve@h2 -> alice"],
            },
        }
    )
    assert config.rules == (
        Rule("alice", "bob@h2"),
        Rule("carol", "dave"),  # this relay's own host: a local agent
        Rule("bob@h2", "alice"),
        Rule("eve@h2", "alice", "hold"),
    )
    policy = Policy.from_rules(config.rules)
    known = {"alice", "dave", "carol"}
    assert policy.action("alice", "bob@h2", known) == "allow"
    assert policy.action("bob@h2", "alice", known) == "allow"
    assert policy.action("alice", "bob@h3", known) is None
    assert policy.action("bob@h2", "carol", known) is None
    assert policy.action("ghost", "bob@h2", known) is None  # no such local agent


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ({"allow": ["a@h2 -> b@h3"]}, "one side must be an agent of this relay"),
        ({"hold": ["alice -> bob@h2"]}, "hold a message on the relay of its recipient"),
        ({"allow": ["alice -> alice@h1"]}, "an agent does not message itself"),
        ({"allow": ["alice -> bob@"]}, "a host name cannot be empty"),
    ],
)
def test_impossible_rules_are_refused(
    files: dict[str, Path], rule: dict[str, list[str]], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        config_from_mapping({"federation": section(files), "policy": rule})


def test_a_remote_rule_needs_a_federation_section() -> None:
    with pytest.raises(ConfigError, match="names another relay's agent, but this relay has no"):
        config_from_mapping({"policy": {"allow": ["alice -> bob@h2"]}})


def test_check_config_prints_the_federation(tmp_path: Path, files: dict[str, Path]) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(
        json.dumps(
            {
                "daemon": {"state_dir": str(tmp_path / "state")},
                "federation": section(files),
                "policy": {"allow": ["alice -> bob@h2"]},
            }
        )
    )
    result = run_cli("ccc-statusd", "check-config", str(path), "--json")
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)["settings"]
    assert settings["federation.host"] == "h1"
    assert settings["federation.servers"] == ["tls://127.0.0.1:4222"]
    assert settings["federation.auth"] == f"nkey_seed {files['h1.nk']}"
    assert settings["federation.tls"] == [
        f"ca {files['ca.pem']}",
        f"cert {files['h1.pem']}",
        f"key {files['h1-key.pem']}",
    ]
    assert settings["federation.peers"] == [f"h2 (key {KEY})"]
    assert settings["federation.publish_timeout"] == "5s"
    assert settings["policy"] == ["alice -> bob@h2 (allow)"]
    assert not any(key.startswith("federation.tls_") for key in settings)
    human = run_cli("ccc-statusd", "check-config", str(path)).stdout
    assert "federation.host" in human and "h2 (key" in human
    files["h1-key.pem"].chmod(0o604)
    bad = run_cli("ccc-statusd", "check-config", str(path))
    assert bad.returncode == 4 and "federation.tls.key" in bad.stderr and "chmod 600" in bad.stderr
    assert not (tmp_path / "state").exists()  # nothing made, nothing bound


def test_the_frames_carry_forwarded_only_when_set() -> None:
    from ccc_relay.protocol.frames import Accepted

    assert b"forwarded" not in msgspec.json.encode(Accepted(seq=1, id="m_x"))
    assert b'"forwarded":false' in msgspec.json.encode(Accepted(seq=1, id="m_x", forwarded=False))
