"""``ccc policy graph``: who may talk to whom, as a picture.

The DOT text is built by a pure function (tested as text); SVG and PNG come
from Graphviz's ``dot`` when it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

import click

from ccc_relay.cli.common import (
    EXIT_CONFIG,
    EXIT_USAGE,
    OperatorClient,
    config_option,
    fail,
    handle_errors,
    load_host_config,
)


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_dot(rules: Iterable[Mapping[str, str]], agents: Iterable[Mapping[str, Any]]) -> str:
    """A Graphviz digraph: allowed pairs solid, held pairs dashed, quarantined agents red."""
    lines = [
        "digraph ccc_policy {",
        '  graph [rankdir=LR, label="ccc-relay policy (default deny)", labelloc=t];',
        '  node [shape=box, style="rounded", fontname="sans-serif"];',
        '  edge [fontname="sans-serif", fontsize=10];',
    ]
    for agent in sorted(agents, key=lambda a: a["name"]):
        attrs = []
        if agent.get("quarantined"):
            attrs += [
                'color="red"',
                'style="rounded,filled"',
                'fillcolor="mistyrose"',
                'xlabel="quarantined"',
            ]
        elif agent.get("online"):
            attrs += ["penwidth=2", 'xlabel="online"']
        lines.append(
            f"  {_quote(agent['name'])}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";"
        )
    seen: set[tuple[str, str]] = set()
    for rule in sorted(rules, key=lambda r: (r["from"], r["to"])):
        pair = (rule["from"], rule["to"])
        if pair in seen:
            continue
        seen.add(pair)
        style = (
            ' [style=dashed, color="darkorange", label="hold"]' if rule["action"] == "hold" else ""
        )
        lines.append(f"  {_quote(rule['from'])} -> {_quote(rule['to'])}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


@click.command("graph")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["dot", "svg", "png"]),
    default="dot",
    show_default=True,
    help="svg and png need Graphviz (Debian: graphviz).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE.")
@config_option
@handle_errors
def graph(fmt: str, output: str | None, config_path: str | None) -> None:
    """Draw who may talk to whom (held pairs dashed, quarantined agents red)."""
    config = load_host_config(config_path)
    admin = OperatorClient(config)
    rules = admin.request("policy_show")
    agents = admin.request("status")["agents"]
    dot = policy_dot(rules, agents)
    if fmt == "dot":
        data = dot.encode()
    else:
        binary = shutil.which("dot")
        if binary is None:
            fail(
                f"--format {fmt} needs Graphviz's 'dot'; install it (apt-get install graphviz) "
                "or use --format dot",
                EXIT_CONFIG,
            )
        data = subprocess.run(
            [binary, f"-T{fmt}"], input=dot.encode(), capture_output=True, check=True, timeout=60
        ).stdout
    if output:
        with open(output, "wb") as f:
            f.write(data)
        click.echo(f"wrote {output}")
    elif fmt == "png":
        fail("PNG is binary: use -o FILE", EXIT_USAGE)
    else:
        click.echo(data.decode(), nl=False)
