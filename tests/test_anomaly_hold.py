"""Anomaly rules, quarantine and the human approval gate, end to end.

A scripted misbehaving agent trips every rule on a real relay while a
well-behaved pair keeps talking on the same relay, unaffected.
"""

from __future__ import annotations

import json
import time

import pytest

from ccc_relay.client import RelayClient, RelayError, RelayUnavailable
from ccc_relay.client.endpoint import Endpoint
from ccc_relay.credentials import Credential
from ccc_relay.policy.anomaly import AnomalyConfig, AnomalyDetector, Rule
from ccc_relay.policy.config import Rule as PairRule
from ccc_relay.protocol.frames import Held
from tests.support import FakeClock, RunningRelay
from tests.test_relay import audit_lines, hello, raw, read_frames, send_frames, wait_for

LOW = {
    name: Rule(3)
    for name in (
        "auth_failures",
        "forbidden",
        "rate_limited",
        "invalid_frames",
        "replays",
        "sanitized",
        "fan_out",
    )
}


def anomalies(relay: RunningRelay) -> list[dict]:
    return [x for x in audit_lines(relay) if x["event"] == "anomaly"]


def test_detector_fires_once_per_window_and_resets() -> None:
    detector = AnomalyDetector(AnomalyConfig(window=60, rules={"forbidden": Rule(3)}))
    assert detector.refused("eve", "forbidden", 0) == []
    assert detector.refused("eve", "forbidden", 1) == []
    [alert] = detector.refused("eve", "forbidden", 2)
    assert (alert.rule, alert.value) == ("forbidden", 3)
    assert detector.refused("eve", "forbidden", 3) == []  # quiet for a window
    assert detector.refused("eve", "forbidden", 70) == []  # the old events aged out
    assert detector.refused("bob", "forbidden", 70) == []  # per agent


def test_rate_jump_needs_a_baseline() -> None:
    detector = AnomalyDetector(AnomalyConfig(rules={"rate_jump": Rule(10)}, jump_min_messages=50))
    now = 6000.0
    assert not any(detector.accepted("new", "x", now) for _ in range(100))  # no history yet
    for minute in range(4):  # a steady 2 messages a minute
        for _ in range(2):
            assert detector.accepted("steady", "x", now + minute * 60) == []
    burst = [detector.accepted("steady", "x", now + 240) for _ in range(60)]
    fired = [a for alerts in burst for a in alerts]
    assert [a.rule for a in fired] == ["rate_jump"]


def test_misbehaving_agent_trips_every_rule_and_a_good_pair_is_unaffected(
    relay_factory, clock: FakeClock
) -> None:
    relay = relay_factory(
        clock=clock,
        anomaly=AnomalyConfig(
            window=300, rules={**LOW, "rate_jump": Rule(10)}, jump_min_messages=30
        ),
        rate_per_minute=40,
        agent_rate_per_minute=40,
        pair_rate_per_minute=40,
        auth_failures_per_minute=100,
    )
    eve = relay.add_agent("eve")
    targets = [relay.add_agent(f"t{i}") for i in range(4)]
    for t in targets:
        relay.allow("eve", t.agent)
    carol, dave = relay.add_agent("carol"), relay.add_agent("dave")
    relay.allow("carol", "dave", both=True)
    good = relay.client(carol)

    def good_pair_still_talks() -> None:
        sent = good.send("dave", "all fine")
        with relay.client(dave) as d:
            assert [m.id for m in d.inbox()] == [sent.id]

    # auth_failures: wrong credentials claiming eve
    for _ in range(3):
        with pytest.raises(RelayError):
            RelayClient(Endpoint(eve.socket_path, "eve", Credential.generate())).connect()
    # forbidden
    with relay.client(eve) as e:
        for _ in range(3):
            with pytest.raises(RelayError, match="forbidden"):
                e.send("carol", "let me in")
    good_pair_still_talks()
    # invalid frames and replays, on a raw connection
    sock = raw(relay)
    send_frames(
        sock,
        hello(eve),
        b'{"type":"send"}\n',
        b'{"type":"send","x":1}\n',
        b"[]\n",
        {"type": "send", "seq": 1, "to": "t0", "body": "x"},
        *({"type": "send", "seq": 1, "to": "t0", "body": "x"} for _ in range(3)),
    )
    read_frames(sock, 8)
    # fan-out: four distinct recipients (threshold 3), with invisible instructions
    with relay.client(eve) as e:
        for t in targets:
            e.send(t.agent, "hello\u202e\U000e0041\u200b")
    # rate_jump: a quiet baseline, then a burst; it also trips rate_limited (40/min)
    for _ in range(4):
        clock.advance(61)
        with relay.client(eve) as e:
            e.send("t0", "steady")
    clock.advance(61)
    limited = 0
    with relay.client(eve) as e:
        for i in range(45):
            try:
                e.send(f"t{i % 4}", "burst")
            except RelayError as exc:
                assert exc.code == "rate_limited"
                limited += 1
    assert limited >= 3
    good_pair_still_talks()
    wait_for(
        lambda: (
            {a["rule"] for a in anomalies(relay)}
            >= {
                "auth_failures",
                "forbidden",
                "invalid_frames",
                "replays",
                "fan_out",
                "rate_jump",
                "rate_limited",
                "sanitized",
            }
        )
    )
    assert {a["agent"] for a in anomalies(relay)} == {"eve"}
    status = relay.admin.request("status")
    assert status["anomalies"] >= 7
    assert {a["rule"] for a in status["alerts"]} >= {"forbidden", "fan_out", "rate_jump"}
    good.close()


