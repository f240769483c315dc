"""What ``ccc federation status`` shows: the link, the stream, the lag, the queues per host.

Read from the running relay only -- the link's own figures (``FederationLink.status``,
refreshed every few seconds while connected) and the publisher's queue, which holds
every outbox row not yet acked by the stream -- so asking never touches NATS or the
store and answers the same whether the link is up or down.
"""

from __future__ import annotations

from typing import Any, Protocol

from ccc_relay.policy.config_types import FederationConfig


class FederationView(Protocol):
    """What the report reads of ``daemon.federation.FederationRunner``."""

    config: FederationConfig

    def status(self) -> dict[str, object]: ...

    def queues(self, now: float) -> dict[str, tuple[int, float]]: ...


def federation_report(runner: FederationView | None, now: float) -> dict[str, Any]:
    """One JSON object; ``{"federating": False}`` for a relay without federation. Raises nothing."""
    if runner is None:
        return {"federating": False}
    config = runner.config
    link: dict[str, Any] = dict(runner.status())
    consumer: dict[str, Any] = dict(link.get("consumer") or {})
    waiting = runner.queues(now)
    hosts: dict[str, dict[str, Any]] = {
        peer: {"queued": 0, "oldest_age": None} for peer in config.peers
    }
    for host, (queued, oldest) in waiting.items():
        hosts[host] = {"queued": queued, "oldest_age": round(oldest, 3)}
    return {
        "federating": True,
        "host": config.host,
        "connected": bool(link.get("connected")),
        "server": link.get("server"),
        "servers": list(config.servers),
        "reconnects": link.get("reconnects", 0),
        "last_error": link.get("last_error"),
        "max_payload": link.get("max_payload"),
        "stream": link.get("stream"),
        "outbound": {
            "queued": sum(q for q, _ in waiting.values()),
            "oldest_age": round(max((a for _, a in waiting.values()), default=0.0), 3) or None,
            "outbox_loaded": bool(link.get("outbox_loaded")),
            "published": link.get("published", 0),
            "duplicates": link.get("duplicates", 0),
            "publish_failures": link.get("publish_failures", 0),
            "hosts": dict(sorted(hosts.items())),
        },
        "inbound": {
            "consumer": consumer.get("name"),
            "lag": consumer.get("num_pending"),
            "unacked": consumer.get("num_ack_pending"),
            "redelivered": consumer.get("num_redelivered"),
        },
        "peers": sorted(config.peers),
    }
