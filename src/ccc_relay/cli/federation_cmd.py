"""``ccc federation status``: how this relay's link to other relays stands.

Asked of the running relay over the admin socket (``federation_status``): the NATS
server it is connected to, the stream, how far behind this relay's consumer is
(messages for it waiting in the stream), and, per destination host, the messages
stored here that the stream has not acknowledged yet and how old the oldest is.
"""

from __future__ import annotations

from typing import Any

import click

from ccc_relay.cli.common import (
    EXIT_CONFLICT,
    OperatorClient,
    config_option,
    emit_json,
    fail,
    handle_errors,
    load_host_config,
)
from ccc_relay.cli.terminal import shown
from ccc_relay.policy.units import format_size


@click.group()
def federation() -> None:
    """Relays on other hosts: the NATS link, the stream, lag and queues per host.

    Set up in the config's federation: section (docs/federation.md).
    """


@federation.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@config_option
@handle_errors
def federation_status(as_json: bool, config_path: str | None) -> None:
    """Is the link to NATS up, how far behind is this relay, what waits for each host.

    Exits 7 when this relay does not federate (no federation: section), 3 when
    it is not running.

    \b
    Example:
      ccc federation status
      ccc federation status --json | jq .outbound.hosts
    """
    config = load_host_config(config_path)
    report: dict[str, Any] = OperatorClient(config).request("federation_status")
    if not report.get("federating"):
        where = str(config.source) if config.source else "the embedded defaults"
        fail(
            f"this relay does not federate (no federation: section in {where}); "
            "docs/federation.md shows how to add one",
            EXIT_CONFLICT,
            code="not_federating",
        )
    if as_json:
        emit_json(report)
        return
    for line in describe(report):
        click.echo(line)


def describe(report: dict[str, Any]) -> list[str]:
    """The report in lines for a person."""
    lines = []
    if report["connected"]:
        state = f"connected to {report['server']}"
    else:
        state = "NOT CONNECTED (remote sends are stored here and forwarded when it is back)"
    lines.append(f"federation: {report['host']}, {state}; reconnects {report['reconnects']}")
    stream = report.get("stream") or {}
    if stream.get("messages") is not None:
        size = format_size(int(stream.get("bytes") or 0))
        replicas = stream.get("replicas")
        lines.append(
            f"stream {stream['name']}: {stream['messages']} message(s), {size}, "
            f"{replicas} replica(s)"
        )
    inbound = report["inbound"]
    if inbound.get("lag") is not None:
        lines.append(
            f"inbound ({inbound['consumer']}): lag {inbound['lag']}, "
            f"unacked {inbound['unacked']}, redelivered {inbound['redelivered']}"
        )
    else:
        lines.append(f"inbound ({inbound['consumer']}): not known yet (never connected)")
    out = report["outbound"]
    loaded = "" if out["outbox_loaded"] else " (outbox still loading)"
    lines.append(
        f"outbound: {out['queued']} queued{loaded}; published {out['published']}, "
        f"duplicates {out['duplicates']}, failures {out['publish_failures']}"
    )
    for host, queue in out["hosts"].items():
        age = queue["oldest_age"]
        oldest = f", oldest {_age(age)}" if queue["queued"] and age is not None else ""
        lines.append(f"  {host}: {queue['queued']} queued{oldest}")
    if report.get("last_error"):
        lines.append(f"last error: {shown(report['last_error'], one_line=True)}")
    return lines


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
