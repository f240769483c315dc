"""Crash and restart under load: SIGKILL the relay again and again while agents talk.

Four agents, each allowed to write to each of the others, send pipelined
batches through a real ``ccc-statusd`` subprocess and receive by subscription
(``AsyncRelayClient`` with ``reconnect=Backoff()``: the library's own
reconnect, resume and duplicate dropping, used through its public API only).
A fifth agent nobody may write to gets a few sends too: those are refused. The
test SIGKILLs the daemon at random moments -- some while it is busy, some while
the clients are still coming back -- and starts it again each time on the same
state dir.

Then, with the relay up for good:

* every send answered ``accepted`` is delivered to its recipient exactly once
  as the agent sees it (the ids the receivers hand out), with the id the relay
  named: nothing is lost, nothing is doubled;
* nothing refused is delivered; a send whose outcome the client could not know
  (the relay died under it) is delivered at most once; nothing else is
  delivered at all;
* no send was ever refused as ``replay`` or ``out_of_order``: numbering went on
  across every resume;
* a raw resend of an old seq on a resumed session is refused ``replay``;
* ``ccc audit verify`` passes on the log the crashes left.

It prints the figures: kills survived, messages sent, accepted, refused,
unknown, delivered and lost, and the longest recovery (from starting the
daemon to its first answered hello; and to the slowest client's resumed
session). ``CCC_CRASH_SEED=N`` repeats a run's kill moments and traffic;
``CCC_CRASH_KILLS=N`` kills more often (for a longer soak).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ccc_relay.client import AsyncRelayClient, RelayError
from ccc_relay.client.reconnect import Backoff
from ccc_relay.protocol.codec import decode_relay_frame, encode
from ccc_relay.protocol.frames import Accepted, Error, Held, Hello, Send, Welcome
from tests.relay_process import RelayProcess

pytestmark = pytest.mark.slow

AGENTS = ("a0", "a1", "a2", "a3")
OUTSIDER = "nobody-writes-here"  # exists, but no rule lets anyone write to it
KILLS = int(os.environ.get("CCC_CRASH_KILLS", "24"))
UPTIME = (0.05, 1.2)  # seconds the relay serves before the next SIGKILL
BATCH = (1, 6)  # sends pipelined at once by one agent
PAUSE = 0.02  # between one agent's batches
DRAIN_TIMEOUT = 30.0


@dataclass
class Sent:
    sender: str
    to: str
    outcome: str = "pending"  # accepted | refused | unknown
    id: str | None = None
    code: str | None = None
    session: str | None = None
    seq: int | None = None


@dataclass
class Figures:
    kills: int = 0
    daemon_recovery: list[float] = field(default_factory=list)
    client_recovery: list[float] = field(default_factory=list)


class Agent:
    def __init__(self, name: str, client: AsyncRelayClient) -> None:
        self.name = name
        self.client = client
        self.delivered: list[tuple[str, str, str]] = []  # (id, from, body), as handed out
        self.acks_failed = 0


async def sender(
    agent: Agent, sent: dict[str, Sent], rng: random.Random, stop: asyncio.Event
) -> None:
    peers = [a for a in AGENTS if a != agent.name]
    n = 0
    while not stop.is_set():
        batch: list[tuple[str, asyncio.Future[Accepted | Held]]] = []
        for _ in range(rng.randint(*BATCH)):
            n += 1
            body = f"{agent.name} #{n}"
            to = OUTSIDER if rng.random() < 0.03 else rng.choice(peers)
            sent[body] = Sent(agent.name, to)
            batch.append((body, agent.client.send_nowait(to, body)))
        for body, future in batch:
            record = sent[body]
            try:
                answer = await future
            except RelayError as exc:
                if "whether it was accepted is unknown" in exc.message:
                    record.outcome = "unknown"
                else:
                    record.outcome, record.code = "refused", exc.code
                continue
            record.outcome, record.id, record.seq = "accepted", answer.id, answer.seq
            record.session = agent.client.welcome.session if agent.client.welcome else None
        await asyncio.sleep(PAUSE)


async def receiver(agent: Agent, stop: asyncio.Event) -> None:
    client = agent.client
    await client.subscribe(window=64)
    while not stop.is_set():
        message = await client.wait_for_message(0.2)
        if message is None:
            continue
        batch = [message]
        while not client.messages.empty():
            batch.append(client.messages.get_nowait())
        agent.delivered += [(m.id, m.sender, m.body) for m in batch]
        try:
            await client.ack([m.id for m in batch])
        except RelayError:
            agent.acks_failed += 1  # redelivered, and dropped by the client: still counted once


async def killer(
    relay: RelayProcess, agents: list[Agent], rng: random.Random, figures: Figures
) -> None:
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(*UPTIME))
        before = [a.client.reconnects for a in agents]
        await asyncio.to_thread(relay.kill)
        figures.kills += 1
        spawned = time.monotonic()
        figures.daemon_recovery.append(await asyncio.to_thread(relay.start))
        # Every client is back when its reconnect count moved on.
        deadline = spawned + 20
        while any(a.client.reconnects == b for a, b in zip(agents, before, strict=True)):
            assert time.monotonic() < deadline, "a client did not come back within 20 s"
            await asyncio.sleep(0.002)
        figures.client_recovery.append(time.monotonic() - spawned)


def raw_resend(
    relay: RelayProcess, agent: str, credential: str, session: str, send: Send
) -> tuple[Welcome, Error]:
    """Resume ``session`` on a raw connection and send ``send`` as it stands."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(relay.socket))
    reader = sock.makefile("rb")
    try:
        sock.sendall(encode(Hello(agent=agent, credential=credential, resume=session)))
        welcome = decode_relay_frame(reader.readline())
        assert isinstance(welcome, Welcome), welcome
        sock.sendall(encode(send))
        answer = decode_relay_frame(reader.readline())
        assert isinstance(answer, Error), answer
        return welcome, answer
    finally:
        reader.close()
        sock.close()


