"""Groups through a real relay: real Unix sockets, a real SQLite file, the
blocking and asyncio clients, the admin plane, the config file and its reload,
``ccc group`` / ``ccc send @group``, and the MCP tool through the official SDK."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ccc_relay.client import RelayError
from ccc_relay.client.aio import AsyncRelayClient
from ccc_relay.policy.config import load_config
from ccc_relay.protocol.frames import GroupAccepted
from ccc_relay.store import Store
from ccc_relay.store.schema import SCHEMA_VERSION
from tests.support import RunningRelay, run_cli
from tests.test_relay import audit_lines, wait_for


def team(relay: RunningRelay, *, allowed: tuple[str, ...] = ("bob", "carol", "dave")) -> dict:
    """alice, bob, carol, dave and erin; alice may write to ``allowed``;
    @team is alice, bob, carol, dave and erin."""
    endpoints = {name: relay.add_agent(name) for name in ("alice", "bob", "carol", "dave", "erin")}
    for name in allowed:
        relay.allow("alice", name)
    relay.admin.request("group_add", name="team", members=["alice", "bob", "carol", "dave", "erin"])
    return endpoints


def group_lines(relay: RunningRelay, seq: int) -> list[dict]:
    return [
        line
        for line in audit_lines(relay)
        if line["event"] in ("accepted", "held") and line.get("group") == "@team"
        and line.get("send_seq") == seq
    ]  # fmt: skip


def test_three_members_get_one_copy_each_and_the_audit_one_line_each(
    relay: RunningRelay,
) -> None:
    endpoints = team(relay)
    with relay.client(endpoints["alice"]) as alice:
        answer = alice.send("@team", "please review #42", thread="pr-42")
    assert isinstance(answer, GroupAccepted)
    assert answer.group == "@team"
    ids = {copy.to: copy.id for copy in answer.sent}
    assert sorted(ids) == ["bob", "carol", "dave"]  # alice left out, erin skipped
    assert len(set(ids.values())) == 3
    assert [(s.to, s.code) for s in answer.skipped] == [("erin", "forbidden")]
    for name in ("bob", "carol", "dave"):
        with relay.client(endpoints[name]) as client:
            messages = client.inbox()
            assert [(m.id, m.sender, m.body, m.thread) for m in messages] == [
                (ids[name], "alice", "please review #42", "pr-42")
            ]
            assert client.inbox() == []  # once each
    with relay.client(endpoints["erin"]) as erin:
        assert erin.inbox() == []
    wait_for(lambda: len(group_lines(relay, 1)) == 3)
    lines = group_lines(relay, 1)
    assert sorted((line["to"], line["id"]) for line in lines) == sorted(
        (name, mid) for name, mid in ids.items()
    )
    [skipped] = [line for line in audit_lines(relay) if line["event"] == "group_skipped"]
    assert skipped["skipped"] == ["erin"] and skipped["agent"] == "alice"


def test_a_group_with_nobody_the_sender_may_write_to_is_refused_like_a_forbidden_agent(
    relay: RunningRelay,
) -> None:
    endpoints = team(relay, allowed=())
    with relay.client(endpoints["alice"]) as alice:
        refusals = []
        for to in ("@team", "@nosuchgroup", "erin", "nosuchagent"):
            with pytest.raises(RelayError) as caught:
                alice.send(to, "hello?")
            refusals.append((caught.value.code, caught.value.message))
    assert {code for code, _ in refusals} == {"forbidden"}
    assert [message for _, message in refusals] == [
        f"you may not send to {to!r}" for to in ("@team", "@nosuchgroup", "erin", "nosuchagent")
    ]


def test_a_store_failure_in_the_fanouts_transaction_stores_no_copy(
    relay_factory: Callable[..., RunningRelay],
) -> None:
    relay = relay_factory()
    endpoints = team(relay)

    def fail_after_inserting() -> None:
        store = relay.daemon.relay.committer._store  # type: ignore[union-attr]
        real_insert = store.insert_messages

        def insert_then_fail(messages: Any) -> None:
            real_insert(messages)  # the copies are in the transaction, then the disk fails
            raise sqlite3.OperationalError("disk I/O error")

        store.insert_messages = insert_then_fail

    relay.call(fail_after_inserting)
    with relay.client(endpoints["alice"]) as alice, pytest.raises(RelayError) as caught:
        alice.send("@team", "all or nothing")
    assert caught.value.code == "unavailable"
    relay.stop()
    store = Store(relay.config.db_path)
    try:
        assert store.queue_depths() == {} and store.held() == []
    finally:
        store.close()
    assert group_lines(relay, 1) == []  # the audit does not record what did not happen


def test_a_held_copy_waits_for_the_operator_and_the_others_are_delivered(
    relay: RunningRelay,
) -> None:
    endpoints = team(relay, allowed=("bob",))
    relay.admin.request("allow", sender="alice", recipient="carol", action="hold")
    with relay.client(endpoints["alice"]) as alice:
        answer = alice.send("@team", "one held, one not")
    assert isinstance(answer, GroupAccepted)
    assert [(c.to, c.held) for c in answer.sent] == [("bob", False), ("carol", True)]
    [held] = relay.admin.request("held_list")
    assert (held["to"], held["id"]) == ("carol", answer.sent[1].id)
    with relay.client(endpoints["bob"]) as bob:
        assert [m.id for m in bob.inbox()] == [answer.sent[0].id]


def test_the_asyncio_client_sends_to_a_group(relay: RunningRelay) -> None:
    endpoints = team(relay)

    async def scenario() -> GroupAccepted | Any:
        async with AsyncRelayClient(endpoints["alice"]) as alice:
            return await alice.send("@team", "from asyncio")

    answer = asyncio.run(scenario())
    assert isinstance(answer, GroupAccepted)
    assert [c.to for c in answer.sent] == ["bob", "carol", "dave"]
    with pytest.raises(RelayError) as caught:
        asyncio.run(_send_async(endpoints["alice"], "@Bad Name"))
    assert caught.value.code == "invalid" and "not a group" in caught.value.message


async def _send_async(endpoint: Any, to: str) -> Any:
    async with AsyncRelayClient(endpoint) as client:
        return await client.send(to, "x")


# --- where groups come from ---------------------------------------------------------------


def test_admin_groups_are_kept_in_relay_db_and_listed_with_their_source(
    relay_factory: Callable[..., RunningRelay], state_dir: Path
) -> None:
    path = state_dir / "relay.yaml"
    path.write_text(f"daemon:\n  state_dir: {state_dir}\ngroups:\n  team: [bob]\n")
    relay = relay_factory(config=load_config(path))
    for name in ("alice", "bob", "carol", "dave"):
        relay.add_agent(name)
    added = relay.admin.request("group_add", name="team", members=["carol", "dave", "carol"])
    assert added == {"group": "team", "members": ["bob", "carol", "dave"]}
    with pytest.raises(RelayError) as caught:
        relay.admin.request("group_add", name="team", members=["ghost"])
    assert caught.value.code == "not_found"
    with pytest.raises(RelayError) as caught:
        relay.admin.request("group_add", name="relay", members=["bob"])
    assert caught.value.code == "invalid"
    assert relay.admin.request("group_list") == [
        {"group": "team", "members": ["carol", "dave"], "source": "admin"},
        {"group": "team", "members": ["bob"], "source": "config"},
    ]
    # Removing an agent takes it out of every group it was in.
    relay.admin.request("agent_remove", name="dave")
    relay.stop()
    relay = relay_factory(config=load_config(path))  # the same relay.db, read again
    assert relay.admin.request("group_list")[0]["members"] == ["carol"]
    removed = relay.admin.request("group_remove", name="team")
    assert removed["removed"] == 1 and removed["members"] == ["bob"]
    assert "config file" in removed["note"]
    with pytest.raises(RelayError) as caught:
        relay.admin.request("group_remove", name="nosuch")
    assert caught.value.code == "not_found"
    events = [line for line in audit_lines(relay) if line["event"] == "group_changed"]
    assert [(e["change"], e["group"]) for e in events] == [("add", "@team"), ("remove", "@team")]


def test_config_groups_are_checked_and_reloaded(
    relay_factory: Callable[..., RunningRelay], state_dir: Path
) -> None:
    path = state_dir / "relay.yaml"
    head = f"daemon:\n  state_dir: {state_dir}\npolicy:\n  allow: [alice -> bob]\n"
    path.write_text(head)
    relay = relay_factory(config=load_config(path))
    alice = relay.add_agent("alice")
    relay.add_agent("bob")
    with relay.client(alice) as client, pytest.raises(RelayError, match="forbidden"):
        client.send("@reviewers", "nobody yet")
    path.write_text(head + "groups:\n  reviewers: [bob]\n")
    assert relay.admin.request("reload") == {"applied": ["groups"], "restart_needed": []}
    with relay.client(alice) as client:
        answer = client.send("@reviewers", "now there is a group")
    assert [c.to for c in answer.sent] == ["bob"]
    path.write_text(head + "groups:\n  reviewers: [Bob]\n")
    with pytest.raises(RelayError, match=r"groups\.reviewers: 'Bob'"):
        relay.admin.request("reload")
    checked = run_cli("ccc-statusd", "check-config", str(path))
    assert checked.returncode == 4 and "groups.reviewers" in checked.stderr


def test_the_v1_schema_gains_the_group_table(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE group_members")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    db.commit()
    db.close()
    store = Store(path)
    try:
        assert store.group_members() == []
        store.add_group_members("team", ["bob"])
        assert store.group_members() == [("team", "bob")]
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        # Brought up to the current schema (3 added the federation tables).
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
            str(SCHEMA_VERSION),
        )
    finally:
        db.close()


# --- the command line and the MCP tool ------------------------------------------------------


def ok(*args: str, env: dict[str, str]) -> str:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


@pytest.mark.slow
def test_ccc_group_and_ccc_send_to_a_group(daemon: dict[str, str]) -> None:
    env = daemon
    for name in ("alice", "bob", "carol", "erin"):
        ok("ccc", "agent", "add", name, env=env)
    ok("ccc", "allow", "alice", "bob", env=env)
    ok("ccc", "allow", "alice", "carol", env=env)
    assert ok("ccc", "group", "add", "@reviewers", "bob", "carol", "erin", env=env) == (
        "@reviewers: bob, carol, erin\n"
    )
    listed = json.loads(ok("ccc", "group", "list", "--json", env=env))
    assert listed == {
        "groups": [{"group": "reviewers", "members": ["bob", "carol", "erin"], "source": "admin"}]
    }
    assert "@reviewers  bob, carol, erin  (admin)" in ok("ccc", "group", "list", env=env)
    out = ok("ccc", "--as", "alice", "send", "@reviewers", "please review", env=env)
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["accepted", "accepted", "skipped"]
    assert lines[0].endswith("-> bob") and lines[1].endswith("-> carol")
    assert lines[2] == "skipped erin: forbidden (you may not send to it)"
    sent = json.loads(ok("ccc", "--as", "alice", "send", "@reviewers", "again", "--json", env=env))
    assert [c["to"] for c in sent["sent"]] == ["bob", "carol"]
    assert sent["skipped"] == [{"to": "erin", "code": "forbidden"}]
    assert sent["delivered"] is None
    # A body the sanitiser changed: the sender sees what every member reads.
    changed = ok("ccc", "--as", "alice", "send", "@reviewers", "see /etc/passwd", env=env)
    assert "the relay changed your message; @reviewers receives:" in changed
    assert "> see [path:%2Fetc%2Fpasswd]" in changed
    changed_json = ok(
        "ccc", "--as", "alice", "send", "@reviewers", "see /etc/hosts", "--json", env=env
    )
    assert json.loads(changed_json)["delivered"] == "see [path:%2Fetc%2Fhosts]"
    inbox = json.loads(ok("ccc", "--as", "bob", "inbox", "--json", env=env))["messages"]
    assert [m["body"] for m in inbox][:2] == ["please review", "again"]
    assert inbox[1]["id"] == sent["sent"][0]["id"]
    refused = run_cli("ccc", "--as", "alice", "send", "@nobody", "x", env=env)
    assert refused.returncode == 1 and "you may not send to '@nobody'" in refused.stderr
    direct = run_cli("ccc", "--as", "alice", "send", "@reviewers", "x", "--direct", env=env)
    assert direct.returncode == 2 and "through the relay" in direct.stderr
    bad = run_cli("ccc", "group", "add", "team", "@reviewers", env=env)
    assert bad.returncode == 2 and "groups do not nest" in bad.stderr
    gone = ok("ccc", "group", "remove", "reviewers", "erin", env=env)
    assert gone == "removed 1 member(s) from @reviewers; left: bob, carol\n"
    for command in ("add", "remove", "list"):
        helped = ok("ccc", "group", command, "--help", env=env)
        assert "Usage: ccc group " + command in helped


@pytest.mark.slow
def test_the_mcp_send_message_tool_sends_to_a_group(relay: RunningRelay) -> None:
    from tests.test_mcp import mcp_session

    team(relay)

    async def scenario() -> dict:
        async with mcp_session(relay, "alice") as alice:
            tools = await alice.list_tools()
            [send] = [t for t in tools.tools if t.name == "send_message"]
            assert "@group" in send.input_schema["properties"]["to"]["description"]
            result = await alice.call_tool("send_message", {"to": "@team", "text": "hi all"})
            assert not result.is_error
            refused = await alice.call_tool("send_message", {"to": "@nosuch", "text": "x"})
            assert refused.is_error
            assert "forbidden" in "".join(getattr(c, "text", "") for c in refused.content)
            return result.structured_content

    answer = asyncio.run(scenario())
    assert answer["group"] == "@team"
    assert [(s["to"], s["status"]) for s in answer["sent"]] == [
        ("bob", "accepted"),
        ("carol", "accepted"),
        ("dave", "accepted"),
    ]
    assert answer["skipped"] == [{"to": "erin", "code": "forbidden"}]
    with relay.client(relay.add_agent("frank")) as frank:
        assert frank.inbox() == []
