"""Watching and steering the daemon from the admin plane: its status, its live
sessions, reloading its configuration and shutting it down.

A mixin of ``AdminConnection``: it uses the connection's relay, peer,
sandbox description, shutdown event and ``reload`` hook.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ccc_relay.daemon.committer import SLOW_COMMIT
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.store import StoreFailure

if TYPE_CHECKING:
    from ccc_relay.daemon.relay import Relay


class AdminStatus:
    # Provided by AdminConnection.
    relay: Relay
    peer: tuple[int, int, int]
    shutdown: asyncio.Event
    sandbox: dict[str, Any]
    reload: Callable[[], dict[str, Any]] | None

    async def _report_status(self) -> dict[str, Any]:
        relay = self.relay
        try:
            depths, held = await relay.committer.read(lambda s: (s.queue_depths(), s.held_count()))
        except StoreFailure:
            depths, held = {}, None  # status must still answer when the store has failed
        return {
            "pid": os.getpid(),
            "uptime": round(relay.clock() - relay.started_at, 3),
            "socket": str(relay.config.socket_path),
            "state_dir": str(relay.config.state_dir),
            "accepting": relay.committer.failure is None,
            "uid": os.getuid(),
            "sandbox": self.sandbox,
            "failure": relay.committer.failure,
            "connections": relay.connections,
            "held": held,
            "anomalies": relay.counters.anomalies,
            "alerts": list(relay.counters.alerts)[-20:],
            "agents": [
                {
                    "name": name,
                    "online": len(relay.online.get(name, ())),
                    "queued": depths.get(name, 0),
                    "quarantined": relay.agents[name].quarantined,
                    **{
                        k: relay.activity[name][k] if name in relay.activity else 0
                        for k in ("sent", "delivered", "refused")
                    },
                    "sessions": [c.session_id for c in relay.online.get(name, ())],
                }
                for name in sorted(relay.agents)
            ],
            "counters": {
                "accepted": relay.counters.accepted,
                "delivered": relay.counters.delivered,
                "acked": relay.counters.acked,
                "held": relay.counters.held,
                "refused": dict(relay.counters.refused),
                "commits": relay.committer.batches,
                "slow_commits": relay.committer.slow_commits,
                "slow_commit_ms": SLOW_COMMIT * 1000,
                "longest_commit_ms": round(relay.committer.longest_commit * 1000, 3),
            },
        }

    def _list_sessions(self) -> list[dict[str, Any]]:
        return [
            {
                "session": c.session_id,
                "agent": c.agent,
                "peer_pid": c.peer[0],
                "peer_uid": c.peer[1],
                "peer_gid": c.peer[2],
                "connected_at": c.connected_at,
                "expires_at": c.session.expires if c.session else None,
                "last_seq": c.session.last_seq if c.session else 0,
                "subscribed": c.subscribed,
                "inflight": len(c.inflight),
            }
            for conns in self.relay.online.values()
            for c in conns
        ]

    def _reload_config(self) -> dict[str, Any]:
        if self.reload is None:
            raise ProtocolError(ErrorCode.INVALID, "this relay cannot reload")
        return self.reload()

    def _shut_down(self) -> dict[str, Any]:
        self.relay.audit("admin_shutdown", by_uid=self.peer[1])
        self.shutdown.set()
        return {"stopping": True}
