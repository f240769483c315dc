"""The servers a benchmark measures, each started fresh for one measurement.

Rule: a server listens only on a Unix socket in a temporary directory the
benchmark made, or (nats-server, which has no Unix socket) on 127.0.0.1 at a
free port; it is waited for until it answers, and it is stopped by the code
that started it -- SIGTERM, then SIGKILL after ``STOP_GRACE``. A server that is
not installed is reported as such (with the command that installs it), never
an error that ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.cases import ACK_BATCH, SUBSCRIBE_WINDOW, Access, Pipe, Sink
from benchmarks.memory import profile_started

START_TIMEOUT = 30.0  # seconds a server gets to answer
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
BENCH_RATE = 6_000_000  # msg/min: every rate limit raised to 100,000 msg/s for the run
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])


@dataclass(frozen=True, slots=True)
class System:
    """One row label of the table: which server, with which settings."""

    name: str
    server: str  # ccc | baseline | redis | nats
    client: str  # a key of benchmarks.cases.CLIENTS
    describe: str
    appendfsync: str | None = None  # redis: "always", or None for redis' own default
    jetstream: bool = False
    durable: bool = False  # baseline: the durable floor (benchmarks/baseline_store.py)
    # baseline, durable: also ccc's own sanitiser and audit lines (benchmarks/ladder.py)
    floor_checks: bool = False
    # ccc: parts of the work switched off, for benchmarks/ladder.py's analysis
    # only; every row of the table runs with both on.
    sanitize: bool = True
    audit_bodies: bool = True


SYSTEMS: dict[str, System] = {s.name: s for s in (
    System("ccc", "ccc", "ccc",
           "ccc-statusd, every check on, SQLite WAL synchronous=FULL, audit with bodies"),
    System("baseline", "baseline", "baseline",
           "minimal asyncio relay: uvloop + msgspec, no checks, no storage"),
    System("baseline-durable", "baseline", "baseline",
           "the minimal relay plus ccc's durability alone: each message in SQLite (WAL, "
           "synchronous=FULL, group commit) before its answer, deleted when acked; no checks",
           durable=True),
    System("redis-always", "redis", "redis",
           "Redis streams XADD / XREAD BLOCK, appendonly yes, appendfsync always",
           appendfsync="always"),
    System("redis-default", "redis", "redis",
           "Redis streams, redis-server's defaults (no AOF; RDB snapshots)"),
    System("nats-core", "nats", "nats", "NATS core pub/sub (nothing stored)"),
    System("nats-js", "nats", "nats-js",
           "NATS JetStream, file storage (server default: fsync on a 2-minute timer)",
           jetstream=True),
    System("ccc-fed", "ccc-fed", "ccc-fed",
           "two ccc-statusd relays (every check on) federated through one nats-server "
           "(JetStream, file storage; NKEY users, plain TCP on loopback): s0@h1 -> r0@h2"),
)}  # fmt: skip


def find_binary(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def missing(system: System) -> str | None:
    """Why ``system`` cannot run here, as the sentence the table shows; None when it can."""
    if system.server == "redis":
        if find_binary("redis-server") is None:
            return "not installed (apt-get install redis-server)"
        if not _importable("redis"):
            return "not installed (pip install redis)"
    if system.server in ("nats", "ccc-fed"):
        if find_binary("nats-server") is None:
            return "not installed (apt-get install nats-server)"
        if not _importable("nats"):
            return "not installed (pip install nats-py)"
    return None


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def server_version(server: str) -> str:
    binary = {"redis": "redis-server", "nats": "nats-server"}.get(server)
    path = find_binary(binary) if binary else None
    if path is None:
        return "not installed"
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                              check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


class Server:
    """A running server process in its own temporary directory."""

    def __init__(self, system: System, *, root: Path | None = None) -> None:
        self.system = system
        # Named after the server, not the row: a Unix socket's path holds at most 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix=f"ccc-bench-{system.server}-", dir=root))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "server.log"
        self.access: Access | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def _spawn(self, argv: list[str], **kw: Any) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, **kw)  # fmt: skip

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer in {START_TIMEOUT:g}s: {self.tail()}")
            time.sleep(0.02)

    def tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_GRACE)
        shutil.rmtree(self.dir, ignore_errors=True)


def _yaml_bool(value: bool) -> str:
    return "true" if value else "false"


class CccServer(Server):
    """``ccc-statusd start`` on a config that raises only the rate limits and the
    per-recipient queue and audit caps (a flood is one sender at thousands of msg/s)."""

    def config_text(self) -> str:
        state = self.dir / "state"
        rate = f"{BENCH_RATE} msg/min"
        return (
            "daemon:\n"
            f"  state_dir: {state}\n"
            "  security:\n"
            f"    rate_limit: {rate}\n"
            f"    agent_rate_limit: {rate}\n"
            f"    pair_rate_limit: {rate}\n"
            f"    global_rate_limit: {rate}\n"
            "    max_connections: 4096\n"
            "    max_unauthenticated: 64\n"
            "    max_queued_messages: 1000000\n"
            "    max_queued_bytes: 4GiB\n"
            "    max_queued_messages_total: 1000000\n"
            "    max_queued_bytes_total: 8GiB\n"
            "    audit_body_bytes_per_minute_total: 1000GB\n"
            "    audit_body_bytes_per_minute: 1000GB\n"
            "    require_session_auth: true\n"
            f"    sanitize: {_yaml_bool(self.system.sanitize)}\n"
            "    sanitize_paths: escape\n"
            "  audit:\n"
            f"    log_all_messages: {_yaml_bool(self.system.audit_bodies)}\n"
        )

    @property
    def config_path(self) -> Path:
        return self.dir / "relay.yaml"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def start(self) -> None:
        self.config_path.write_text(self.config_text())
        statusd = Path(sys.executable).with_name("ccc-statusd")
        argv = [str(statusd) if statusd.exists() else "ccc-statusd", "start", "--allow-root",
                "--config", str(self.config_path)]  # fmt: skip
        self._spawn(argv)
        pid_file = self.state / "daemon.pid"
        self._wait(pid_file.exists, "ccc-statusd")
        self.access = Access("ccc", str(self.state / "daemon.sock"))
        profile_started(self.pid)

    def admin(self) -> Any:
        from ccc_relay.client.admin import AdminClient

        return AdminClient(self.state / "admin.sock")

    def add_agents(self, names: list[str], pairs: list[tuple[str, str]]) -> None:
        """Register ``names`` with fresh credentials; allow ``pairs`` (all else is denied)."""
        from ccc_relay.credentials import Credential

        admin = self.admin()
        assert self.access is not None
        creds = dict(self.access.credentials)
        for name in names:
            credential = Credential.generate()
            admin.request("agent_add", name=name, cred_hash=credential.digest())
            creds[name] = credential.reveal()
        for sender, recipient in pairs:
            admin.request("allow", sender=sender, recipient=recipient)
        self.access = Access("ccc", self.access.address, creds)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin().request("status")
        return result

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                self.admin().request("shutdown")
                proc.wait(STOP_GRACE)
        super().stop()


class BaselineServer(Server):
    def start(self) -> None:
        sock = self.dir / "relay.sock"
        ready = self.dir / "ready"
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
        argv = [sys.executable, "-m", "benchmarks.baseline_relay", "--socket", str(sock),
                "--ready-file", str(ready)]  # fmt: skip
        if self.system.durable:
            argv += ["--durable", str(self.dir / "baseline.db")]
        if self.system.floor_checks:
            argv += ["--sanitize", "--audit", str(self.dir / "audit")]
        self._spawn(argv, env=env)
        self._wait(ready.exists, "the baseline relay")
        self.access = Access("baseline", str(sock))


class RedisServer(Server):
    def start(self) -> None:
        sock = self.dir / "redis.sock"
        binary = find_binary("redis-server")
        assert binary is not None
        argv = [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                "--dir", str(self.dir), "--daemonize", "no", "--logfile", "",
                "--maxclients", "10000"]  # fmt: skip
        if self.system.appendfsync is not None:
            argv += ["--appendonly", "yes", "--appendfsync", self.system.appendfsync]
        self._spawn(argv)
        self._wait(lambda: _redis_ping(sock), "redis-server")
        self.access = Access("redis", str(sock))


def _redis_ping(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer(Server):
    def start(self) -> None:
        binary = find_binary("nats-server")
        assert binary is not None
        port = free_loopback_port()
        argv = [binary, "-a", "127.0.0.1", "-p", str(port)]
        if self.system.jetstream:
            argv += ["-js", "-sd", str(self.dir / "js")]
        self._spawn(argv)
        self._wait(lambda: _nats_info(port), "nats-server")
        self.access = Access(self.system.client, f"nats://127.0.0.1:{port}")

    async def create_stream(self) -> None:
        """The JetStream stream every recipient's subject lands in (file storage)."""
        import nats
        from nats.js.api import StorageType, StreamConfig

        assert self.access is not None
        nc = await nats.connect(self.access.address, allow_reconnect=False)
        try:
            await nc.jetstream().add_stream(StreamConfig(
                name=JS_STREAM, subjects=["ccc.>"], storage=StorageType.FILE,
            ))  # fmt: skip
        finally:
            await nc.close()


