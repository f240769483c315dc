"""``ccc top``: a live view of the relay, refreshed in place (rich)."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ccc_relay.cli.common import OperatorClient, config_option, handle_errors, load_host_config
from ccc_relay.cli.render import console, duration, online, when


def render(data: dict[str, Any], previous: dict[str, Any] | None, elapsed: float) -> Group:
    """One screen of ``top`` from two status snapshots ``elapsed`` seconds apart."""
    before = {a["name"]: a for a in (previous or {}).get("agents", [])}
    counters = data["counters"]
    refused = ", ".join(f"{k} {v}" for k, v in sorted(counters["refused"].items())) or "none"
    state = "accepting" if data["accepting"] else f"NOT ACCEPTING: {data['failure']}"
    header = Text(
        f"ccc-statusd pid {data['pid']}  up {duration(data['uptime'])}  {state}\n"
        f"accepted {counters['accepted']}  delivered {counters['delivered']}  "
        f"acked {counters['acked']}  held {data.get('held')}  "
        f"anomalies {data.get('anomalies', 0)}\n"
        f"refused: {refused}"
    )
    table = Table("agent", "online", "sent/s", "recv/s", "queued", "refused", "state", expand=True)
    for agent in data["agents"]:
        old = before.get(agent["name"], {})

        def rate(key: str, agent: dict[str, Any] = agent, old: dict[str, Any] = old) -> str:
            if not previous or elapsed <= 0:
                return "-"
            return f"{(agent.get(key, 0) - old.get(key, 0)) / elapsed:.1f}"

        state_text = (
            Text("QUARANTINED", style="bold red")
            if agent.get("quarantined")
            else Text("ok", style="green")
        )
        table.add_row(
            Text(agent["name"]),
            online(agent["online"]),
            rate("sent"),
            rate("delivered"),
            str(agent["queued"]),
            str(agent.get("refused", 0)),
            state_text,
        )
    alerts = Table("time", "agent", "rule", "value", expand=True, title="recent alerts")
    for alert in reversed(data.get("alerts", [])[-8:]):
        alerts.add_row(
            when(alert["ts"]),
            Text(alert["agent"]),
            alert["rule"],
            f"{alert['value']:g} >= {alert['threshold']:g}",
        )
    return Group(Panel(header, title="ccc top"), table, alerts)


@click.command()
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one screen and exit (for scripts and logs).")
@config_option
@handle_errors
def top(interval: float, once: bool, config_path: str | None) -> None:
    """A live view: agents, online state, rates, queues, refusals, alerts. Ctrl-C quits."""
    config = load_host_config(config_path)
    admin = OperatorClient(config)
    data = admin.request("status")
    if once:
        console().print(render(data, None, 0.0))
        return
    previous, taken = data, time.monotonic()
    try:
        with Live(
            render(data, None, 0.0), console=console(), refresh_per_second=4, screen=False
        ) as live:
            while True:
                time.sleep(interval)
                data = admin.request("status")
                now = time.monotonic()
                live.update(render(data, previous, now - taken))
                previous, taken = data, now
    except KeyboardInterrupt:
        pass
