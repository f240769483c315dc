"""What a server process costs: resident memory and CPU time, read from /proc.

Rule: numbers come from the kernel's accounting of the server's own process
(all its threads), never from the server's word about itself. Idle agents are
connected in batches small enough for the relay's ``max_unauthenticated``,
each batch authenticated before the next starts, and held open while RSS is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.cases import Access, ccc_client

# Connections opened at once: below ccc-statusd's default max_unauthenticated_per_uid
# (16; every benchmark agent is the same uid), so none is refused busy.
CONNECT_BATCH = 16
CONNECT_RETRIES = 100  # 10 ms apart: a full listen backlog gets a second to drain
MiB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` in bytes. Raises OSError when the process is gone."""
    return _status_kib(pid, "VmRSS") * 1024


def rss_anon_bytes(pid: int) -> int:
    """RssAnon (heap, not file pages such as a mapped database) of ``pid`` in bytes."""
    return _status_kib(pid, "RssAnon") * 1024


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/{pid}/status has no {key}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (every thread) so far."""
    return _stat_seconds(Path(f"/proc/{pid}/stat"))


def main_thread_seconds(pid: int) -> float:
    """User + system CPU time of ``pid``'s main thread (its event loop) so far."""
    return _stat_seconds(Path(f"/proc/{pid}/task/{pid}/stat"))


def _stat_seconds(path: Path) -> float:
    fields = path.read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class _Idle:
    """Open idle connections to one kind of system; ``close_all`` ends them."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.handles: list[Any] = []

    async def open(self, agent: str) -> Any:
        kind = self.access.kind
        if kind == "ccc":
            return await ccc_client(self.access, agent)
        if kind == "baseline":
            from benchmarks.baseline_relay import BaselineClient

            return await BaselineClient.connect(self.access.address, agent)
        if kind == "redis":
            import redis.asyncio as aioredis

            client = aioredis.Redis(unix_socket_path=self.access.address,
                                    single_connection_client=True)  # fmt: skip
            await client.ping()
            return client
        import nats

        return await nats.connect(self.access.address, allow_reconnect=False)

    async def close(self, handle: Any) -> None:
        kind = self.access.kind
        if kind == "redis":
            await handle.aclose()
        else:
            await handle.close()

    async def open_retrying(self, agent: str) -> Any:
        """``open``, retried while the listen backlog is full (EAGAIN on a Unix socket)."""
        for _ in range(CONNECT_RETRIES):
            try:
                return await self.open(agent)
            except BlockingIOError:
                await asyncio.sleep(0.01)
        return await self.open(agent)

    async def connect_all(self, agents: list[str]) -> None:
        for start in range(0, len(agents), CONNECT_BATCH):
            batch = agents[start : start + CONNECT_BATCH]
            opened = await asyncio.gather(
                *(self.open_retrying(a) for a in batch), return_exceptions=True
            )
            # Keep what opened, so close_all closes it even when one failed.
            self.handles += [h for h in opened if not isinstance(h, BaseException)]
            failed = [h for h in opened if isinstance(h, BaseException)]
            if failed:
                raise failed[0]

    async def close_all(self) -> None:
        for start in range(0, len(self.handles), CONNECT_BATCH):
            batch = self.handles[start : start + CONNECT_BATCH]
            with contextlib.suppress(Exception):
                await asyncio.gather(*(self.close(h) for h in batch), return_exceptions=True)
        self.handles = []


async def idle_rss(access: Access, pid: int, agents: list[str],
                   settle: float = 1.0) -> tuple[int, int, int]:  # fmt: skip
    """(RSS before, RSS with ``agents`` connected and idle, connections made)."""
    before = rss_bytes(pid)
    idle = _Idle(access)
    try:
        await idle.connect_all(agents)
        await asyncio.sleep(settle)  # let the server finish per-connection set-up
        after = rss_bytes(pid)
        return before, after, len(idle.handles)
    finally:
        await idle.close_all()


# --- where the CPU time goes ------------------------------------------------------


class Profiler:
    """``py-spy record`` of the running ccc-statusd while the ``with`` block runs.

    The pid is read from the daemon's pid file once it appears; py-spy samples
    without pausing the process (``--nonblocking``) so the profile does not
    slow what it measures, and writes collapsed stacks (``-f raw``) on SIGINT.
    """

    def __init__(self, output: Path, *, rate: int = 250) -> None:
        self.output = output
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def attach(self, pid: int) -> None:
        spy = shutil.which("py-spy", path=os.pathsep.join(
            [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))  # fmt: skip
        if spy is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.pid = pid
        self.proc = subprocess.Popen(
            [spy, "record", "-o", str(self.output), "-f", "raw", "--pid", str(pid), "--rate",
             str(self.rate), "--nonblocking", "--threads"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def __enter__(self) -> Profiler:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.remove(self)
        self.stop()

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.proc = None


_ACTIVE: list[Profiler] = []


def profile_started(pid: int) -> None:
    """Attach every waiting Profiler to the server that just started (``pid``)."""
    for profiler in _ACTIVE:
        if profiler.proc is None:
            profiler.attach(pid)


def top_self_frames(path: Path, limit: int = 15) -> list[tuple[str, float]]:
    """(frame, percent of samples) with the most self time in a py-spy raw profile.

    Lines are ``thread (TID): NAME;frame;frame COUNT``; a frame is ``name (file:line)``
    and lines of one function are added up. The leading ``thread:`` entries come
    first, each with its share of all samples.
    """
    counts: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].partition(": ")[2] or frames[0]
        threads[thread] = threads.get(thread, 0) + int(number)
        leaf = frames[-1] if len(frames) > 1 else "(no Python frame)"
        name, _, where = leaf.partition(" (")
        file = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
        key = f"{name} ({_short(file)})" if file else name
        counts[key] = counts.get(key, 0) + int(number)
        total += int(number)
    if not total:
        return []
    ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:limit]
    by_thread = sorted(threads.items(), key=lambda kv: kv[1], reverse=True)
    return [(f"thread: {name}", 100.0 * n / total) for name, n in by_thread] + [
        (frame, 100.0 * n / total) for frame, n in ranked
    ]


def _short(file: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def format_frames(frames: list[tuple[str, float]]) -> str:
    return "\n".join(f"  {pct:5.1f}%  {frame}" for frame, pct in frames) or "  (no samples)"
