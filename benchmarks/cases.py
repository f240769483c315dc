"""What is measured, and the clients that measure it.

Rule: every system gets the same message bodies, the same topology, the same
window of outstanding sends and the same counts; only the client library
differs, and each is driven the way its documentation intends (ccc-relay's
``AsyncRelayClient`` with a subscription window and batched acks, redis-py
pipelines and ``XREAD BLOCK``, nats-py publish/flush, JetStream
``publish_async`` and a pull consumer acked per batch).

A body starts with 24 hex digits: the sender's CLOCK_MONOTONIC in ns and the
message number. The machine has one monotonic clock, so a receiver in another
process computes end-to-end latency from it directly.

Each ``Role`` is one connection. Roles run in the benchmark process itself or
spread over client processes (``procs``); processes meet at a barrier after
connecting, so every receiver listens before the first send. Senders publish
their per-recipient counts to shared memory when done; a receiver stops when
it has them all, when nothing arrived for ``IDLE_STOP`` seconds after the
senders finished, or at its deadline -- every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = 24  # 16 hex digits of send time (ns) + 8 of message number
IDLE_STOP = 3.0  # seconds without a message, after the senders finished, that end a receiver
SUBSCRIBE_WINDOW = 1024  # ccc: pushed-but-unacked messages per session (the protocol maximum)
ACK_BATCH = 256  # ccc: ids per ack frame; JetStream: messages per fetch (acked as one)
ACK_AFTER = 0.05  # seconds a partial ack batch may wait
_PROSE = (
    "alice, the API changed: `fetch_user(id)` now returns a dict, see src/api/users.py "
    "and the notes in docs/users.md. Please update the client and run the tests; "
    "half of them touch and/or mock it. Thanks! "
)

KiB = 1024


def body_text(size: int, number: int, pad: str) -> str:
    """A body of exactly ``size`` ASCII characters stamped with now and ``number``."""
    return f"{time.monotonic_ns():016x}{number & 0xFFFFFFFF:08x}{pad[: size - HEADER]}"


def padding(size: int) -> str:
    return (_PROSE * (size // len(_PROSE) + 1))[: max(0, size - HEADER)]


def sent_ns(body: str | bytes) -> int:
    return int(body[:16], 16)


# --- what a run is -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Access:
    """How client processes reach one running system (picklable)."""

    kind: str  # ccc | ccc-fed | baseline | redis | nats | nats-js
    address: str  # a Unix socket path, or nats://127.0.0.1:PORT
    credentials: dict[str, str] = field(default_factory=dict)  # ccc: agent -> credential
    peer_address: str = ""  # ccc-fed: the receivers' relay (h2); ``address`` is h1's


@dataclass(frozen=True, slots=True)
class SendPlan:
    size: int
    window: int  # outstanding (sent, not yet answered) messages per sender
    count: int  # at most this many per sender; exactly this many when paced
    seconds: float  # a flood stops sending after this long
    rate: float | None = None  # messages per second per sender; None: flood


@dataclass(frozen=True, slots=True)
class Role:
    agent: str
    send: bool  # a sender connection; otherwise a receiver connection
    targets: tuple[str, ...] = ()  # a sender writes to these in turn
    index: int = 0  # a receiver's slot in the shared expected counts


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    title: str
    kind: str  # flood | paced | drain | idle
    size: int = KiB
    topology: str = "1to1"  # 1to1 | 10to1 | 10x10
    rate: float | None = None
    federated: bool = False  # run by ccc-fed (two relays) and nats-js only


CASES: dict[str, Case] = {c.name: c for c in (
    Case("tput-1k", "throughput 1 KiB 1->1", "flood"),
    Case("tput-64b", "throughput 64 B 1->1", "flood", size=64),
    Case("tput-64k", "throughput 64 KiB 1->1", "flood", size=64 * KiB),
    Case("tput-10to1", "throughput 1 KiB 10->1", "flood", topology="10to1"),
    Case("tput-10x10", "throughput 1 KiB 10<->10", "flood", topology="10x10"),
    Case("lat-1k", "latency 1 KiB 1->1 at 1,000 msg/s", "paced", rate=1000.0),
    Case("lat-10k", "latency 1 KiB 1->1 at 10,000 msg/s", "paced", rate=10000.0),
    Case("drain", "receiver offline, then online: 1 KiB queued", "drain"),
    Case("idle", "idle connected agents", "idle"),
    # Cross-relay: ccc-fed (s0@h1 -> r0@h2 through JetStream) beside nats-js alone.
    Case("fed-tput-1k", "cross-relay throughput 1 KiB h1->h2 through JetStream", "flood",
         federated=True),
    Case("fed-lat-1k", "cross-relay latency 1 KiB h1->h2 at 100 msg/s", "paced", rate=100.0,
         federated=True),
)}  # fmt: skip


def topology(name: str) -> tuple[list[Role], list[Role]]:
    """(senders, receivers) of a topology; 10x10 is a full bipartite mesh both ways."""
    if name == "1to1":
        return [Role("s0", True, ("r0",))], [Role("r0", False, index=0)]
    if name == "10to1":
        return [Role(f"s{i}", True, ("r0",)) for i in range(10)], [Role("r0", False, index=0)]
    if name == "10x10":
        left = [f"a{i}" for i in range(10)]
        right = [f"b{i}" for i in range(10)]
        senders = [Role(a, True, tuple(right)) for a in left]
        senders += [Role(b, True, tuple(left)) for b in right]
        receivers = [Role(n, False, index=i) for i, n in enumerate(left + right)]
        return senders, receivers
    raise ValueError(f"unknown topology {name!r}")


def pairs(senders: Sequence[Role]) -> list[tuple[str, str]]:
    return [(s.agent, t) for s in senders for t in s.targets]


# --- results -------------------------------------------------------------------


@dataclass(slots=True)
class SenderResult:
    agent: str
    first_ns: int = 0
    last_ns: int = 0
    accepted: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    per_target: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ReceiverResult:
    agent: str
    opened_ns: int = 0
    first_ns: int = 0
    last_ns: int = 0
    count: int = 0
    latencies: list[int] = field(default_factory=list)


@dataclass(slots=True)
class GroupResult:
    senders: list[SenderResult] = field(default_factory=list)
    receivers: list[ReceiverResult] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds this client process spent after the barrier
    error: str | None = None


class Shared:
    """Counters the client processes share: what each receiver is owed."""

    def __init__(self, ctx: Any, receivers: int, senders: int) -> None:
        self.expected = ctx.Array("q", max(1, receivers))
        self.senders_done = ctx.Value("i", 0)
        self.senders = senders

    def sender_finished(self, per_receiver: dict[int, int]) -> None:
        with self.expected.get_lock():
            for index, count in per_receiver.items():
                self.expected[index] += count
        with self.senders_done.get_lock():
            self.senders_done.value += 1

    def owed(self, index: int) -> int | None:
        """What receiver ``index`` is owed, once every sender finished."""
        if self.senders_done.value < self.senders:
            return None
        return int(self.expected[index])


class Tally:
    """One receiver's count, times and latencies; ``finished`` ends its loop."""

    def __init__(self, agent: str, *, latency: bool) -> None:
        self.result = ReceiverResult(agent, opened_ns=time.monotonic_ns())
        self.latency = latency
        self.finished = asyncio.Event()
        self.on_finish: Callable[[], None] | None = None

    def seen(self, body: str | bytes) -> None:
        now = time.monotonic_ns()
        r = self.result
        if not r.count:
            r.first_ns = now
        r.count += 1
        r.last_ns = now
        if self.latency:
            r.latencies.append(now - sent_ns(body))

    def finish(self) -> None:
        if not self.finished.is_set():
            self.finished.set()
            if self.on_finish is not None:
                self.on_finish()


