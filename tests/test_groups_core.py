"""Sends to a group in the relay core alone: expansion, policy per member, hold,
rate cost, queue shares all or nothing, one Persist per fan-out, and the
parsing of the config file's ``groups:`` section."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec
import pytest

from ccc_relay.core.effects import GroupDurable, Persist, Sanitize
from ccc_relay.core.relay import SANITIZE_INLINE_LIMIT
from ccc_relay.policy.config import ConfigError, Rule, config_from_mapping
from ccc_relay.policy.groups import MAX_GROUP_MEMBERS, Group, GroupTable, parse_groups
from ccc_relay.policy.sanitize import sanitize
from ccc_relay.protocol.codec import decode_client_frame, decode_relay_frame, encode
from ccc_relay.protocol.errors import ProtocolError
from ccc_relay.protocol.frames import Accepted, GroupAccepted, Send
from ccc_relay.store.ops import HoldMessages, Nothing
from tests.test_core import T0, Core, audit_events, errors, persists, replies, waited

ALICE_TO_ALL = (Rule("alice", "bob"), Rule("alice", "carol"))


def core_with(
    groups: dict[str, tuple[str, ...]], rules: tuple[Rule, ...] = ALICE_TO_ALL, **limits: Any
) -> Core:
    c = Core(rules=rules, **limits)
    config = replace(c.core.config, groups=tuple(Group(n, m) for n, m in groups.items()))
    assert "groups" in c.core.reload(config)["applied"]
    return c


def send_to_group(c: Core, conn: int, seq: int, to: str = "@team", **extra: Any) -> list[Any]:
    return c.frames(conn, Send(seq=seq, to=to, body="review please", **extra))


def the_fanout(effects: list[Any]) -> Persist:
    [persist] = [p for p in waited(effects) if isinstance(p.then, GroupDurable)]
    return persist


def test_a_group_send_is_one_persist_with_a_copy_and_an_audit_line_per_member() -> None:
    c = core_with({"team": ("alice", "bob", "carol")})  # the sender is left out
    alice = c.hello("alice")
    bob = c.hello("bob")
    c.frames(bob, Send(seq=1, to="alice", body="x"))  # bob may not: nothing to do with groups
    effects = send_to_group(c, alice, 1, thread="t1")
    persist = the_fanout(effects)
    assert [m.recipient for m in persist.messages] == ["bob", "carol"]
    assert len({m.id for m in persist.messages}) == 2
    assert {m.body for m in persist.messages} == {"review please"}
    assert {m.thread for m in persist.messages} == {"t1"}
    assert isinstance(persist.op, Nothing)
    lines = [r for r in persist.audit if r.event == "accepted"]
    assert [(r.fields["to"], r.fields["group"], r.fields["send_seq"]) for r in lines] == [
        ("bob", "@team", 1),
        ("carol", "@team", 1),
    ]
    assert [r.fields["id"] for r in lines] == [m.id for m in persist.messages]
    assert persist.seqs == {c.sessions[alice]: 1}
    assert replies(effects, GroupAccepted) == []  # answered only once durable
    answered = c.core.persisted(persist.then, None, T0)  # type: ignore[arg-type]
    [answer] = replies(answered, GroupAccepted, alice)
    assert answer.seq == 1 and answer.group == "@team" and answer.skipped == []
    assert [(s.to, s.id, s.held) for s in answer.sent] == [
        (m.recipient, m.id, False) for m in persist.messages
    ]
    assert c.core.counters.accepted == 2


def test_members_the_sender_may_not_write_to_are_skipped_like_a_direct_send() -> None:
    # carol is registered but not allowed; zed does not exist: the same answer for both.
    c = core_with({"team": ("bob", "carol", "zed")}, rules=(Rule("alice", "bob"),))
    alice = c.hello("alice")
    effects = send_to_group(c, alice, 1)
    persist = the_fanout(effects)
    assert [m.recipient for m in persist.messages] == ["bob"]
    [skipped] = [r for r in persist.audit if r.event == "group_skipped"]
    assert skipped.fields["skipped"] == ["carol", "zed"]
    [answer] = replies(c.core.persisted(persist.then, None, T0), GroupAccepted)  # type: ignore[arg-type]
    assert [(s.to, s.code) for s in answer.skipped] == [
        ("carol", "forbidden"),
        ("zed", "forbidden"),
    ]
    # A direct send to either says exactly as much: forbidden, nothing more.
    direct = c.frames(alice, Send(seq=2, to="carol", body="x"), Send(seq=3, to="zed", body="x"))
    assert errors(direct) == [("forbidden", 2), ("forbidden", 3)]


@pytest.mark.parametrize("group", ["@team", "@nosuchgroup"])
def test_no_member_allowed_or_no_such_group_is_refused_like_a_forbidden_agent(group: str) -> None:
    c = core_with({"team": ("carol",)}, rules=(Rule("alice", "bob"),))
    alice = c.hello("alice")
    effects = send_to_group(c, alice, 1, to=group)
    assert errors(effects) == [("forbidden", 1)]
    [error] = replies(effects)
    assert error.message == f"you may not send to {group!r}"
    forbidden = c.frames(alice, Send(seq=2, to="carol", body="x"))
    [direct] = replies(forbidden)
    assert direct.message == "you may not send to 'carol'"  # the same sentence, the same code
    assert not any(p.messages for p in persists(effects))
    assert "refused" in audit_events(effects)
    # The refused send's seq is still consumed: the next one is last+1.
    assert errors(c.frames(alice, Send(seq=3, to="bob", body="x"))) == []


def test_a_hold_pair_holds_that_members_copy_only() -> None:
    rules = (Rule("alice", "bob"), Rule("alice", "carol", "hold"))
    c = core_with({"team": ("bob", "carol")}, rules=rules)
    alice = c.hello("alice")
    persist = the_fanout(send_to_group(c, alice, 1))
    assert [m.recipient for m in persist.messages] == ["bob"]
    assert isinstance(persist.op, HoldMessages)
    assert [m.recipient for m in persist.op.messages] == ["carol"]
    assert sorted(r.event for r in persist.audit) == ["accepted", "held"]
    [answer] = replies(c.core.persisted(persist.then, None, T0), GroupAccepted)  # type: ignore[arg-type]
    assert [(s.to, s.held) for s in answer.sent] == [("bob", False), ("carol", True)]
    assert c.core.counters.held == 1 and c.core.counters.accepted == 1


def test_a_fanout_costs_one_message_per_copy_all_or_nothing() -> None:
    c = core_with({"team": ("bob", "carol")}, rate_per_minute=3.0)
    alice = c.hello("alice")
    assert errors(send_to_group(c, alice, 1)) == []  # 2 of 3
    refused = send_to_group(c, alice, 2)  # would be 4 of 3
    assert errors(refused) == [("rate_limited", 2)]
    [error] = replies(refused)
    assert error.retry_after is not None and error.retry_after > 0
    assert "costs 2" in error.message
    # Nothing of the refused fan-out was taken: one direct send still fits.
    assert errors(c.frames(alice, Send(seq=3, to="bob", body="x"))) == []
    assert errors(c.frames(alice, Send(seq=4, to="bob", body="x"))) == [("rate_limited", 4)]
    # A minute later the window has room for a fan-out again.
    later = c.frames(alice, Send(seq=5, to="@team", body="y"), now=T0 + 61)
    assert errors(later) == []


def test_a_group_bigger_than_the_rate_limit_is_refused_without_a_retry_time() -> None:
    c = core_with({"team": ("bob", "carol")}, rate_per_minute=1.0)
    alice = c.hello("alice")
    [error] = replies(send_to_group(c, alice, 1))
    assert (error.code, error.retry_after) == ("rate_limited", None)
    assert "fewer agents" in error.message


def test_one_copy_over_its_queue_share_refuses_the_whole_fanout() -> None:
    # One sender may fill half of a recipient's queue: two messages here.
    c = core_with({"team": ("bob", "carol")}, max_queued_messages=4)
    alice = c.hello("alice")
    for seq in (1, 2):
        [persist] = waited(c.frames(alice, Send(seq=seq, to="bob", body="x")))
        c.core.persisted(persist.then, None, T0)  # type: ignore[arg-type]
    refused = send_to_group(c, alice, 3)
    assert errors(refused) == [("queue_full", 3)]
    [error] = replies(refused)
    assert "every copy or none" in error.message
    assert not any(p.messages for p in persists(refused))
    # carol's share was not taken by the refused fan-out: both her places are free.
    for seq in (4, 5):
        assert errors(c.frames(alice, Send(seq=seq, to="carol", body="x"))) == []
    assert errors(c.frames(alice, Send(seq=6, to="carol", body="x"))) == [("queue_full", 6)]


def test_a_store_failure_answers_unavailable_and_frees_the_shares() -> None:
    c = core_with({"team": ("bob", "carol")}, max_queued_messages=2)  # one each per sender
    alice = c.hello("alice")
    persist = the_fanout(send_to_group(c, alice, 1))
    failed = c.core.persist_failed(persist.then, "disk full", T0)
    assert errors(failed) == [("unavailable", 1)]
    assert replies(failed, GroupAccepted) == []
    assert "unavailable" in audit_events(failed)
    assert c.core.counters.accepted == 0
    # Never stored, so nothing counts against the queues: the same fan-out fits again.
    assert errors(send_to_group(c, alice, 2)) == []


def test_the_size_limit_applies_as_for_a_direct_send() -> None:
    c = core_with({"team": ("bob", "carol")}, max_message_size=10)
    alice = c.hello("alice")
    effects = c.frames(alice, Send(seq=1, to="@team", body="x" * 11))
    assert errors(effects) == [("too_large", 1)]
    assert not any(p.messages for p in persists(effects))


def test_a_big_body_is_sanitised_off_the_loop_once_for_every_copy() -> None:
    c = core_with({"team": ("bob", "carol")})
    alice = c.hello("alice")
    body = "a\u200bb " + "x" * SANITIZE_INLINE_LIMIT
    effects = c.frames(
        alice, Send(seq=1, to="@team", body=body), Send(seq=2, to="bob", body="after")
    )
    [work] = [e for e in effects if isinstance(e, Sanitize)]
    assert errors(effects) == [] and waited(effects) == []  # the direct send waits behind it
    cleaned = sanitize(work.frame.body, c.core.limits.sanitize)
    resumed = c.core.sanitized(
        alice, work.frame, work.action, cleaned, T0, options=c.core.limits.sanitize
    )
    persist = the_fanout(resumed)
    assert [m.recipient for m in persist.messages] == ["bob", "carol"]
    assert all("\u200b" not in m.body for m in persist.messages)
    # The send behind it is decided after it, in its own Persist.
    later = [p for p in waited(resumed) if p is not persist]
    assert [m.body for p in later for m in p.messages] == ["after"]
    [answer] = replies(c.core.persisted(persist.then, None, T0), GroupAccepted)  # type: ignore[arg-type]
    assert answer.changes


def test_direct_sends_around_a_group_send_keep_their_order_in_the_store() -> None:
    c = core_with({"team": ("bob", "carol")})
    alice = c.hello("alice")
    effects = c.frames(
        alice,
        Send(seq=1, to="bob", body="one"),
        Send(seq=2, to="@team", body="two"),
        Send(seq=3, to="carol", body="three"),
    )
    bodies = [[m.body for m in p.messages] for p in waited(effects)]
    assert bodies == [["one"], ["two", "two"], ["three"]]
    answered = [c.core.persisted(p.then, None, T0) for p in waited(effects)]  # type: ignore[arg-type]
    kinds = [type(frame).__name__ for a in answered for frame in replies(a)]
    assert kinds == ["Accepted", "GroupAccepted", "Accepted"]
    assert [f.seq for a in answered for f in replies(a, Accepted)] == [1, 3]


def test_a_group_table_unites_the_config_and_the_admin_plane() -> None:
    table = GroupTable([Group("team", ("bob", "carol"))], [("team", "dave"), ("ops", "bob")])
    assert table.members("team") == ("bob", "carol", "dave")
    assert table.members("ops") == ("bob",)
    assert table.members("nope") is None
    assert table.with_source() == [
        {"group": "ops", "members": ["bob"], "source": "admin"},
        {"group": "team", "members": ["dave"], "source": "admin"},
        {"group": "team", "members": ["bob", "carol"], "source": "config"},
    ]


def test_admin_groups_reach_the_message_path() -> None:
    c = Core(rules=ALICE_TO_ALL)
    alice = c.hello("alice")
    assert errors(send_to_group(c, alice, 1)) == [("forbidden", 1)]
    c.core.set_db_groups([("team", "bob")])
    persist = the_fanout(send_to_group(c, alice, 2))
    assert [m.recipient for m in persist.messages] == ["bob"]


# --- the wire ---------------------------------------------------------------------------------


def test_the_send_frame_takes_an_agent_or_an_at_group() -> None:
    frame = decode_client_frame(b'{"type":"send","seq":1,"to":"@reviewers","body":"x"}')
    assert isinstance(frame, Send) and frame.to == "@reviewers"
    for bad in ("@", "@@team", "team@", "@Team", "@a/b", "@" + "a" * 65):
        line = encode(Send(seq=1, to="bob", body="x")).replace(b'"bob"', f'"{bad}"'.encode())
        with pytest.raises(ProtocolError):
            decode_client_frame(line)


def test_group_accepted_round_trips() -> None:
    line = b'{"type":"group_accepted","seq":4,"group":"@t","sent":[{"to":"bob","id":"m_x"}],'
    line += b'"skipped":[{"to":"zed","code":"forbidden"}]}'
    frame = decode_relay_frame(line)
    assert isinstance(frame, GroupAccepted)
    assert frame.sent[0].held is False and frame.skipped[0].code == "forbidden"
    assert msgspec.json.decode(encode(frame)) == msgspec.json.decode(line)


# --- the config file ------------------------------------------------------------------------


def test_groups_in_the_config_file() -> None:
    config = config_from_mapping({"groups": {"reviewers": ["alice", "bob", "alice"]}})
    assert config.groups == (Group("reviewers", ("alice", "bob")),)
    assert config_from_mapping({"groups": {"@ops": ["carol"]}}).groups == (
        Group("ops", ("carol",)),
    )


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ({"Reviewers": ["alice"]}, "groups.Reviewers: a group name uses lower-case"),
        ({"relay": ["alice"]}, "reserved"),
        ({"team": "alice"}, "expected a list of agent names"),
        ({"team": []}, "at least one member"),
        ({"team": ["@ops"]}, "groups do not nest"),
        ({"team": ["Bob"]}, "'Bob'"),
        ({"team": [f"a{i}" for i in range(MAX_GROUP_MEMBERS + 1)]}, "at most 256"),
        (["team"], "expected a mapping"),
    ],
)
def test_bad_groups_are_config_errors_naming_the_key(section: object, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_groups(section)
    assert says in str(caught.value)