def test_quarantine_closes_sessions_refuses_until_released(relay_factory) -> None:
    relay = relay_factory(anomaly=AnomalyConfig(rules={"forbidden": Rule(2, quarantine=True)}))
    eve, _ = relay.add_agent("eve"), relay.add_agent("bob")
    relay.allow("eve", "bob")
    carol = relay.add_agent("carol")
    relay.allow("carol", "bob")
    with relay.client(eve) as e:
        with pytest.raises(RelayError, match="forbidden"):
            e.send("carol", "x")
        with pytest.raises(RelayError) as caught:
            e.send("carol", "x")  # the second trips the rule; quarantine closes the session
        assert caught.value.code in ("forbidden", "quarantined")
        with pytest.raises((RelayError, RelayUnavailable)):
            e.send("bob", "still here?")
    with pytest.raises(RelayError) as caught:
        RelayClient(eve).connect()
    assert caught.value.code == "quarantined"
    with relay.client(carol) as c:
        c.send("bob", "carol is fine")
    [agent] = [a for a in relay.admin.request("status")["agents"] if a["name"] == "eve"]
    assert "forbidden" in agent["quarantined"]
    relay.admin.request("agent_release", name="eve")
    with relay.client(eve) as e:
        e.send("bob", "released")
    events = [x["event"] for x in audit_lines(relay)]
    assert "quarantined" in events and "released" in events


def test_quarantine_survives_a_restart(relay_factory) -> None:
    relay = relay_factory(anomaly=AnomalyConfig(rules={"forbidden": Rule(1, quarantine=True)}))
    eve = relay.add_agent("eve")
    with relay.client(eve) as e, pytest.raises(RelayError):
        e.send("nobody", "x")
    wait_for(lambda: any(x["event"] == "quarantined" for x in audit_lines(relay)))
    relay.stop()
    relay = relay_factory()
    with pytest.raises(RelayError, match="quarantined"):
        RelayClient(eve).connect()


def test_held_messages_wait_for_approval(relay: RunningRelay) -> None:
    alice, bob = relay.add_agent("alice"), relay.add_agent("bob")
    relay.admin.request("allow", sender="alice", recipient="bob", action="hold")
    with relay.client(alice) as a:
        answer = a.send("bob", "deploy to production?")
        assert isinstance(answer, Held)
        second = a.send("bob", "second thought")
    with relay.client(bob) as b:
        assert b.inbox() == []
    held = relay.admin.request("held_list")
    assert [h["id"] for h in held] == [answer.id, second.id]
    assert held[0]["body"] == "deploy to production?"
    relay.admin.request("approve", id=answer.id)
    with relay.client(bob) as b:
        [m] = b.inbox()
    assert (m.id, m.sender, m.body) == (answer.id, "alice", "deploy to production?")
    relay.admin.request("reject", id=second.id, reason="not today")
    with relay.client(alice) as a:
        [notice] = a.inbox()
    assert notice.sender == "relay" and notice.reply_to == second.id
    assert "rejected" in notice.body and "not today" in notice.body
    assert relay.admin.request("held_list") == []
    with pytest.raises(RelayError, match="not_found"):
        relay.admin.request("approve", id=second.id)
    wait_for(lambda: "rejected" in [x["event"] for x in audit_lines(relay)])
    events = [x["event"] for x in audit_lines(relay)]
    for step in ("held", "approved", "rejected"):
        assert step in events


def test_hold_from_the_config_file(relay_factory) -> None:
    relay = relay_factory(rules=(PairRule("alice", "bob", "hold"),))
    alice, _ = relay.add_agent("alice"), relay.add_agent("bob")
    with relay.client(alice) as a:
        assert isinstance(a.send("bob", "x"), Held)
    assert relay.admin.request("status")["held"] == 1


def test_policy_graph_and_top(relay: RunningRelay) -> None:
    from ccc_relay.cli.graph import policy_dot
    from ccc_relay.cli.top import render

    for name in ("alice", "bob", "eve"):
        relay.add_agent(name)
    relay.allow("alice", "bob")
    relay.admin.request("allow", sender="bob", recipient="eve", action="hold")
    relay.call(lambda: relay.daemon.relay.quarantine("eve", "test"))
    wait_for(lambda: relay.admin.request("status")["agents"][2]["quarantined"] == "test")
    status = relay.admin.request("status")
    dot = policy_dot(relay.admin.request("policy_show"), status["agents"])
    assert '"alice" -> "bob";' in dot
    assert '"bob" -> "eve" [style=dashed, color="darkorange", label="hold"];' in dot
    assert '"eve" [color="red"' in dot
    assert "alice -> eve" not in dot
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(render(status, status, 1.0))
    screen = console.export_text()
    assert "QUARANTINED" in screen and "alice" in screen


@pytest.mark.slow
def test_policy_graph_renders_svg_with_graphviz(relay: RunningRelay, tmp_path) -> None:
    import shutil

    from tests.support import run_cli

    if shutil.which("dot") is None:
        pytest.skip("Graphviz is not installed (apt-get install graphviz)")
    relay.add_agent("alice")
    relay.add_agent("bob")
    relay.allow("alice", "bob", both=True)
    config = relay.config.state_dir / "relay.yaml"
    config.write_text(f"daemon:\n  state_dir: {relay.config.state_dir}\n")
    out = tmp_path / "policy.svg"
    result = run_cli(
        "ccc", "policy", "graph", "--format", "svg", "-o", str(out), "--config", str(config)
    )
    assert result.returncode == 0, result.stderr
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "alice" in svg and "<svg" in svg
    top = run_cli("ccc", "top", "--once", "--config", str(config))
    assert top.returncode == 0 and "bob" in top.stdout
    held = run_cli("ccc", "held", "--json", "--config", str(config))
    assert json.loads(held.stdout) == {"held": []}
    _ = time