# --- the five clients ----------------------------------------------------------


class Pipe:
    """A sender connection: ``submit`` one message, ``wait_below`` a window."""

    @property
    def outstanding(self) -> int:
        """Messages sent and not answered yet."""
        return 0

    async def open(self) -> None: ...
    async def submit(self, to: str, body: str) -> None: ...
    async def wait_below(self, limit: int) -> None: ...
    def reap(self) -> None: ...
    async def close(self) -> None: ...

    def __init__(self, access: Access, agent: str, result: SenderResult, window: int) -> None:
        self.access = access
        self.agent = agent
        self.result = result
        self.window = window

    def error(self, code: str) -> None:
        self.result.errors[code] = self.result.errors.get(code, 0) + 1


class Sink:
    """A receiver connection: ``open`` subscribes, ``run`` feeds the tally until finished."""

    def __init__(self, access: Access, agent: str, tally: Tally) -> None:
        self.access = access
        self.agent = agent
        self.tally = tally

    async def open(self) -> None: ...
    async def run(self) -> None: ...
    async def close(self) -> None: ...


async def ccc_client(access: Access, agent: str) -> Any:
    """A connected, authenticated ``AsyncRelayClient`` for ``agent``."""
    from ccc_relay.client.aio import AsyncRelayClient
    from ccc_relay.client.endpoint import Endpoint
    from ccc_relay.credentials import Credential

    credential = Credential(access.credentials[agent])
    client = AsyncRelayClient(Endpoint(Path(access.address), agent, credential))
    await client.connect()
    return client


