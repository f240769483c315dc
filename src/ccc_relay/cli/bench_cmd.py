"""``ccc bench``: run the benchmark suite of a source checkout, as ``python -m benchmarks.run``.

The suite lives in ``benchmarks/`` beside ``src/`` and is not installed with the
package (it drives redis-server, nats-server and their client libraries). This
command only finds that directory -- ``--source``, else the current directory or
one above it, else the checkout this package was installed from in editable
mode -- and hands its options to ``benchmarks.run.main`` unchanged, so both
entry points run the same thing.

Exit codes: 0 every row measured, 1 some row failed, 2 usage, 4 no checkout found.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from ccc_relay.cli.common import EXIT_CONFIG, fail

ENTRY = Path("benchmarks") / "run.py"


def find_checkout(start: Path | None = None) -> Path | None:
    """The nearest directory holding ``benchmarks/run.py``, or None."""
    here = (start or Path.cwd()).resolve()
    installed_from = Path(__file__).resolve().parents[3]  # <checkout>/src/ccc_relay/cli/
    for candidate in (here, *here.parents, installed_from):
        if (candidate / ENTRY).is_file():
            return candidate
    return None


def _words(values: tuple[str, ...]) -> list[str]:
    return [w for v in values for w in v.replace(",", " ").split()]


@click.command("bench")
@click.option("--quick", is_flag=True, help="Small counts: about 30 s instead of about 6 min.")
@click.option("--cases", "case_names", multiple=True, metavar="CASE[,CASE...]",
              help="Cases to run (default: all); see --list.")  # fmt: skip
@click.option("--systems", multiple=True, metavar="SYSTEM[,SYSTEM...]",
              help="Systems to compare (default: all; missing ones say so).")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Also write the report as JSON to this file.")  # fmt: skip
@click.option("--profile", type=click.Path(dir_okay=False),
              help="Record a py-spy profile of ccc-statusd during one case in FILE.")  # fmt: skip
@click.option("--profile-case", metavar="CASE", help="The case --profile records (tput-1k).")
@click.option("--tmp", type=click.Path(file_okay=False),
              help="Where the servers keep their state (default: the temp dir).")  # fmt: skip
@click.option("--no-placement", is_flag=True, help="Skip the client placement study.")
@click.option("--source", type=click.Path(file_okay=False, exists=True),
              help="The source checkout holding benchmarks/ (default: found).")  # fmt: skip
@click.option("--list", "list_only", is_flag=True, help="List the cases and systems, then exit.")
def bench(quick: bool, case_names: tuple[str, ...], systems: tuple[str, ...],
          json_path: str | None, profile: str | None, profile_case: str | None,
          tmp: str | None, no_placement: bool,
          source: str | None, list_only: bool) -> None:  # fmt: skip
    """Benchmark the relay end to end against a minimal relay, Redis streams and NATS.

    Starts a real ccc-statusd per measurement (every check on, rate limits
    raised), the minimal relay with and without ccc's durability (the durable
    floor), and redis-server / nats-server where installed, all on Unix
    sockets or 127.0.0.1 in temp dirs; prints the machine, the configuration,
    one table with ratios and the targets, met or not.
    """
    root = Path(source).resolve() if source else find_checkout()
    if root is None or not (root / ENTRY).is_file():
        fail("the benchmarks ship with the source tree, not the installed package: run this in "
             "a ccc-relay checkout or pass --source DIR", EXIT_CONFIG)  # fmt: skip
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    run = importlib.import_module("benchmarks.run")
    if list_only:
        click.echo("cases:   " + " ".join(run.CASES))
        click.echo("systems: " + " ".join(run.SYSTEMS))
        return
    argv: list[str] = ["--quick"] if quick else []
    if case_names:
        argv += ["--cases", *_words(case_names)]
    if systems:
        argv += ["--systems", *_words(systems)]
    for flag, value in (("--json", json_path), ("--profile", profile),
                        ("--profile-case", profile_case), ("--tmp", tmp)):  # fmt: skip
        if value:
            argv += [flag, value]
    if no_placement:
        argv.append("--no-placement")
    sys.exit(run.main(argv))
