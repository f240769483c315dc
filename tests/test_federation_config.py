"""The federation: section, addresses and rules naming name@host: validated
before anything binds, printed by check-config."""

from __future__ import annotations

import base64
import grp
import json
import os
import pwd
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ccc_relay.policy.acl import Policy
from ccc_relay.policy.config import Config, ConfigError, Rule, config_from_mapping
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


def _account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:  # pragma: no cover - every Debian system has them
        pytest.skip(f"no {name} user here")


def _load(files: dict[str, Path], user: str | None = None, **changes: Any) -> Config:
    daemon = {"user": user} if user is not None else {}
    return config_from_mapping({"daemon": daemon, "federation": section(files, **changes)})


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_secret_files_must_belong_to_the_relays_user(files: dict[str, Path]) -> None:
    """Mode is not enough: a seed another user owns could be read or swapped by it, and
    0640 is only as private as the file's group."""
    nobody, daemon = _account("nobody"), _account("daemon")
    seed = files["h1.nk"]
    me = pwd.getpwuid(os.geteuid()).pw_name
    os.chown(seed, nobody.pw_uid, 0)
    with pytest.raises(ConfigError) as caught:
        _load(files)
    assert str(caught.value) == (
        f"federation.nkey_seed: {seed} belongs to nobody; a secret must belong to the "
        f"relay's user {me} (or root): chown {me} {seed}"
    )
    os.chown(seed, 0, nobody.pw_gid)
    seed.chmod(0o640)
    group = grp.getgrgid(nobody.pw_gid).gr_name
    mine = grp.getgrgid(os.getegid()).gr_name
    with pytest.raises(
        ConfigError, match=f"readable by the group {group}, not the relay's group {mine}: chgrp"
    ):
        _load(files)
    os.chown(files["h1-key.pem"], nobody.pw_uid, nobody.pw_gid)
    seed.chmod(0o600)  # no group read: its group does not matter
    with pytest.raises(ConfigError, match=r"federation\.tls\.key: .* belongs to nobody"):
        _load(files)
    os.chown(files["h1-key.pem"], 0, os.getegid())
    assert _load(files).federation is not None

    # With daemon.user, that user (or root) must own it and be able to read it.
    with pytest.raises(ConfigError, match="so the relay's user nobody cannot read it: chown"):
        _load(files, "nobody")
    for path in (seed, files["h1-key.pem"]):
        os.chown(path, nobody.pw_uid, daemon.pw_gid)
    assert _load(files, "nobody").federation is not None
    os.chown(seed, daemon.pw_uid, daemon.pw_gid)
    with pytest.raises(ConfigError, match="belongs to daemon; a secret must belong to the relay's"):
        _load(files, "nobody")
    os.chown(seed, 0, nobody.pw_gid)
    seed.chmod(0o640)  # root's, read by the relay's group: the usual packaging
    assert _load(files, "nobody").federation is not None
    # A daemon.user not on this host: the relay cannot start here (preflight refuses), and
    # checks the owner when it does; the mode is checked anyway.
    assert _load(files, "no-such-relay-user").federation is not None
    seed.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        _load(files, "no-such-relay-user")


@pytest.mark.parametrize(
    "url",
    [
        "nats://relay:s3cret@192.0.2.1:4222",
        "nats://relay:s3cret@192.0.2.1",
        "tls://relay:s3/cr@et@192.0.2.1:4222",
        "relay:s3cret@192.0.2.1:4222",
    ],
)
def test_a_password_in_a_server_url_is_not_echoed(files: dict[str, Path], url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(files, servers=[url])
    text = str(caught.value)
    assert "s3" not in text and "relay:" not in text, text
    assert "***@192.0.2.1" in text, text
    with pytest.raises(ConfigError) as caught:
        _load(files, servers=[url, 7])
    assert "s3" not in str(caught.value)


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
