"""The report: machine, configuration, one table, the targets, met or not.

Rule: every number printed was measured in this run; a ratio compares rows of
the same case from the same run; every target line shows the numbers it was
judged on (a ratio target: the ratio, its threshold and both figures). The
memory targets are judged only on a full-size run; the ratio targets on any
run, and a quick run's line says its figures are single short runs. A row that
could not run says why in its note instead of showing a number.
"""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.disk import FlushLatency

MiB = 1024 * 1024
MB = 1000 * 1000
BUSY_ELSEWHERE = 25.0  # other CPU% above which a row is flagged: the machine was not quiet

COLUMNS = (
    "case", "system", "msgs", "msg/s", "MiB/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
    "RSS MiB", "relay CPU%", "relay µs/msg", "client CPU%", "other CPU%", "ccc vs row", "note",
)  # fmt: skip

# The row a case's ratios are taken to: the relay, or the two federated relays.
REFERENCE_SYSTEMS = ("ccc", "ccc-fed")

RATIO_HELP = (
    "ccc vs row: throughput and drain, ccc msg/s / row msg/s; latency, row p99 / ccc p99; "
    "memory, row RSS / ccc RSS. In the fed- cases ccc is ccc-fed (two relays through "
    "JetStream) beside JetStream alone. Above 1 means ccc-relay does better. relay CPU% is the "
    "server process (all threads) over the measured span, 100 = one core; relay µs/msg that "
    "CPU per message delivered (steadier than msg/s on a shared machine); client CPU% the "
    "benchmark's client processes; other CPU% what the rest of the machine used meanwhile, "
    f"(!) where that was above {BUSY_ELSEWHERE:.0f}% (the row ran on a busy machine)."
)


@dataclass(slots=True)
class Row:
    case: str
    system: str
    status: str = "ok"  # ok, or why there is no number
    msgs: int = 0
    seconds: float = 0.0
    rate: float | None = None  # msg/s delivered (throughput, latency, drain), or None
    size: int = 0
    offered: float | None = None
    p50: float | None = None  # ms
    p99: float | None = None
    p999: float | None = None
    pmax: float | None = None
    rss: int | None = None  # bytes
    server_cpu: float | None = None  # percent of one core
    client_cpu: float | None = None
    other_cpu: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def percentile(sorted_values: list[int], fraction: float) -> int:
    """The nearest-rank percentile of an ascending list."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


# --- machine and configuration ---------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> str:
    """The mount's filesystem type for ``path`` (tmpfs would make fsync free)."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, f"{parts[2]} ({parts[0]} on {mount})"
    except OSError:
        pass
    return kind


def revision(checkout: Path) -> str:
    """``git rev-parse --short HEAD`` of the checkout, "+changes" when the tree differs.

    Only read-only plumbing is used (no ``git status``, which may rewrite the index).
    """
    try:
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(checkout), "diff-index", "--quiet", "HEAD", "--"],
                               capture_output=True, timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" +changes" if dirty.returncode else "")


def machine(tmp: Path, server_versions: dict[str, str]) -> dict[str, str]:
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "uvloop": _version("uvloop"),
        "msgspec": _version("msgspec"),
        "sqlite": sqlite3.sqlite_version,
        "ccc-relay": f"{_version('ccc-relay')}, revision "
        f"{revision(Path(__file__).resolve().parent.parent)}",
        "redis-server": server_versions.get("redis", "?"),
        "nats-server": server_versions.get("nats", "?"),
        "redis-py": _version("redis") + (f" (hiredis {_version('hiredis')})"
                                          if _version("hiredis") != "not installed" else ""),
        "nats-py": _version("nats-py"),
        "state and data dirs": f"{tmp} on {filesystem_of(tmp)}",
        "load average at start": " ".join(load),
    }  # fmt: skip


