"""Human-readable output: tables and message listings (rich, plain when piped)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ccc_relay.cli.terminal import shown
from ccc_relay.cli.when import duration as duration  # re-exported: tables show spans too
from ccc_relay.protocol.frames import Message


def console() -> Console:
    # Never interpret markup in data: bodies and names come from agents.
    return Console(markup=False, emoji=False, highlight=False, soft_wrap=True)


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def online(connections: int | bool) -> str:
    """An agent's online state, the one way every table shows it: ``yes (2)`` or ``no``."""
    if isinstance(connections, bool):
        return "yes" if connections else "no"
    return f"yes ({connections})" if connections else "no"


def print_status(data: dict[str, Any]) -> None:
    out = console()
    failure = shown(str(data["failure"]), one_line=True)
    state = "accepting" if data["accepting"] else f"NOT ACCEPTING: {failure}"
    out.print(f"ccc-statusd running, pid {data['pid']}, up {duration(data['uptime'])}, {state}")
    out.print(f"socket {data['socket']}  state {data['state_dir']}")
    counters = data["counters"]
    refused = ", ".join(f"{k} {v}" for k, v in sorted(counters["refused"].items())) or "none"
    out.print(
        f"messages: accepted {counters['accepted']}, delivered {counters['delivered']}, "
        f"acked {counters['acked']}; refused: {refused}"
    )
    if "slow_commits" in counters:
        out.print(
            f"store: {counters['commits']} commits; {counters['slow_commits']} of their "
            f"flushes took {counters['slow_commit_ms']:g} ms or more, the longest "
            f"{counters['longest_commit_ms']:g} ms"
        )
    held = data.get("held")
    out.print(
        f"held for approval: {held if held is not None else 'unknown'}; "
        f"anomalies: {data.get('anomalies', 0)}"
    )
    sandbox = data.get("sandbox", {})
    if sandbox:
        out.print(f"sandbox: {sandbox.get('landlock')}")
    print_audit_state(out, data)
    table = Table(
        "agent", "online", "queued", "scheduled", "state", title=f"{len(data['agents'])} agents"
    )
    for agent in data["agents"]:
        flag = Text("QUARANTINED", style="bold red") if agent.get("quarantined") else Text("ok")
        table.add_row(
            Text(agent["name"]),
            online(agent["online"]),
            str(agent["queued"]),
            str(agent.get("scheduled", 0)),
            flag,
        )
    out.print(table)
    for alert in data.get("alerts", [])[-5:]:
        out.print(
            Text(
                f"alert {when(alert['ts'])} {alert['agent']}: {alert['rule']} "
                f"({alert['value']:g} >= {alert['threshold']:g})",
                style="yellow",
            )
        )


def print_audit_state(out: Console, data: dict[str, Any]) -> None:
    """The audit's seal key and its unacknowledged tamper alarms (loud: they need a human)."""
    seal = data.get("audit_seal")
    if seal and "problem" in seal:
        out.print(Text(f"audit seal key: {seal['problem']}", style="bold red"))
    elif seal:
        exported = (
            "exported" if seal["exported"] else "NOT EXPORTED: run 'ccc audit seal-key export'"
        )
        style = "" if seal["exported"] else "yellow"
        out.print(Text(f"audit seal key {seal['key_id']}, epoch {seal['epoch']}, {exported}",
                       style=style))  # fmt: skip
    for alarm in data.get("audit_alarms") or []:
        out.print(
            Text(
                f"AUDIT TAMPER ALARM at seq {alarm.get('seq')} ({when(alarm.get('ts'))}): "
                f"{alarm.get('detail')} -- investigate, then 'ccc audit acknowledge "
                f"{alarm.get('seq')}'",
                style="bold red",
            )
        )


def print_sessions(rows: Iterable[dict[str, Any]]) -> None:
    table = Table("session", "agent", "peer pid/uid/gid", "since", "expires", "seq", "in flight")
    for r in rows:
        table.add_row(
            Text(str(r["session"])),
            Text(str(r["agent"])),
            f"{r['peer_pid']}/{r['peer_uid']}/{r['peer_gid']}",
            when(r["connected_at"]),
            when(r["expires_at"]),
            str(r["last_seq"]),
            str(r["inflight"]),
        )
    console().print(table)


def print_agents(rows: Iterable[dict[str, Any]]) -> None:
    table = Table("agent", "created", "bound uid/gid", "online", "queued", "scheduled")
    for r in rows:
        uid = "-" if r["uid"] is None else r["uid"]
        gid = "-" if r["gid"] is None else r["gid"]
        bound = f"{uid}/{gid}"
        table.add_row(
            Text(r["name"]),
            when(r["created"]),
            bound,
            online(r["online"]),
            str(r["queued"]),
            str(r.get("scheduled", 0)),
        )
    console().print(table)


def print_held(rows: Iterable[dict[str, Any]]) -> None:
    table = Table("id", "from", "to", "sent", "size", "body")
    for r in rows:
        preview = r["body"] if len(r["body"]) <= 60 else r["body"][:57] + "..."
        table.add_row(
            Text(r["id"]),
            Text(r["from"]),
            Text(r["to"]),
            when(r["sent_at"]),
            str(r["size"]),
            Text(shown(preview, one_line=True)),
        )
    console().print(table)


def print_messages(messages: Iterable[Message]) -> None:
    out = console()
    for m in messages:
        header = f"--- {m.id} from {m.sender} at {when(m.sent_at)}"
        if m.thread:
            header += f" thread {m.thread}"
        if m.reply_to:
            header += f" reply to {m.reply_to}"
        out.print(Text(shown(header, one_line=True), style="bold"))
        out.print(Text(shown(m.body)))