class CccPipe(Pipe):
    async def open(self) -> None:
        self.client = await ccc_client(self.access, self.agent)
        self.futures: deque[asyncio.Future[Any]] = deque()

    async def submit(self, to: str, body: str) -> None:
        self.futures.append(self.client.send_nowait(to, body))

    def _settle(self, future: asyncio.Future[Any]) -> None:
        exc = future.exception()
        if exc is None:
            self.result.accepted += 1
        else:
            self.error(getattr(exc, "code", type(exc).__name__))

    async def wait_below(self, limit: int) -> None:
        futures = self.futures
        while len(futures) >= max(1, limit):
            future = futures.popleft()
            with contextlib.suppress(Exception):
                await future
            self._settle(future)

    def reap(self) -> None:
        futures = self.futures
        while futures and futures[0].done():
            self._settle(futures.popleft())

    @property
    def outstanding(self) -> int:
        return len(self.futures)

    async def close(self) -> None:
        await self.client.close()


class CccSink(Sink):
    async def open(self) -> None:
        self.client = await ccc_client(self.access, self.agent)
        await self.client.subscribe(window=SUBSCRIBE_WINDOW)
        self.tally.on_finish = lambda: self.client.messages.put_nowait(None)

    async def run(self) -> None:
        queue: asyncio.Queue[Any] = self.client.messages
        tally = self.tally
        pending: list[str] = []
        acks: set[asyncio.Task[int]] = set()
        last_ack = time.monotonic()
        while not tally.finished.is_set():
            try:
                message = await asyncio.wait_for(queue.get(), ACK_AFTER) if pending else (
                    await queue.get())  # fmt: skip
            except TimeoutError:
                message = None
            while message is not None:
                tally.seen(message.body)
                pending.append(message.id)
                message = queue.get_nowait() if not queue.empty() else None
            now = time.monotonic()
            if len(pending) >= ACK_BATCH or (pending and now - last_ack >= ACK_AFTER):
                task = asyncio.ensure_future(self.client.ack(pending))
                acks.add(task)
                task.add_done_callback(acks.discard)
                pending, last_ack = [], now
        if pending:
            acks.add(asyncio.ensure_future(self.client.ack(pending)))
        if acks:
            await asyncio.wait(acks, timeout=10)

    async def close(self) -> None:
        await self.client.close()


def clients(kind: str) -> tuple[type[Pipe], type[Sink]]:
    """The sender and receiver classes for one kind of system."""
    if kind == "ccc":
        return CccPipe, CccSink
    if kind == "ccc-fed":
        from benchmarks.federated import FedPipe, FedSink

        return FedPipe, FedSink
    if kind == "baseline":
        from benchmarks.baseline_relay import BaselinePipe, BaselineSink

        return BaselinePipe, BaselineSink
    from benchmarks import peers

    return peers.CLIENTS[kind]