def format_settings(title: str, settings: dict[str, Any]) -> str:
    width = max(len(k) for k in settings)
    lines = [title]
    for key, value in settings.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "(none)"
        if isinstance(value, str) and "\n" in value:  # a file: shown as it is, indented
            value = "\n".join(["", *(f"      {line}" for line in value.rstrip().splitlines())])
        lines.append(f"  {key:<{width}}  {value}".rstrip(" ") if str(value).startswith("\n")
                     else f"  {key:<{width}}  {value}")  # fmt: skip
    return "\n".join(lines)


# --- the table --------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _num(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def cpu_per_message(row: Row) -> float | None:
    """The server's CPU time per delivered message, in microseconds (for a row that
    is the median of repeated runs, the median of theirs: ``run.median_row``)."""
    if "relay_us_per_msg" in row.extra:
        return float(row.extra["relay_us_per_msg"])
    if row.server_cpu is None or not row.rate:
        return None
    return row.server_cpu / 100 / row.rate * 1e6


def ratio(case_kind: str, ccc: Row | None, row: Row) -> float | None:
    """How many times better ccc-relay does than ``row`` on what the case measures."""
    if ccc is None or not ccc.ok or not row.ok:
        return None
    if case_kind == "paced":
        return row.p99 / ccc.p99 if row.p99 and ccc.p99 else None
    if case_kind == "idle":
        return row.rss / ccc.rss if row.rss and ccc.rss else None
    return ccc.rate / row.rate if ccc.rate and row.rate else None


def cells(row: Row, case_kind: str, ccc: Row | None) -> list[str]:
    if not row.ok:
        return [row.case, row.system, *[""] * (len(COLUMNS) - 3), row.status]
    mib_s = row.rate * row.size / MiB if row.rate and row.size else None
    r = ratio(case_kind, ccc, row)
    return [
        row.case, row.system, _num(row.msgs), _num(row.rate), _num(mib_s, 1),
        _ms(row.p50), _ms(row.p99), _ms(row.p999), _ms(row.pmax),
        _num(row.rss / MiB if row.rss else None, 1),
        _num(row.server_cpu), _num(cpu_per_message(row)), _num(row.client_cpu),
        _num(row.other_cpu) + (" (!)" if (row.other_cpu or 0) > BUSY_ELSEWHERE else ""),
        "" if r is None else f"{r:.3g}x", row.note,
    ]  # fmt: skip


