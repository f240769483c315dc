"""Sanitisation in the relay: what an agent receives is cleaned, and the sender is told."""

from __future__ import annotations

import pytest

from ccc_relay.policy.sanitize import SanitizeOptions
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
