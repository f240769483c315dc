"""The disk under every durable commit: how long one flush takes, and how often it stalls.

A relay that answers only after an fsync can be no faster than the disk's
flushes, and a message that arrives while a slow one is in progress waits for
it. So the probe runs at the latency case's pace (one small append and
``fdatasync`` every millisecond, for two seconds) rather than back to back:
the p99 of a paced run can be no lower than this p99, its tail meets the
rare slow flushes (on a shared virtual disk, from none to a few per second),
and a burst of a few hundred back-to-back samples lasts too short to meet one.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.report import percentile

BLOCK = b"x" * 4096  # about one commit's WAL append
SAMPLES = 2000
INTERVAL = 0.001  # seconds between flushes: the lat-1k case's pace
SLOW_MS = 5.0  # a flush this long holds up five messages at 1,000 msg/s


@dataclass(frozen=True)
class FlushLatency:
    samples: int
    p50: float  # ms
    p99: float
    p999: float
    worst: float
    slow: int  # flushes of SLOW_MS or more

    def describe(self) -> str:
        return (
            f"p50 {self.p50:.3f} ms, p99 {self.p99:.3f} ms, p99.9 {self.p999:.3f} ms, "
            f"worst {self.worst:.3f} ms; {self.slow} of {self.samples:,} took {SLOW_MS:g} ms "
            f"or more (4 KiB append + fdatasync every {INTERVAL * 1000:g} ms)"
        )


def flush_latency(
    directory: Path, samples: int = SAMPLES, interval: float = INTERVAL
) -> FlushLatency:
    """Time ``samples`` appends + fdatasync in ``directory``, one every ``interval`` seconds."""
    times_ns: list[int] = []
    with tempfile.NamedTemporaryFile(dir=directory, prefix="ccc-bench-fsync-") as f:
        fd = f.fileno()
        next_at = time.monotonic()
        for _ in range(samples):
            start = time.perf_counter_ns()
            os.write(fd, BLOCK)
            os.fdatasync(fd)
            times_ns.append(time.perf_counter_ns() - start)
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    times_ns.sort()

    def ms(fraction: float) -> float:
        return percentile(times_ns, fraction) / 1e6

    slow = sum(1 for t in times_ns if t >= SLOW_MS * 1e6)
    return FlushLatency(samples, ms(0.5), ms(0.99), ms(0.999), times_ns[-1] / 1e6, slow)