# --- the loops -----------------------------------------------------------------


async def flood(pipe: Pipe, targets: Sequence[str], plan: SendPlan) -> None:
    """Send as fast as the window allows until ``count`` or ``seconds`` runs out."""
    pad = padding(plan.size)
    result = pipe.result
    per_target = dict.fromkeys(targets, 0)
    stop = time.monotonic() + plan.seconds
    result.first_ns = time.monotonic_ns()
    n = len(targets)
    for i in range(plan.count):
        if not i & 63 and time.monotonic() >= stop:
            break
        if pipe.outstanding >= plan.window:
            await pipe.wait_below(plan.window)
        to = targets[i % n]
        await pipe.submit(to, body_text(plan.size, i, pad))
        per_target[to] += 1
    await pipe.wait_below(1)
    pipe.reap()
    result.last_ns = time.monotonic_ns()
    result.per_target = per_target


async def paced(pipe: Pipe, targets: Sequence[str], plan: SendPlan) -> None:
    """Open loop: message i leaves at start + i/rate, whatever the answers do.

    Each wake-up sends every message that is due, so the offered rate holds
    even where the timer granularity (1 ms in uvloop) is coarser than 1/rate.
    """
    assert plan.rate is not None
    pad = padding(plan.size)
    result = pipe.result
    per_target = dict.fromkeys(targets, 0)
    n = len(targets)
    interval = 1.0 / plan.rate
    start = time.monotonic()
    result.first_ns = time.monotonic_ns()
    i = 0
    while i < plan.count:
        now = time.monotonic()
        due = min(plan.count, int((now - start) / interval) + 1)
        while i < due:
            to = targets[i % n]
            await pipe.submit(to, body_text(plan.size, i, pad))
            per_target[to] += 1
            i += 1
        pipe.reap()
        if i < plan.count:
            await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))
    await pipe.wait_below(1)
    pipe.reap()
    result.last_ns = time.monotonic_ns()
    result.per_target = per_target


async def run_group(
    access: Access, roles: Sequence[Role], plan: SendPlan, shared: Shared,
    index_of: dict[str, int], barrier: Any, deadline: float,
) -> GroupResult:  # fmt: skip
    """Connect ``roles``, meet the other processes at ``barrier``, run, report.

    ``deadline`` is a CLOCK_MONOTONIC second after which receivers stop waiting.
    """
    pipe_type, sink_type = clients(access.kind)
    out = GroupResult()
    sinks = [sink_type(access, r.agent, Tally(r.agent, latency=plan.rate is not None))
             for r in roles if not r.send]  # fmt: skip
    receiver_index = {s.agent: r.index for s, r in zip(sinks, [r for r in roles if not r.send],
                                                        strict=True)}  # fmt: skip
    pipes = [(pipe_type(access, r.agent, SenderResult(r.agent), plan.window), r)
             for r in roles if r.send]  # fmt: skip
    try:
        for sink in sinks:
            await sink.open()
        for pipe, _role in pipes:
            await pipe.open()
    except Exception as exc:  # reported in the table, the run goes on
        out.error = f"connect failed: {type(exc).__name__}: {exc}"
    await asyncio.to_thread(barrier.wait, 60)
    if out.error is not None:
        return out
    cpu0 = time.process_time()

    async def one_sender(pipe: Pipe, role: Role) -> None:
        try:
            if plan.rate is None:
                await flood(pipe, role.targets, plan)
            else:
                await paced(pipe, role.targets, plan)
        finally:
            shared.sender_finished({index_of[t]: c for t, c in pipe.result.per_target.items()})

    async def watch() -> None:
        progress: dict[str, tuple[int, float]] = {}
        while not all(s.tally.finished.is_set() for s in sinks):
            now = time.monotonic()
            for sink in sinks:
                tally = sink.tally
                owed = shared.owed(receiver_index[sink.agent])
                count = tally.result.count
                last_count, since = progress.get(sink.agent, (-1, now))
                if count != last_count:
                    progress[sink.agent] = (count, now)
                    since = now
                idle = owed is not None and now - since >= IDLE_STOP
                if (owed is not None and count >= owed) or idle or now >= deadline:
                    tally.finish()
            await asyncio.sleep(0.005)

    try:
        tasks = [asyncio.ensure_future(one_sender(p, r)) for p, r in pipes]
        tasks += [asyncio.ensure_future(s.run()) for s in sinks]
        tasks.append(asyncio.ensure_future(watch()))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            out.error = f"{type(failures[0]).__name__}: {failures[0]}"
    finally:
        out.cpu = time.process_time() - cpu0
        for pipe, _role in pipes:
            with contextlib.suppress(Exception):
                await pipe.close()
        for sink in sinks:
            with contextlib.suppress(Exception):
                await sink.close()
    out.senders = [p.result for p, _ in pipes]
    out.receivers = [s.tally.result for s in sinks]
    return out


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def _worker(
    access: Access, roles: Sequence[Role], plan: SendPlan, shared: Shared,
    index_of: dict[str, int], barrier: Any, deadline: float, results: Any,
) -> None:  # fmt: skip
    raise_nofile()
    try:
        out = run_loop(run_group(access, roles, plan, shared, index_of, barrier, deadline))
    except Exception as exc:  # the parent reports it
        out = GroupResult(error=f"{type(exc).__name__}: {exc}")
    results.put(out)


