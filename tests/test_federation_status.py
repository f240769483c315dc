"""``ccc federation status`` against two real relays (hardened, as production runs them)
and a real nats-server with mutual TLS and NKEYs: the connection, the stream, the
queue per destination host while NATS is down and after it is back, and a relay
that does not federate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ccc_relay.client import RelayClient
from ccc_relay.protocol.frames import Accepted
from tests.federation_support import HardenedRelay, wait_for
from tests.nats_support import NatsServer
from tests.relay_process import RelayProcess
from tests.support import run_cli

pytest_plugins = ("tests.nats_fixtures",)
pytestmark = pytest.mark.slow


def status(relay: RelayProcess, *extra: str) -> Any:
    result = run_cli("ccc", "federation", "status", "--config", str(relay.config), *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if "--json" in extra else result.stdout


@pytest.fixture
def relays(
    state_dir: Path, nats_server: NatsServer
) -> Iterator[tuple[HardenedRelay, HardenedRelay]]:
    h1 = HardenedRelay(state_dir / "h1", "h1")
    h2 = HardenedRelay(state_dir / "h2", "h2")
    h1.configure(nats_server.relays["h1"], nats_server.urls, {"h2": h2.key}, ["alice -> bob@h2"])
    h2.configure(nats_server.relays["h2"], nats_server.urls, {"h1": h1.key}, ["alice@h1 -> bob"])
    try:
        h1.start()
        h2.start()
        yield h1, h2
    finally:
        h1.stop()
        h2.stop()


def test_status_shows_the_link_the_stream_and_each_hosts_queue(
    relays: tuple[HardenedRelay, HardenedRelay], nats_server: NatsServer
) -> None:
    h1, h2 = relays
    alice, bob = h1.add_agent("alice"), h2.add_agent("bob")
    connected = wait_for(lambda: (s := status(h1, "--json"))["connected"] and s)
    assert connected["host"] == "h1" and connected["peers"] == ["h2"]
    assert connected["server"] == f"127.0.0.1:{nats_server.port}"
    assert connected["servers"] == nats_server.urls
    assert connected["inbound"]["consumer"] == "relay-h1"
    assert connected["outbound"]["hosts"] == {"h2": {"queued": 0, "oldest_age": None}}
    assert connected["stream"]["name"] == "CCC_FEDERATION"

    with RelayClient(alice, timeout=15) as a:
        first = wait_for(lambda: (x := a.send("bob@h2", "while up")).forwarded and x)
        assert isinstance(first, Accepted)
        # NATS goes away: remote sends are stored here and counted per host.
        nats_server.stop()
        wait_for(lambda: not status(h1, "--json")["connected"])
        queued = [a.send("bob@h2", f"while down {n}") for n in range(3)]
        assert all(isinstance(q, Accepted) and q.forwarded is False for q in queued)
    down = status(h1, "--json")
    assert down["connected"] is False and down["last_error"]
    assert down["outbound"]["queued"] == 3
    h2_queue = down["outbound"]["hosts"]["h2"]
    assert h2_queue["queued"] == 3 and h2_queue["oldest_age"] > 0
    text = status(h1)
    assert "NOT CONNECTED" in text
    assert "  h2: 3 queued, oldest " in text

    # Back: the outbox drains, and h2 takes everything in; its lag returns to 0.
    nats_server.start()
    wait_for(lambda: status(h1, "--json")["outbound"]["queued"] == 0, timeout=60)
    with RelayClient(bob, timeout=15) as b:
        got: list[str] = []
        wait_for(lambda: got.extend(m.body for m in b.inbox()) or len(got) == 4, timeout=60)
    assert sorted(got) == sorted(["while up"] + [f"while down {n}" for n in range(3)])
    after = wait_for(
        lambda: (s := status(h2, "--json"))["inbound"]["lag"] == 0 and s["connected"] and s,
        timeout=30,
    )
    assert after["inbound"]["unacked"] == 0
    back = status(h1, "--json")
    assert back["outbound"]["published"] >= 3 and back["reconnects"] >= 1
    text = status(h1)
    assert f"connected to 127.0.0.1:{nats_server.port}" in text
    assert "  h2: 0 queued" in text


def test_a_relay_without_federation_says_so(state_dir: Path) -> None:
    relay = RelayProcess(state_dir)
    relay.start()
    try:
        plain = run_cli("ccc", "federation", "status", "--config", str(relay.config))
        assert plain.returncode == 7
        assert f"this relay does not federate (no federation: section in {relay.config})" in (
            plain.stderr
        )
        as_json = run_cli("ccc", "federation", "status", "--json", "--config", str(relay.config))
        assert as_json.returncode == 7
        assert json.loads(as_json.stdout)["error"]["code"] == "not_federating"
    finally:
        relay.stop()
    stopped = run_cli("ccc", "federation", "status", "--config", str(relay.config))
    assert stopped.returncode == 3