def test_sigkill_under_load_loses_nothing_doubles_nothing(state_dir: Path) -> None:
    seed = int(os.environ.get("CCC_CRASH_SEED", str(random.SystemRandom().randrange(2**32))))
    rng = random.Random(seed)
    relay = RelayProcess(state_dir)
    relay.start()
    relay.add_agent(OUTSIDER)  # the first agent: the one the restarts' probe says hello as
    endpoints = {name: relay.add_agent(name) for name in AGENTS}
    for i, left in enumerate(AGENTS):
        for right in AGENTS[i + 1 :]:
            relay.allow(left, right, both=True)
    sent: dict[str, Sent] = {}
    figures = Figures()
    started = time.monotonic()

    sessions: dict[str, str] = {}

    async def scenario() -> list[Agent]:
        agents = []
        for name in AGENTS:
            client = AsyncRelayClient(endpoints[name], reconnect=Backoff())
            sessions[name] = (await client.connect()).session
            agents.append(Agent(name, client))
        stop_sending, stop_receiving = asyncio.Event(), asyncio.Event()
        senders = [
            asyncio.create_task(sender(a, sent, random.Random(rng.random()), stop_sending))
            for a in agents
        ]
        receivers = [asyncio.create_task(receiver(a, stop_receiving)) for a in agents]
        try:
            # A welcome is sent before its session is committed; a send accepted
            # on it proves the session durable, so every resume can succeed.
            deadline = time.monotonic() + 20
            while {s.sender for s in sent.values() if s.outcome == "accepted"} != set(AGENTS):
                assert time.monotonic() < deadline, "not every agent got a send accepted"
                await asyncio.sleep(0.01)
            await killer(relay, agents, random.Random(rng.random()), figures)
            stop_sending.set()
            await asyncio.wait_for(asyncio.gather(*senders), 30)
            # Drain: every accepted message reaches its recipient.
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while missing(sent, agents) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # and then nothing more arrives (no late doubles)
        finally:
            stop_sending.set()
            stop_receiving.set()
            await asyncio.gather(*senders, *receivers, return_exceptions=True)
        # A raw resend of old seqs on a resumed session: refused as replay.
        a0 = agents[0]
        session = a0.client.welcome.session  # type: ignore[union-attr]
        accepted_seqs = sorted(
            s.seq for s in sent.values() if s.session == session and s.seq is not None
        )
        assert accepted_seqs, "a0's current session accepted nothing"
        for old in (accepted_seqs[0], accepted_seqs[-1]):
            welcome, answer = await asyncio.to_thread(
                raw_resend,
                relay,
                "a0",
                endpoints["a0"].credential.reveal(),
                session,
                Send(seq=old, to="a1", body="a replayed send"),
            )
            assert welcome.session == session and welcome.last_seq >= accepted_seqs[-1]
            assert (answer.code, answer.seq) == ("replay", old), answer
        for agent in agents:  # every reconnect resumed the session it had
            assert agent.client.welcome is not None
            assert agent.client.welcome.session == sessions[agent.name]
            await agent.client.close()
        return agents

    try:
        agents = asyncio.run(scenario())
    finally:
        relay.stop()
    elapsed = time.monotonic() - started
    verified = relay.audit_verify()

    outcomes = Counter(s.outcome for s in sent.values())
    by_body: dict[str, list[tuple[str, str, str]]] = {}
    for agent in agents:
        for mid, sender_name, body in agent.delivered:
            by_body.setdefault(body, []).append((agent.name, mid, sender_name))
    lost = missing(sent, agents)
    delivered = sum(len(a.delivered) for a in agents)
    report = (
        f"crash test (seed {seed}): {figures.kills} kills survived in {elapsed:.1f} s; "
        f"sent {len(sent)}, accepted {outcomes['accepted']}, refused {outcomes['refused']}, "
        f"unknown {outcomes['unknown']}, delivered {delivered}, lost {len(lost)}; "
        f"longest recovery: daemon {max(figures.daemon_recovery):.3f} s to its first "
        f"hello, slowest client {max(figures.client_recovery):.3f} s to its resumed session"
    )
    print(report)

    assert figures.kills >= 20 and figures.kills == KILLS
    assert not lost, f"{len(lost)} accepted messages never delivered, e.g. {lost[:5]}; {report}"
    for agent in agents:  # as the agent sees it: each id once
        ids = [mid for mid, _, _ in agent.delivered]
        assert len(ids) == len(set(ids)), f"{agent.name} was handed an id twice"
    for body, copies in by_body.items():
        record = sent.get(body)
        assert record is not None, f"delivered but never sent: {body!r}"
        assert len(copies) == 1, f"{body!r} delivered {len(copies)} times: {copies}"
        [(recipient, mid, sender_name)] = copies
        assert (recipient, sender_name) == (record.to, record.sender)
        assert record.outcome in ("accepted", "unknown"), f"{body!r} was {record.outcome}"
        if record.outcome == "accepted":
            assert mid == record.id
    refused = Counter(s.code for s in sent.values() if s.outcome == "refused")
    assert set(refused) <= {"forbidden"}, refused  # never replay / out_of_order
    assert outcomes["pending"] == 0
    assert outcomes["accepted"] > 1000, report  # the relay really was under load
    assert verified.returncode == 0, verified.stdout + verified.stderr


def missing(sent: dict[str, Sent], agents: list[Agent]) -> list[str]:
    """Accepted sends no receiver has handed out (yet)."""
    seen = {body for agent in agents for _, _, body in agent.delivered}
    return [body for body, s in sent.items() if s.outcome == "accepted" and body not in seen]
