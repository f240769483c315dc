"""Sanitisation in the relay: what an agent receives is cleaned, and the sender is told."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ccc_relay.client import AsyncRelayClient, Endpoint
from ccc_relay.policy.groups import Group
from ccc_relay.policy.sanitize import SanitizeOptions
from ccc_relay.protocol.codec import encode
from ccc_relay.protocol.frames import Held, Hello, Send
from tests.support import make_config, run_cli
from tests.test_relay import audit_lines, wait_for

HOSTILE = (
    "Deploy done.\x1b[2J\u202eevil\u202c\u200b\U000e0049\U000e0047\U000e004e hidden "
    "see /etc/passwd and ../../secrets, key ghp_" + "a" * 36 + " ok"
)


def exchange(relay_factory, options: SanitizeOptions, body: str):
    relay = relay_factory(sanitize=options)
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    with relay.client(alice) as a:
        accepted = a.send("bob", body)
    with relay.client(bob) as b:
        [message] = b.inbox()
    return relay, accepted, message


def test_hostile_body_is_cleaned_and_the_sender_told(relay_factory) -> None:
    relay, accepted, message = exchange(relay_factory, SanitizeOptions(), HOSTILE)
    for bad in ("\x1b", "\u202e", "\u200b", "\U000e0049", "/etc/passwd", "ghp_"):
        assert bad not in message.body, repr(bad)
    assert "[redacted:" in message.body and "[path:" in message.body
    assert message.body.startswith("Deploy done.")
    assert accepted.changes and all("ghp_" not in c for c in accepted.changes)
    wait_for(lambda: any(x.get("sanitized") for x in audit_lines(relay)))
    [line] = [x for x in audit_lines(relay) if x["event"] == "accepted"]
    assert line["sanitized"]["secret"] == 1 and line["sanitized"]["bidi"] >= 1
    assert "ghp_" not in line["body"]


@pytest.mark.parametrize(
    ("paths", "expected"),
    [("escape", "[path:%2Fetc%2Fpasswd]"), ("redact", "[path]"), ("off", "/etc/passwd")],
)
def test_path_modes(relay_factory, paths: str, expected: str) -> None:
    _, _, message = exchange(relay_factory, SanitizeOptions(paths=paths), "read /etc/passwd")
    assert expected in message.body


def test_sanitisation_can_be_switched_off(relay_factory) -> None:
    body = "plain \u200b text"
    _, accepted, message = exchange(relay_factory, SanitizeOptions(enabled=False), body)
    assert message.body == body and accepted.changes == []


def test_a_large_hostile_body_is_cleaned_without_reordering(relay_factory) -> None:
    relay = relay_factory()
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    big = ("\u202e\u200bword " * 40_000)[:190_000]
    with relay.client(alice) as a:
        first = a.send("bob", big)
        second = a.send("bob", "small one after")
    with relay.client(bob) as b:
        got = b.inbox()
    assert [m.id for m in got] == [first.id, second.id]
    assert "\u202e" not in got[0].body and "\u200b" not in got[0].body


# Ordinary text with slashes that are no host paths: it arrives exactly as sent.
ORDINARY = [
    "the API changed: /v2/orders now needs a cursor",  # docs/claude.md's example
    "GET /api/users/{id} returns 404 for deleted users; POST /v1/messages is fine",
    "see https://example.com/docs/v2/guide and //cdn.example.com/lib.js",
    "half of them touch and/or mock it, 1/2 of the suite, a/b testing, TCP/IP",
    "the release is on 2026/12/07, ~2/3 done",
    "edit src/app.py and ./tests/test_app.py, then run /compact",
    "route /orders/:id/items and /healthz",
]


@pytest.mark.parametrize("body", ORDINARY)
def test_ordinary_text_arrives_unchanged_and_the_answer_says_so(relay_factory, body: str) -> None:
    _, accepted, message = exchange(relay_factory, SanitizeOptions(), body)
    assert message.body == body
    assert accepted.changes == [] and accepted.delivered is None


@pytest.mark.parametrize(
    ("body", "delivered"),
    [
        ("read /etc/passwd now", "read [path:%2Fetc%2Fpasswd] now"),
        ("cat ~/.ssh/id_rsa", "cat [path:~%2F.ssh%2Fid_rsa]"),
        ("GET /v2/../../etc/shadow", "GET [path:%2Fv2%2F..%2F..%2Fetc%2Fshadow]"),
        ("see ../../secrets", "see [path:..%2F..%2Fsecrets]"),
        ("logs in /var/log/app.log.", "logs in [path:%2Fvar%2Flog%2Fapp.log]."),
    ],
)
def test_host_paths_are_escaped_and_the_sender_gets_the_delivered_body(
    relay_factory, body: str, delivered: str
) -> None:
    _, accepted, message = exchange(relay_factory, SanitizeOptions(), body)
    assert message.body == delivered
    assert accepted.delivered == delivered
    assert accepted.changes == ["escaped 1 filesystem path"]


def test_a_held_send_shows_the_delivered_body_too(relay_factory) -> None:
    relay = relay_factory()
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.admin.request("allow", sender="alice", recipient="bob", both=False, action="hold")
    with relay.client(alice) as a:
        held = a.send("bob", "key ghp_" + "a" * 36)
    assert isinstance(held, Held)
    assert held.delivered == "key [redacted:github-token]"


def test_the_async_client_returns_the_delivered_body(relay_factory) -> None:
    relay = relay_factory()
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")

    async def send_two() -> tuple[str | None, str | None]:
        async with AsyncRelayClient(alice) as client:
            changed = await client.send("bob", "tail /tmp/x.log")
            same = await client.send("bob", "the API changed: /v2/orders now needs a cursor")
        return changed.delivered, same.delivered

    assert asyncio.run(send_two()) == ("tail [path:%2Ftmp%2Fx.log]", None)


def raw_answers(endpoint: Endpoint, *sends: Send, show_delivered: bool) -> list[dict[str, Any]]:
    """Say hello and send, on a bare socket; the relay's answers as JSON objects."""
    hello = Hello(
        agent=endpoint.agent,
        credential=endpoint.credential.reveal(),
        show_delivered=show_delivered,
    )
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(endpoint.socket_path))
        sock.sendall(b"".join(encode(frame) for frame in (hello, *sends)))
        data = b""
        while data.count(b"\n") < 1 + len(sends):
            data += sock.recv(65536)
    return [json.loads(line) for line in data.splitlines()]