def table(rows: list[Row], kinds: dict[str, str]) -> str:
    """A Markdown table of ``rows`` (grouped by case, in order) with ratios to ccc."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if i < 2 or c == "note" else "--:"
                            for i, c in enumerate(COLUMNS)) + "|"]  # fmt: skip
    by_case: dict[str, list[Row]] = {}
    for row in rows:
        by_case.setdefault(row.case, []).append(row)
    for case, group in by_case.items():
        ccc = next((r for r in group if r.system in REFERENCE_SYSTEMS), None)
        for row in group:
            lines.append("| " + " | ".join(cells(row, kinds.get(case, ""), ccc)) + " |")
    return "\n".join(lines)


# --- targets ----------------------------------------------------------------------

# The targets. Three are ratios to another system measured in the same run, on
# the rows ``run.TARGET_ROWS`` names (each the median of three runs in a full
# run); two are ccc-relay's own memory, judged only at full size.
CPU_RATIO = 2.5  # tput-1k: ccc's relay CPU per message at most this times the durable floor's
THROUGHPUT_RATIO = 1.0  # tput-1k: ccc's msg/s at least this times NATS JetStream's
LATENCY_RATIO = 1.25  # lat-1k: ccc's p99 at most this times Redis appendfsync always's
IDLE_AGENTS = 1000
IDLE_RSS_MB = 150  # the daemon's RSS with IDLE_AGENTS idle, authenticated connections
QUEUED = 100_000  # messages queued for an offline agent, which must stay out of memory


@dataclass(slots=True)
class Target:
    name: str
    verdict: str  # met | not met | not measured
    detail: str
    ratio: float | None = None  # ccc's figure / the peer's (ratio targets only)
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class RatioTarget:
    """ccc's figure divided by ``peer``'s, in ``case`` of the same run, against ``threshold``."""

    name: str
    case: str
    peer: str
    metric: str  # "cpu" (relay µs/msg), "rate" (msg/s) or "p99" (ms)
    threshold: float
    at_most: bool  # met when the ratio is at most the threshold (else: at least)

    def value(self, row: Row) -> float | None:
        if self.metric == "cpu":
            return cpu_per_message(row)
        return row.rate if self.metric == "rate" else row.p99

    def show(self, value: float) -> str:
        if self.metric == "cpu":
            return f"{value:,.0f} µs/msg"
        return f"{value:,.0f} msg/s" if self.metric == "rate" else f"p99 {value:.3f} ms"

    @property
    def sign(self) -> str:
        return "<=" if self.at_most else ">="


RATIO_TARGETS = (
    RatioTarget("relay CPU per message in tput-1k, ccc / the durable floor (baseline-durable)",
                "tput-1k", "baseline-durable", "cpu", CPU_RATIO, at_most=True),
    RatioTarget("throughput in tput-1k, ccc / NATS JetStream (nats-js)",
                "tput-1k", "nats-js", "rate", THROUGHPUT_RATIO, at_most=False),
    RatioTarget("p99 in lat-1k, ccc / Redis appendfsync always (redis-always)",
                "lat-1k", "redis-always", "p99", LATENCY_RATIO, at_most=True),
)  # fmt: skip


def _find(rows: list[Row], case: str, system: str) -> Row | None:
    return next((r for r in rows if r.case == case and r.system == system and r.ok), None)


def _why_missing(rows: list[Row], case: str, systems: tuple[str, ...]) -> str:
    notes = []
    for system in systems:
        row = next((r for r in rows if r.case == case and r.system == system), None)
        if row is None:
            notes.append(f"{system}: not in this run")
        elif not row.ok:
            notes.append(f"{system}: {row.status}")
        else:
            notes.append(f"{system}: no figure")
    return f"needs {case} with {' and '.join(systems)}; " + "; ".join(notes)


def _runs(ccc: Row, peer: Row, full_size: bool) -> str:
    """How many runs each figure is the median of."""
    counts = (ccc.extra.get("runs", 1), peer.extra.get("runs", 1))
    if counts[0] == counts[1] > 1:
        return f"medians of {counts[0]} runs"
    if counts == (1, 1):
        return "single runs" + ("" if full_size else " (a quick run: judge on a full run)")
    return ", ".join(f"{r.system} {'median of ' if n > 1 else ''}{n} run{'s' if n > 1 else ''}"
                     for r, n in zip((ccc, peer), counts, strict=True))  # fmt: skip


def ratio_target(target: RatioTarget, rows: list[Row], *, full_size: bool) -> Target:
    """One ratio target: the ratio, the threshold, both figures, and the verdict."""
    name, limit = target.name, f"threshold {target.sign} {target.threshold:.2f}x"
    ccc, peer = _find(rows, target.case, "ccc"), _find(rows, target.case, target.peer)
    mine = None if ccc is None else target.value(ccc)
    theirs = None if peer is None else target.value(peer)
    if ccc is None or peer is None or not mine or not theirs:
        missing = tuple(s for s, v in (("ccc", mine), (target.peer, theirs)) if not v)
        return Target(name, "not measured", f"{limit}; {_why_missing(rows, target.case, missing)}",
                      threshold=target.threshold)  # fmt: skip
    x = mine / theirs
    met = x <= target.threshold if target.at_most else x >= target.threshold
    return Target(
        name, "met" if met else "not met",
        f"{x:.2f}x, {limit}; ccc {target.show(mine)}, "
        f"{target.peer} {target.show(theirs)}; {_runs(ccc, peer, full_size)}",
        ratio=x, threshold=target.threshold,
    )  # fmt: skip


def targets(
    rows: list[Row],
    *,
    full_size: bool,
    idle_agents: int,
    queued: int,
    flush: FlushLatency | None = None,
) -> list[Target]:
    out = [ratio_target(t, rows, full_size=full_size) for t in RATIO_TARGETS]
    latency = out[-1]
    if latency.ratio is not None:
        # What else this run saw under every durable answer: the durable floor
        # (the same durability, no checks) and one fsync of the disk.
        seen = []
        if (floor := _find(rows, "lat-1k", "baseline-durable")) and floor.p99 is not None:
            seen.append(f"baseline-durable p99 {floor.p99:.3f} ms")
        if flush is not None:
            seen.append(f"one fsync on this disk p99 {flush.p99:.3f} ms, "
                        f"p99.9 {flush.p999:.3f} ms")  # fmt: skip
        if seen:
            latency.detail += "; same run: " + ", ".join(seen)
    out.append(_idle_target(rows, full_size=full_size, idle_agents=idle_agents))
    out.append(_drain_target(rows, full_size=full_size, queued=queued))
    return out


def _idle_target(rows: list[Row], *, full_size: bool, idle_agents: int) -> Target:
    name = f"{IDLE_AGENTS:,} idle agents: daemon RSS < {IDLE_RSS_MB} MB"
    idle = _find(rows, "idle", "ccc")
    if not idle or not idle.rss:
        return Target(name, "not measured", "needs idle with ccc")
    size_ok = full_size and idle.msgs >= IDLE_AGENTS
    verdict = ("met" if idle.rss < IDLE_RSS_MB * MB else "not met") if size_ok else "not measured"
    return Target(
        name,
        verdict,
        f"{idle.msgs:,} agents connected: VmRSS {idle.rss / MB:.1f} MB "
        f"({idle.rss / MiB:.1f} MiB); {idle.note}"
        + ("" if size_ok else f" -- only {idle_agents:,} agents in this run"),
    )


def _drain_target(rows: list[Row], *, full_size: bool, queued: int) -> Target:
    name = (f"{QUEUED:,} queued 1 KiB messages not held in memory (RSS growth < 1/4 of "
            "their bytes)")  # fmt: skip
    drain = _find(rows, "drain", "ccc")
    if not drain or "rss_growth" not in drain.extra:
        return Target(name, "not measured", "needs drain with ccc")
    growth, payload = drain.extra["rss_growth"], drain.extra["payload"]
    size_ok = full_size and queued >= QUEUED
    held = growth >= payload / 4
    verdict = ("not met" if held else "met") if size_ok else "not measured"
    return Target(
        name,
        verdict,
        f"{drain.extra['queued']:,} queued ({payload / MiB:.0f} MiB of bodies): RSS "
        f"{drain.extra['rss_before'] / MiB:.1f} -> {(drain.rss or 0) / MiB:.1f} MiB "
        f"(+{growth / MiB:.1f} MiB)" + ("" if size_ok else f" -- only {queued:,} queued"),
    )


def describe_targets() -> str:
    """The targets in words, for ``--help`` and the docs."""
    lines = [f"  {t.name} {t.sign} {t.threshold:.2f}x" for t in RATIO_TARGETS]
    lines += [f"  {IDLE_AGENTS:,} idle agents: daemon RSS < {IDLE_RSS_MB} MB (full run only)",
              f"  {QUEUED:,} queued 1 KiB messages not held in memory (full run only)"]  # fmt: skip
    return "\n".join(lines)


def format_targets(found: list[Target]) -> str:
    return "\n".join(f"- [{t.verdict}] {t.name}: {t.detail}" for t in found)


def as_json(rows: list[Row], **sections: Any) -> dict[str, Any]:
    return {**sections, "columns": list(COLUMNS), "rows": [asdict(r) for r in rows]}
