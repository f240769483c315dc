"""What the parts of ccc-relay's work cost: one case, with parts switched off.

Rule: analysis only. No row here is ever judged against a target, and the
table in ``docs/performance.md`` always runs with every check on. Each round
runs every rung once on a fresh server, the rungs interleaved so that a noisy
minute hits all of them: ccc with every check on, without its sanitiser, and
without the bodies in its audit lines too; then the durable floor
(``baseline-durable``), alone and with ccc-relay's own sanitiser and audit
lines added; and Redis with ``appendfsync always``, for a ratio to a broker.
The table gives each rung's msg/s per round, the median relay CPU per message
(which moves much less than msg/s on a shared machine) and the median msg/s as
a ratio to Redis's.

Run: ``python -m benchmarks.ladder [--rounds 3] [--case tput-1k]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from benchmarks import run
from benchmarks.cases import CASES
from benchmarks.peers import SYSTEMS, System
from benchmarks.report import Row, cpu_per_message

_CCC = SYSTEMS["ccc"]
REFERENCE = "Redis streams, appendfsync always"
RUNGS: tuple[tuple[str, System], ...] = (
    ("every check on (the benchmark's config)", _CCC),
    ("sanitize: false (the audit copy of each body still loses its secrets)",
     replace(_CCC, sanitize=False)),
    ("sanitize: false, log_all_messages: false (the audit keeps size and SHA-256)",
     replace(_CCC, sanitize=False, audit_bodies=False)),
    ("the durable floor (baseline-durable), for comparison", SYSTEMS["baseline-durable"]),
    ("the durable floor plus ccc's sanitiser and an audit line per message",
     replace(SYSTEMS["baseline-durable"], name="baseline-durable-checked", floor_checks=True)),
    (REFERENCE, SYSTEMS["redis-always"]),
)  # fmt: skip


def climb(rounds: int, case_name: str, scale: run.Scale, root: Path,
          echo: Callable[[str], object] = print) -> dict[str, list[Row]]:  # fmt: skip
    """Every rung ``rounds`` times, interleaved; the rows by rung."""
    case = CASES[case_name]
    found: dict[str, list[Row]] = {name: [] for name, _ in RUNGS}
    for index in range(rounds):
        for name, system in RUNGS:
            row = run.measure(system, case, scale, root)
            found[name].append(row)
            shown = f"{row.rate:,.0f} msg/s" if row.ok and row.rate else row.status
            echo(f"  round {index + 1}: {name}: {shown}")
    return found


def _median_rate(rows: list[Row]) -> float | None:
    rates = [r.rate for r in rows if r.ok and r.rate]
    return statistics.median(rates) if rates else None


def table(found: dict[str, list[Row]]) -> str:
    """One line per rung: msg/s per round, the median CPU per message, and the median
    msg/s as a ratio to the reference rung's (Redis ``appendfsync always``)."""
    lines = ["| configuration | msg/s (each round) | relay µs/msg (median) | x Redis always |",
             "|---|--:|--:|--:|"]  # fmt: skip
    reference = _median_rate(found.get(REFERENCE, []))
    for name, rows in found.items():
        rates = " / ".join(f"{r.rate:,.0f}" if r.ok and r.rate else r.status for r in rows)
        costs = [c for c in (cpu_per_message(r) for r in rows if r.ok) if c is not None]
        median = f"{statistics.median(costs):.0f}" if costs else ""
        rate = _median_rate(rows)
        ratio = f"{rate / reference:.2f}x" if rate and reference else ""
        lines.append(f"| {name} | {rates} | {median} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ladder",
        description="What the parts of ccc-relay's work cost: one case with the sanitiser "
        "and the audit's bodies switched off, beside the durable floor alone and with ccc's "
        "sanitiser and audit lines added (analysis only, never a target).",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default: 3)")
    parser.add_argument(
        "--case",
        default="tput-1k",
        choices=[n for n, c in CASES.items() if c.kind == "flood"],
        help="the flood to run (default: tput-1k)",
    )
    parser.add_argument("--quick", action="store_true", help="the quick scale's short floods")
    parser.add_argument("--tmp", type=Path, metavar="DIR", help="where servers keep their state")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    scale = run.QUICK if args.quick else run.FULL
    with tempfile.TemporaryDirectory(prefix="ccc-ladder-", dir=args.tmp) as tmp:
        found = climb(args.rounds, args.case, scale, Path(tmp))
    print(f"\n{args.case}, {args.rounds} round(s), {scale.name} scale\n" + table(found))
    failed = any(not r.ok for rows in found.values() for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
