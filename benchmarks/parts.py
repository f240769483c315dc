"""Where a message's CPU goes, part by part, inside one process.

Analysis only (no target is judged here): the benchmark's 1 KiB body, every
check on, measured with ``time.thread_time`` per message:

* decoding: a read of 200 ``send`` lines through the agent session;
* the sanitiser alone on the body;
* the relay core deciding those sends and answering them once durable
  (decoding and the sanitiser included), without sockets;
* the committer's work for a batch of 240: the audit lines (chain, write, fsync),
  the rows (insert with the relay's indexes), the commits, the delete on ack.

    python -m benchmarks.parts [--rounds N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from benchmarks.cases import body_text, padding
from ccc_relay.audit.log import AuditLog
from ccc_relay.core.effects import Persist, Reply
from ccc_relay.core.relay import RelayCore
from ccc_relay.credentials import Credential
from ccc_relay.daemon.committer import Committer, Job
from ccc_relay.policy.config_types import AuditConfig, Config, Limits, Rule
from ccc_relay.policy.sanitize import sanitize
from ccc_relay.protocol.codec import encode
from ccc_relay.protocol.frames import Ack, Hello, Message, Send, Subscribe
from ccc_relay.protocol.session import AgentSession
from ccc_relay.store.ops import AckMessages
from ccc_relay.store.sqlite import Store

BATCH = 200  # sends per read, as a flood's reads carry them
COMMIT_BATCH = 240  # messages per commit, as a flood's commits carry them
BODY = body_text(1024, 1, padding(1024))


def per_message(fn: Callable[[], object], messages: int, rounds: int) -> float:
    """The best round's thread CPU per message, in µs."""
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        fn()
        best = min(best, time.thread_time() - started)
    return best / messages * 1e6


def core_parts(root: Path, rounds: int) -> dict[str, float]:
    limits = replace(
        Limits(), rate_per_minute=1e12, agent_rate_per_minute=1e12,
        pair_rate_per_minute=1e12, global_rate_per_minute=1e12,
        max_queued_messages=10**9, max_queued_bytes=10**15,
        max_queued_messages_total=10**9, max_queued_bytes_total=10**15,
        audit_body_bytes_per_minute=10**15, audit_body_bytes_per_minute_total=10**15,
    )  # fmt: skip
    config = Config(
        state_dir=root, socket_path=root / "s", admin_socket_path=root / "a",
        audit=AuditConfig(log_path=root / "audit"), limits=limits, rules=(Rule("alice", "bob"),),
    )  # fmt: skip
    alice, bob = Credential.generate(), Credential.generate()
    from ccc_relay.store.records import AgentRecord

    now = 1_800_000_000.0
    core = RelayCore(
        config,
        agents=[AgentRecord("alice", alice.digest(), now), AgentRecord("bob", bob.digest(), now)],
        db_rules=[],
        last_delivery=0,
        sign=lambda _message: "",
        now=now,
    )
    core.connect(1, (1, 0, 0), now)
    core.connect(2, (2, 0, 0), now)
    core.receive(1, encode(Hello(agent="alice", credential=alice.reveal())), now)
    core.receive(2, encode(Hello(agent="bob", credential=bob.reveal())), now)
    core.receive(2, encode(Subscribe(window=1000)), now)
    seq = [0]

    def flood() -> None:
        for _ in range(10):
            data = b"".join(
                encode(Send(seq=seq[0] + i + 1, to="bob", body=BODY)) for i in range(BATCH)
            )
            seq[0] += BATCH
            effects = core.receive(1, data, now)
            pushed: list[str] = []
            for effect in effects:
                if isinstance(effect, Persist) and effect.then is not None:
                    for answer in core.persisted(effect.then, None, now):
                        if isinstance(answer, Reply) and isinstance(answer.frame, Message):
                            pushed.append(answer.frame.id)
            for effect in core.receive(2, encode(Ack(ids=pushed)), now):
                if isinstance(effect, Persist) and effect.then is not None:
                    core.persisted(effect.then, [("alice", len(BODY))] * len(pushed), now)

    lines = b"".join(encode(Send(seq=i + 1, to="bob", body=BODY)) for i in range(BATCH))

    def decode() -> None:
        for _ in range(10):
            session = AgentSession(10**8)
            session.authenticated("alice", "s_benchmarkparts", wants_signatures=False)
            session.receive_data(lines, now)
            session.next_events()

    return {
        "decoding a send": per_message(decode, 10 * BATCH, rounds),
        "the sanitiser": per_message(lambda: [sanitize(BODY) for _ in range(2000)], 2000, rounds),
        "the core, decoding and sanitiser included": per_message(flood, 10 * BATCH, rounds),
    }


def store_parts(root: Path, rounds: int) -> dict[str, float]:
    from ccc_relay.audit.records import AuditRecord
    from ccc_relay.store.records import StoredMessage

    store = Store(root / "relay.db")
    audit = AuditLog(root / "audit")
    committer = Committer(store, audit)
    delivery = [0]

    def batch() -> None:
        messages, records = [], []
        for _ in range(COMMIT_BATCH):
            delivery[0] += 1
            message = StoredMessage(
                id=f"m_benchmrk{delivery[0]:x}", sender="alice", recipient="bob",
                body=BODY, sent_at=1.0, delivery=delivery[0],
            )  # fmt: skip
            messages.append(message)
            records.append(AuditRecord(1.0, "accepted", {
                "id": message.id, "from": "alice", "to": "bob", "body": BODY, "size": len(BODY),
            }))  # fmt: skip
        committer._apply([Job(messages=messages, audit=records, seqs={"s_x": delivery[0]})], False)
        known = [(m.delivery, m.sender, len(m.body)) for m in messages]
        committer._apply([Job(op=AckMessages("bob", known))], False)

    try:
        return {"the committer: audit lines, rows, commits, delete on ack": per_message(
            batch, COMMIT_BATCH, rounds)}  # fmt: skip
    finally:
        committer.close()
        audit.close()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per part (the best counts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccc-parts-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        figures = {**core_parts(root / "core", args.rounds), **store_parts(root, args.rounds)}
    for name, micros in figures.items():
        print(f"{micros:7.1f} µs/msg  {name}")


if __name__ == "__main__":
    main()