def _nats_info(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            return s.recv(16).startswith(b"INFO")
    except OSError:
        return False


SERVERS: dict[str, type[Server]] = {
    "ccc": CccServer,
    "baseline": BaselineServer,
    "redis": RedisServer,
    "nats": NatsServer,
}


def start(system: System, *, root: Path | None = None) -> Server:
    """A started server for ``system``; the caller stops it (it is a context manager)."""
    if system.server == "ccc-fed":
        from benchmarks.federated import FederatedPair

        server: Server = FederatedPair(system, root=root)
    else:
        server = SERVERS[system.server](system, root=root)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


# --- the clients the benchmark drives them with ----------------------------------


def _stream(agent: str) -> str:
    return f"ccc:{agent}"


class RedisPipe(Pipe):
    """XADD in pipelines: at most ``FLIGHTS`` in flight, the window split between them."""

    FLIGHTS = 4

    async def open(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis(unix_socket_path=self.access.address,
                                    max_connections=self.FLIGHTS + 1)  # fmt: skip
        await self.redis.ping()
        self.batch: list[tuple[str, str]] = []
        self.batch_size = max(1, self.window // self.FLIGHTS)
        self.flights: deque[asyncio.Task[int]] = deque()
        self.in_flight = 0

    async def submit(self, to: str, body: str) -> None:
        self.batch.append((to, body))
        if len(self.batch) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        while self.flights and self.flights[0].done():
            self.flights.popleft()
        if not self.batch or len(self.flights) >= self.FLIGHTS:
            return  # the batch waits for a free connection, as a pool would make it
        batch, self.batch = self.batch, []
        self.in_flight += len(batch)
        self.flights.append(asyncio.ensure_future(self._execute(batch)))

    async def _execute(self, batch: list[tuple[str, str]]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for to, body in batch:
            pipe.xadd(_stream(to), {"b": body})
        try:
            await pipe.execute()
        except Exception as exc:  # counted and shown in the table
            self.error(type(exc).__name__)
            return 0
        finally:
            self.in_flight -= len(batch)
        self.result.accepted += len(batch)
        return len(batch)

    @property
    def outstanding(self) -> int:
        return self.in_flight + len(self.batch)

    async def wait_below(self, limit: int) -> None:
        while self.outstanding >= max(1, limit):
            self._flush()
            if self.flights:
                await asyncio.wait([self.flights[0]])
                self.flights.popleft()

    def reap(self) -> None:
        self._flush()  # paced: each tick's messages go out as one pipeline when one is free

    async def close(self) -> None:
        await self.redis.aclose()


class RedisSink(Sink):
    async def open(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis(unix_socket_path=self.access.address)
        await self.redis.ping()
        self.last = b"0-0"

    async def run(self) -> None:
        stream = _stream(self.agent)
        tally = self.tally
        while not tally.finished.is_set():
            reply: Any = await self.redis.xread({stream: self.last}, count=1024, block=100)
            for _name, entries in reply or ():
                for _entry_id, fields in entries:
                    tally.seen(fields[b"b"])
                self.last = entries[-1][0]

    async def close(self) -> None:
        await self.redis.aclose()


def _subject(agent: str) -> str:
    return f"ccc.{agent}"


class NatsPipe(Pipe):
    """Core publish; a flush (PING/PONG round trip) every window bounds what is in flight."""

    async def open(self) -> None:
        import nats

        self.nc = await nats.connect(self.access.address, allow_reconnect=False)
        self.unflushed = 0

    async def submit(self, to: str, body: str) -> None:
        await self.nc.publish(_subject(to), body.encode())
        self.unflushed += 1

    @property
    def outstanding(self) -> int:
        return self.unflushed

    async def wait_below(self, limit: int) -> None:
        if self.unflushed >= max(1, limit):
            await self.nc.flush()
            self.result.accepted += self.unflushed
            self.unflushed = 0

    def reap(self) -> None:
        pass  # the client's flusher writes each tick's messages out by itself

    async def close(self) -> None:
        await self.nc.flush()
        self.result.accepted += self.unflushed
        self.unflushed = 0
        await self.nc.close()


class NatsSink(Sink):
    async def open(self) -> None:
        import nats

        self.nc = await nats.connect(self.access.address, allow_reconnect=False)
        seen = self.tally.seen

        async def on_message(msg: Any) -> None:
            seen(msg.data)

        await self.nc.subscribe(_subject(self.agent), cb=on_message,
                                pending_msgs_limit=0, pending_bytes_limit=0)  # fmt: skip
        await self.nc.flush()  # the server has the subscription before anyone sends

    async def run(self) -> None:
        await self.tally.finished.wait()

    async def close(self) -> None:
        await self.nc.close()


JS_STREAM = "CCC"


JS_STREAM = "CCC"


class JetStreamPipe(Pipe):
    async def open(self) -> None:
        import nats

        self.nc = await nats.connect(self.access.address, allow_reconnect=False)
        self.js = self.nc.jetstream(publish_async_max_pending=max(4000, self.window * 2))
        self.futures: deque[asyncio.Future[Any]] = deque()

    async def submit(self, to: str, body: str) -> None:
        self.futures.append(await self.js.publish_async(_subject(to), body.encode()))

    def _settle(self, future: asyncio.Future[Any]) -> None:
        exc = future.exception()
        if exc is None:
            self.result.accepted += 1
        else:
            self.error(type(exc).__name__)

    @property
    def outstanding(self) -> int:
        return len(self.futures)

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

    async def close(self) -> None:
        await self.nc.close()


class JetStreamSink(Sink):
    """A durable pull consumer, ack-all: one ack per fetched batch, like ccc's batched acks."""

    async def open(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        self.nc = await nats.connect(self.access.address, allow_reconnect=False)
        js = self.nc.jetstream()
        config = ConsumerConfig(ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL,
                                max_ack_pending=SUBSCRIBE_WINDOW,
                                filter_subject=_subject(self.agent))  # fmt: skip
        self.sub = await js.pull_subscribe(_subject(self.agent), durable=f"c_{self.agent}",
                                           stream=JS_STREAM, config=config)  # fmt: skip

    async def run(self) -> None:
        import nats.errors

        tally = self.tally
        while not tally.finished.is_set():
            try:
                msgs = await self.sub.fetch(ACK_BATCH, timeout=0.1)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                tally.seen(msg.data)
            if msgs:
                await msgs[-1].ack()

    async def close(self) -> None:
        await self.nc.close()


CLIENTS: dict[str, tuple[type[Pipe], type[Sink]]] = {
    "redis": (RedisPipe, RedisSink),
    "nats": (NatsPipe, NatsSink),
    "nats-js": (JetStreamPipe, JetStreamSink),
}
