"""Entry point: ``python -m benchmarks.run [--quick] [--cases ...] [--json FILE]``.

Rule: one measurement is one fresh server (ccc-statusd, the baseline relay,
redis-server or nats-server in its own temp dir), one case, one set of client
processes; the server is stopped before the next starts, so no run inherits
another's queue, cache or files. Everything is bounded: a flood by its seconds
and count, a paced run by its count, every receiver by a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import cases, disk, memory, peers, report
from benchmarks.cases import CASES, Access, Case, GroupResult, SendPlan
from benchmarks.peers import SYSTEMS, System
from benchmarks.report import Row, percentile

DESCRIPTION = (
    "Benchmark ccc-statusd end to end, every check on, against a minimal relay without "
    "storage (baseline), the same relay with ccc's durability and nothing else (the durable "
    "floor, baseline-durable), Redis streams (appendfsync always, and Redis's defaults) and "
    "NATS (core, and JetStream with file storage). Every measurement starts a fresh server in "
    "a temp dir; the run prints the machine, the configuration, one table with ratios, and "
    "the targets, met or not."
)
IDLE_SYSTEMS = ("ccc", "baseline", "redis-default", "nats-core")  # durability is moot when idle
PLACEMENTS = (0, 2, 3)  # client processes tried by the placement study
PLACEMENT_CASES = ("tput-10to1", "tput-10x10")
PLACEMENT_SYSTEMS = ("ccc", "baseline")
# The rows the ratio targets are judged on (report.RATIO_TARGETS): measured
# ``Scale.repeats`` times, the median kept.
_TARGET_SYSTEMS = ("ccc", "baseline-durable", "nats-js", "redis-always")
TARGET_ROWS = {"tput-1k": _TARGET_SYSTEMS, "lat-1k": _TARGET_SYSTEMS}
OVERLOADED = 0.95  # a paced row that delivered less than this share of its offered rate
# A federated case runs the two relays and JetStream alone; ccc-fed runs nothing else.
FEDERATED_SYSTEMS = ("ccc-fed", "nats-js")
MIN_PACED = 200  # a paced row sends at least this many (a slow rate runs longer): a p99 needs them


@dataclass(frozen=True, slots=True)
class Scale:
    name: str
    cases: tuple[str, ...]
    flood_seconds: float  # a flood sends for this long (or until flood_cap per sender)
    flood_cap: int
    paced_seconds: float  # a paced run offers its rate for this long
    drain_count: int  # messages queued for the offline receiver
    idle_agents: int
    procs: int  # client processes for floods and paced runs (0: this process)
    placement: bool  # also run the placement study
    window: int = 512  # outstanding sends for one sender; n senders share it (64 at least)
    repeats: int = 1  # the rows a target is judged on are measured this often; the median counts


FULL = Scale("full", tuple(CASES), flood_seconds=3.0, flood_cap=2_000_000, paced_seconds=4.0,
             drain_count=100_000, idle_agents=1000, procs=2, placement=True,
             repeats=3)  # fmt: skip
QUICK = Scale("quick", ("tput-1k", "tput-10to1", "lat-1k", "drain", "idle"), flood_seconds=0.6,
              flood_cap=200_000, paced_seconds=1.0, drain_count=3000, idle_agents=100, procs=0,
              placement=False)  # fmt: skip


# --- accounting ------------------------------------------------------------------


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (all cores)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields]
    busy = sum(values[:3]) + sum(values[5:8])  # user nice system irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass(slots=True)
class Meter:
    """CPU of the server, of this process tree, and of everything else, over one span."""

    pid: int
    t0: float = 0.0
    server0: float = 0.0
    own0: float = 0.0
    busy0: float = 0.0
    loop0: float = 0.0
    loop: float = 0.0  # after stop(): the server's main thread's share of ``server``

    def start(self) -> Meter:
        self.t0 = time.monotonic()
        self.server0 = memory.cpu_seconds(self.pid)
        self.loop0 = memory.main_thread_seconds(self.pid)
        self.own0 = _own_seconds()
        self.busy0 = _busy_seconds()
        return self

    def stop(self) -> tuple[float, float]:
        """(server CPU seconds, other processes' CPU as percent of one core)."""
        wall = max(1e-9, time.monotonic() - self.t0)
        server = memory.cpu_seconds(self.pid) - self.server0
        self.loop = memory.main_thread_seconds(self.pid) - self.loop0
        own = _own_seconds() - self.own0
        other = _busy_seconds() - self.busy0 - server - own
        return server, max(0.0, other) / wall * 100


def quiet_sample(seconds: float = 1.0) -> float:
    """What the rest of the machine used over ``seconds``, as percent of one core."""
    busy, own, t0 = _busy_seconds(), _own_seconds(), time.monotonic()
    time.sleep(seconds)
    other = _busy_seconds() - busy - (_own_seconds() - own)
    return max(0.0, other) / (time.monotonic() - t0) * 100


# --- one measurement -----------------------------------------------------------


def window_for(scale: Scale, senders: int) -> int:
    return scale.window if senders <= 1 else max(64, scale.window // senders)


def prepare(server: peers.Server, agents: list[str], pairs: list[tuple[str, str]]) -> Access:
    if isinstance(server, peers.CccServer) or server.system.server == "ccc-fed":
        server.add_agents(agents, pairs)  # type: ignore[attr-defined]
    if isinstance(server, peers.NatsServer) and server.system.jetstream:
        cases.run_loop(server.create_stream())
    assert server.access is not None
    return server.access


def _errors(groups: list[GroupResult]) -> str:
    notes = [g.error for g in groups if g.error]
    errors: dict[str, int] = {}
    for g in groups:
        for s in g.senders:
            for code, n in s.errors.items():
                errors[code] = errors.get(code, 0) + n
    notes += [f"{n} {code}" for code, n in sorted(errors.items())]
    return "; ".join(notes)


def _ccc_note(server: peers.Server, delivered: int) -> str:
    if not isinstance(server, peers.CccServer):
        return ""
    try:
        counters = server.status()["counters"]
    except Exception as exc:  # a note, not a failure
        return f"status failed: {exc}"
    commits = max(1, counters.get("commits", 0))
    refused = sum(counters.get("refused", {}).values())
    per_commit = counters.get("accepted", 0) / commits
    note = f"{counters.get('commits', 0):,} commits ({per_commit:.0f} msg/commit)"
    if slow := counters.get("slow_commits"):
        flushes = "flush" if slow == 1 else "flushes"
        note += (f", {slow:,} {flushes} of {counters['slow_commit_ms']:g} ms or more "
                 f"(longest {counters['longest_commit_ms']:.1f} ms)")  # fmt: skip
    return note + (f"; {refused} refused" if refused else "")


def flood_or_paced(system: System, case: Case, scale: Scale, root: Path, procs: int) -> Row:
    senders, receivers = cases.topology(case.topology)
    agents = sorted({r.agent for r in [*senders, *receivers]})
    if case.kind == "paced":
        assert case.rate is not None
        count = max(MIN_PACED, int(case.rate * scale.paced_seconds))
        plan = SendPlan(case.size, window_for(scale, len(senders)), count, count / case.rate,
                        case.rate / len(senders))  # fmt: skip
    else:
        plan = SendPlan(case.size, window_for(scale, len(senders)), scale.flood_cap,
                        scale.flood_seconds)  # fmt: skip
    with peers.start(system, root=root) as server:
        access = prepare(server, agents, cases.pairs(senders))
        meter = Meter(server.pid).start()
        groups = cases.run_roles(access, senders, receivers, plan, procs=procs,
                                 timeout=plan.seconds + 60)  # fmt: skip
        server_cpu, other = meter.stop()
        got = [r for g in groups for r in g.receivers]
        sent = [s for g in groups for s in g.senders]
        msgs = sum(r.count for r in got)
        accepted = sum(s.accepted for s in sent)
        notes = [n for n in (_errors(groups), _ccc_note(server, msgs)) if n]
    span = (max((r.last_ns for r in got), default=0)
            - min((s.first_ns for s in sent if s.first_ns), default=0)) / 1e9  # fmt: skip
    if isinstance(server, peers.CccServer) and span > 0:
        # One process, one GIL: the event loop and the committer take turns, so
        # their sum is what the relay can use of the machine, whatever its cores.
        # (Read a moment apart, in clock ticks: the difference can dip below 0.)
        others = max(0.0, server_cpu - meter.loop)
        notes.append(f"event loop {meter.loop / span * 100:.0f}% of a core, other threads "
                     f"{others / span * 100:.0f}%")  # fmt: skip
    if msgs < accepted:
        notes.insert(0, f"only {msgs:,} of {accepted:,} delivered")
    if system.server == "ccc-fed":
        notes.append("relay CPU: h1's, the sending relay")
    row = Row(case.name, system.name, msgs=msgs, size=case.size, other_cpu=other)
    if not msgs or not sent or not any(s.first_ns for s in sent):
        row.status = "failed: " + ("; ".join(notes) or "nothing delivered")
        return row
    row.seconds = span
    row.rate = msgs / span
    row.server_cpu = server_cpu / span * 100
    row.client_cpu = sum(g.cpu for g in groups) / span * 100
    if case.kind == "paced":
        assert case.rate is not None
        row.offered = case.rate
        samples = sorted(x for r in got for x in r.latencies)
        if samples:
            row.p50, row.p99, row.p999 = (percentile(samples, f) / 1e6 for f in (0.5, 0.99, 0.999))
            row.pmax = samples[-1] / 1e6
        notes.insert(0, f"offered {case.rate:,.0f}/s, delivered {row.rate:,.0f}/s")
        if row.rate < OVERLOADED * case.rate:
            notes.insert(1, "could not keep up: the latencies are the backlog")
    row.note = "; ".join(notes)
    return row


def drain(system: System, case: Case, scale: Scale, root: Path, procs: int) -> Row:
    """Fill an offline receiver's queue, read RSS, then time the receiver draining it."""
    senders, receivers = cases.topology("1to1")
    row = Row(case.name, system.name, size=case.size)
    count = scale.drain_count
    fill = SendPlan(case.size, window_for(scale, 1), count, seconds=600.0)
    with peers.start(system, root=root) as server:
        access = prepare(server, ["r0", "s0"], cases.pairs(senders))
        rss_before = memory.rss_bytes(server.pid)
        anon_before = memory.rss_anon_bytes(server.pid)
        t0 = time.monotonic()
        filled = cases.run_roles(access, senders, [], fill, procs=procs, timeout=600)
        fill_seconds = time.monotonic() - t0
        accepted = sum(s.accepted for g in filled for s in g.senders)
        time.sleep(0.5)  # let background work (commits, snapshots) settle before reading RSS
        rss_after = memory.rss_bytes(server.pid)
        anon_after = memory.rss_anon_bytes(server.pid)
        meter = Meter(server.pid).start()
        drained = cases.run_roles(access, [], receivers, fill, procs=procs, owed={0: accepted},
                                  timeout=120 + accepted / 500)  # fmt: skip
        server_cpu, other = meter.stop()
        notes = [n for n in (_errors(filled + drained),) if n]
    got = [r for g in drained for r in g.receivers]
    msgs = sum(r.count for r in got)
    row.msgs, row.other_cpu, row.rss = msgs, other, rss_after
    if not msgs:
        row.status = "failed: " + ("; ".join(notes) or "nothing drained")
        return row
    span = (max(r.last_ns for r in got) - min(r.opened_ns for r in got)) / 1e9
    row.seconds, row.rate = span, msgs / span
    row.server_cpu = server_cpu / span * 100
    row.client_cpu = sum(g.cpu for g in drained) / span * 100
    if msgs < accepted:
        notes.insert(0, f"only {msgs:,} of {accepted:,} drained")
    notes.insert(0, f"filled {accepted:,} at {accepted / fill_seconds:,.0f}/s; RSS "
                    f"{rss_before / report.MiB:.1f} MiB before fill")  # fmt: skip
    row.note = "; ".join(notes)
    row.extra = {"queued": accepted, "payload": accepted * case.size, "rss_before": rss_before,
                 "rss_growth": rss_after - rss_before,
                 "anon_growth": anon_after - anon_before}  # fmt: skip
    return row


def idle(system: System, case: Case, scale: Scale, root: Path) -> Row:
    agents = [f"idle{i}" for i in range(scale.idle_agents)]
    row = Row(case.name, system.name)
    with peers.start(system, root=root) as server:
        access = prepare(server, agents, [])
        before, after, connected = cases.run_loop(memory.idle_rss(access, server.pid, agents))
    row.msgs, row.rss = connected, after
    per = (after - before) / max(1, connected) / 1024
    row.note = (f"{connected:,} connections; RSS {before / report.MiB:.1f} MiB before, "
                f"{per:+.1f} KiB per connection")  # fmt: skip
    row.extra = {"rss_before": before}
    return row


def measure(system: System, case: Case, scale: Scale, root: Path, *, procs: int | None = None,
            profile: Path | None = None) -> Row:  # fmt: skip
    """One row; never raises for a system that is missing or fails (the row says so)."""
    why = peers.missing(system)
    if why is not None:
        return Row(case.name, system.name, status=why)
    if case.kind == "drain" and system.name == "nats-core":
        return Row(case.name, system.name, status="n/a: core pub/sub keeps nothing for an "
                                                  "absent subscriber")  # fmt: skip
    procs = scale.procs if procs is None else procs
    try:
        if case.kind == "idle":
            return idle(system, case, scale, root)
        if case.kind == "drain":
            return drain(system, case, scale, root, procs)
        if profile is not None:
            with memory.Profiler(profile):
                return flood_or_paced(system, case, scale, root, procs)
        return flood_or_paced(system, case, scale, root, procs)
    except Exception as exc:  # one failing row must not end the run
        return Row(case.name, system.name, status=f"failed: {type(exc).__name__}: {exc}")


# --- the whole run -------------------------------------------------------------


def config_settings() -> dict[str, Any]:
    """The settings ccc-statusd runs with in every measurement, as the daemon reads them."""
    from ccc_relay.cli.statusd import effective_settings
    from ccc_relay.policy.config import load_config

    with tempfile.TemporaryDirectory(prefix="ccc-bench-config-") as tmp:
        server = peers.CccServer(SYSTEMS["ccc"], root=Path(tmp))
        text = server.config_text()
        server.config_path.write_text(text)
        settings = effective_settings(load_config(server.config_path))
        server.stop()
    keep = ("max_message_size", "rate_limit", "agent_rate_limit", "pair_rate_limit",
            "global_rate_limit", "session_timeout", "require_session_auth", "hello_timeout",
            "audit.log_all_messages", "audit.retention")  # fmt: skip
    out: dict[str, Any] = {k: settings[k] for k in keep if k in settings}
    out["raised for the run"] = (f"rate_limit, agent_rate_limit, pair_rate_limit and "
                                 f"global_rate_limit to {peers.BENCH_RATE:,} msg/min "
                                 "(100,000 msg/s); nothing else changed")  # fmt: skip
    out["checks on"] = ("authenticated sessions (hello + 256-bit credential), schema "
                        "validation, default-deny policy (each pair allowed by the operator), "
                        "rate limits per session/agent/pair/global, anomaly rules, "
                        "sanitisation, hash-chained audit with bodies (committed with each "
                        "batch), SQLite WAL synchronous=FULL with group commit")  # fmt: skip
    out["config file"] = text.replace(str(server.dir), "$RUN_DIR")
    return out


def run_benchmark(scale: Scale, *, case_names: list[str] | None = None,
                  systems: list[str] | None = None, root: Path | None = None,
                  profile: Path | None = None, profile_case: str = "tput-1k",
                  echo: Any = print) -> dict[str, Any]:  # fmt: skip
    """Run the cases and return the report as a dict (also printed through ``echo``)."""
    cases.raise_nofile()
    names = case_names or list(scale.cases)
    chosen = [SYSTEMS[s] for s in (systems or list(SYSTEMS))]
    root = root or Path(tempfile.gettempdir())
    started = time.monotonic()
    versions = {s: peers.server_version(s) for s in ("redis", "nats")}
    info = report.machine(root, versions)
    info["other CPU before start"] = f"{quiet_sample():.0f}% of one core (1 s sample)"
    flush = disk.flush_latency(root)
    info["one fsync on that disk"] = flush.describe()
    settings = config_settings()
    echo(report.format_settings("Machine", info))
    echo(report.format_settings("ccc-statusd configuration (every measurement)", settings))
    echo(f"Scale: {scale.name}; client processes for floods and paced runs: "
         f"{scale.procs or 'none (the benchmark process)'}\n")  # fmt: skip
    rows: list[Row] = []
    for name in names:
        case = CASES[name]
        for system in chosen:
            if case.kind == "idle" and system.name not in IDLE_SYSTEMS:
                continue
            if case.federated and system.name not in FEDERATED_SYSTEMS:
                continue
            if not case.federated and system.name == "ccc-fed":
                continue
            wants_profile = profile if (name == profile_case and system.name == "ccc") else None
            row = measure(system, case, scale, root, profile=wants_profile)
            if system.name in TARGET_ROWS.get(name, ()) and scale.repeats > 1 and row.ok:
                row = median_row([row] + [measure(system, case, scale, root)
                                          for _ in range(scale.repeats - 1)])  # fmt: skip
            rows.append(row)
            shown = f"{row.rate:,.0f} msg/s" if row.rate else (
                f"{row.rss / report.MiB:.1f} MiB" if row.rss else row.status)  # fmt: skip
            echo(f"  {name:<11} {system.name:<14} {shown}")
    placement = placement_study(scale, names, chosen, root, echo) if scale.placement else []
    kinds = {n: CASES[n].kind for n in names}
    found = report.targets(rows, full_size=scale.name == "full", idle_agents=scale.idle_agents,
                           queued=scale.drain_count, flush=flush)  # fmt: skip
    echo("")
    echo(report.table(rows, kinds))
    echo("\n" + report.RATIO_HELP)
    echo("\nTargets\n" + report.format_targets(found))
    if placement:
        echo("\nClient placement (ccc and baseline, msg/s by client processes; 0 = the "
             "benchmark process)\n" + placement_table(placement))  # fmt: skip
    summary: list[tuple[str, float]] = []
    if profile is not None and profile.exists():
        summary = memory.top_self_frames(profile)
        echo(f"\nProfile of ccc-statusd during {profile_case} ({profile}): top self time\n"
             + memory.format_frames(summary))  # fmt: skip
    echo(f"\nTotal time {time.monotonic() - started:.0f} s")
    return report.as_json(
        rows, machine=info, config=settings, scale=scale.name, targets=[asdict(t) for t in found],
        placement=placement, profile=summary,
    )  # fmt: skip


def median_row(rows: list[Row]) -> Row:
    """The median of repeated measurements: the run with the median p99 (latency) or
    msg/s (the rest), its relay CPU per message replaced by the median of all runs'."""
    done = [r for r in rows if r.ok]
    if not done:
        return rows[0]
    paced = done[0].p99 is not None
    done.sort(key=lambda r: (r.p99 or 0.0) if paced else (r.rate or 0.0))
    middle = done[(len(done) - 1) // 2]
    costs = [c for c in (report.cpu_per_message(r) for r in done) if c is not None]
    values = ", ".join(f"{r.p99:.3f} ms" if paced else f"{r.rate:,.0f}" for r in done)
    what = f"{'p99' if paced else 'msg/s'}: {values}"
    if len(costs) == len(done):
        middle.extra["relay_us_per_msg"] = statistics.median(costs)
        what += "; relay µs/msg: " + ", ".join(f"{c:,.0f}" for c in costs)
    middle.extra["runs"] = len(done)
    middle.note = "; ".join(n for n in (f"median of {len(done)} runs ({what})",
                                        middle.note) if n)  # fmt: skip
    return middle


def placement_study(scale: Scale, names: list[str], chosen: list[System], root: Path,
                    echo: Any) -> list[dict[str, Any]]:  # fmt: skip
    """The many-sender cases again with 0, 2 and 3 client processes."""
    out = []
    for name in (n for n in PLACEMENT_CASES if n in names):
        for system in (s for s in chosen if s.name in PLACEMENT_SYSTEMS):
            for procs in PLACEMENTS:
                row = measure(system, CASES[name], scale, root, procs=procs)
                out.append({"case": name, "system": system.name, "procs": procs,
                            "rate": row.rate, "client_cpu": row.client_cpu,
                            "server_cpu": row.server_cpu, "status": row.status})  # fmt: skip
                echo(f"  placement {name:<11} {system.name:<9} procs={procs} "
                     f"{(row.rate or 0):,.0f} msg/s")  # fmt: skip
    return out


def placement_table(found: list[dict[str, Any]]) -> str:
    head = "| case | system | " + " | ".join(f"procs={p}" for p in PLACEMENTS) + " |"
    lines = [head, "|---|---|" + "--:|" * len(PLACEMENTS)]
    keys = list(dict.fromkeys((f["case"], f["system"]) for f in found))
    for case, system in keys:
        cells = []
        for procs in PLACEMENTS:
            f = next((x for x in found if (x["case"], x["system"], x["procs"]) ==
                      (case, system, procs)), None)  # fmt: skip
            if f is None or not f["rate"]:
                cells.append(f["status"] if f else "")
            else:
                cells.append(f"{f['rate']:,.0f} (relay {f['server_cpu']:.0f}%, "
                             f"clients {f['client_cpu']:.0f}%)")  # fmt: skip
        lines.append(f"| {case} | {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def epilog() -> str:
    return f"""\
runs:
  full (default)  every case; tput-1k and lat-1k of ccc, baseline-durable,
                  nats-js and redis-always three times each (the medians
                  count); 1,000 idle agents, 100,000 queued; the client
                  placement study. About 6-7 minutes on 2 cores.
  --quick         {" ".join(QUICK.cases)}, short and
                  small, each row once: under a minute. A smoke test: the
                  ratio targets are judged on single runs, the memory targets
                  not at all.

targets (ratios to rows of the same run; medians of 3 runs in a full run):
{report.describe_targets()}

Missing peers are rows that say how to install them; ./dev.sh bench installs
redis-server, nats-server and the bench extras first. Exit code 1 when a row failed.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=textwrap.fill(DESCRIPTION, 79),
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts, each row once: under a minute"
    )
    parser.add_argument("--cases", nargs="+", choices=list(CASES), metavar="CASE",
                        help=f"cases to run (default: all; quick: {' '.join(QUICK.cases)}); "
                             f"one of: {', '.join(CASES)}")  # fmt: skip
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=list(SYSTEMS),
        metavar="SYSTEM",
        help=f"systems to run (default: all): {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="record a py-spy profile (raw) of ccc-statusd during one case",
    )
    parser.add_argument(
        "--profile-case",
        choices=[n for n, c in CASES.items() if c.kind in ("flood", "paced")],
        default="tput-1k",
        metavar="CASE",
        help="the case --profile records (default: tput-1k)",
    )
    parser.add_argument(
        "--tmp",
        type=Path,
        metavar="DIR",
        help="where servers keep their state (default: the system temp dir)",
    )
    parser.add_argument(
        "--no-placement", action="store_true", help="skip the client placement study of a full run"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.no_placement:
        scale = replace(scale, placement=False)
    result = run_benchmark(scale, case_names=args.cases, systems=args.systems, root=args.tmp,
                           profile=args.profile, profile_case=args.profile_case)  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    failed = [r for r in result["rows"] if r["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