def place(senders: Sequence[Role], receivers: Sequence[Role], procs: int) -> list[list[Role]]:
    """Groups of roles, one per client process: receivers together, senders spread."""
    if procs <= 1:
        return [[*receivers, *senders]]
    groups: list[list[Role]] = [list(receivers)] if receivers else []
    spread = procs - len(groups)
    if spread <= 0:
        groups[0].extend(senders)
        return groups
    buckets: list[list[Role]] = [[] for _ in range(spread)]
    for i, role in enumerate(senders):
        buckets[i % spread].append(role)
    return groups + [b for b in buckets if b]


def run_roles(access: Access, senders: Sequence[Role], receivers: Sequence[Role],
              plan: SendPlan, *, procs: int = 0, owed: dict[int, int] | None = None,
              timeout: float = 120.0) -> list[GroupResult]:  # fmt: skip
    """Run one measurement; ``procs`` 0 runs the clients in this process.

    ``owed`` presets what receivers are owed when no sender takes part (drain).
    Raises RuntimeError when a client process does not report within ``timeout``.
    """
    ctx = multiprocessing.get_context("spawn")
    n_receivers = max((r.index for r in receivers), default=-1) + 1
    shared = Shared(ctx, n_receivers, len(senders))
    if owed is not None:
        shared.sender_finished(owed)
        shared.senders = 1
    index_of = {r.agent: r.index for r in receivers}
    for s in senders:  # a drain's fill has no receiver connections: give targets a slot anyway
        for t in s.targets:
            index_of.setdefault(t, 0)
    deadline = time.monotonic() + timeout
    groups = place(senders, receivers, procs)
    if procs <= 0:
        return [run_loop(run_group(access, groups[0], plan, shared, index_of, _NoBarrier(),
                                   deadline))]  # fmt: skip
    barrier = ctx.Barrier(len(groups))
    results = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(access, g, plan, shared, index_of, barrier,
                                                 deadline, results), daemon=True)
               for g in groups]  # fmt: skip
    for w in workers:
        w.start()
    out: list[GroupResult] = []
    try:
        for _ in workers:
            out.append(results.get(timeout=max(1.0, deadline - time.monotonic() + 30)))
    except Exception as exc:
        raise RuntimeError(f"a client process did not report: {exc!r}") from None
    finally:
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
                w.join(5)
    return out


class _NoBarrier:
    def wait(self, timeout: float | None = None) -> int:
        return 0