def test_a_client_that_does_not_ask_gets_the_answer_it_knows(relay_factory) -> None:
    """A client that predates show_delivered decodes strictly: it must never get the field."""
    relay = relay_factory()
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    relay.allow("alice", "bob")
    send = Send(seq=1, to="bob", body="read /etc/passwd")
    welcome, accepted = raw_answers(alice, send, show_delivered=False)
    assert welcome["type"] == "welcome"
    assert accepted["type"] == "accepted" and "delivered" not in accepted
    assert accepted["changes"] == ["escaped 1 filesystem path"]


def test_a_send_to_a_group_shows_the_delivered_body(relay_factory, state_dir: Path) -> None:
    config = replace(make_config(state_dir), groups=(Group("team", ("bob", "carol")),))
    relay = relay_factory(config=config)
    alice = relay.add_agent("alice")
    relay.add_agent("bob")
    relay.add_agent("carol")
    relay.allow("alice", "bob")
    relay.allow("alice", "carol")
    changed = Send(seq=1, to="@team", body="see /etc/hosts")
    same = Send(seq=2, to="@team", body="GET /v2/orders")
    _, first, second = raw_answers(alice, changed, same, show_delivered=True)
    assert first["type"] == "group_accepted" and len(first["sent"]) == 2
    assert first["delivered"] == "see [path:%2Fetc%2Fhosts]"
    assert second["type"] == "group_accepted" and "delivered" not in second


@pytest.mark.slow
def test_ccc_send_prints_what_was_delivered(relay_factory) -> None:
    relay = relay_factory()
    relay.add_agent("alice")
    relay.add_agent("bob")
    relay.allow("alice", "bob")
    credentials = relay.config.state_dir / "credentials"
    env = {
        "CCC_SOCKET": str(relay.config.socket_path),
        "CCC_CREDENTIAL": str(credentials / "alice.cred"),
        "CCC_CONFIG": "",
    }

    plain = run_cli("ccc", "send", "bob", "the API changed: /v2/orders now needs a cursor", env=env)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("accepted m_") and "receives" not in plain.stdout
    assert plain.stderr == ""

    changed = run_cli("ccc", "send", "bob", env=env, input="see /etc/passwd\nand ~/.aws/x\n")
    assert changed.returncode == 0, changed.stderr
    lines = changed.stdout.splitlines()
    assert lines[0].startswith("accepted m_") and lines[0].endswith("-> bob")
    assert lines[1:] == [
        "the relay changed your message; bob receives:",
        "> see [path:%2Fetc%2Fpasswd]",
        "> and [path:~%2F.aws%2Fx]",
        "> ",
    ]
    assert changed.stderr == "note: escaped 2 filesystem paths\n"

    as_json = run_cli("ccc", "send", "bob", "cd /srv/app", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["delivered"] == "cd [path:%2Fsrv%2Fapp]"
    assert answer["changes"] == ["escaped 1 filesystem path"]
    unchanged = json.loads(run_cli("ccc", "send", "bob", "1/2 done", "--json", env=env).stdout)
    assert unchanged["delivered"] is None and unchanged["changes"] == []
