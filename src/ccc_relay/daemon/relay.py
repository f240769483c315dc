"""The relay's state and its decisions: identities, policy, limits, routing.

Connections (``connection.py``) parse frames and call in here; everything that
decides -- may this agent authenticate, may it send this (``admission.py``),
where does a committed message go (``routing.py``) -- lives in this one class
and its mixins. Here: minting messages, auditing and counting refusals,
anomalies and quarantine, handing messages to the committer, and reloading
the policy. Time comes from the injected ``clock`` so expiry and rate limits
are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from ccc_relay.audit.body import body_fields
from ccc_relay.audit.log import AuditRecord
from ccc_relay.daemon.admission import Admission
from ccc_relay.daemon.committer import Committer, Job
from ccc_relay.daemon.routing import Routing
from ccc_relay.daemon.signing import MessageSigner
from ccc_relay.policy.acl import Policy
from ccc_relay.policy.anomaly import Alert, AnomalyDetector
from ccc_relay.policy.config import Config, Rule
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.store import AgentRecord, Store, StoredMessage, StoreFailure

log = logging.getLogger("ccc_relay.daemon")

OPERATOR = "operator"  # the sender name of messages the operator writes
RELAY = "relay"  # the sender name of the relay's own notices (e.g. a rejected message)
RECENT_ALERTS = 100  # anomaly alerts kept for status and top


def message_id(prefix: str, delivery: int) -> str:
    """``m_`` + the run's 8-character prefix + the delivery number in hex."""
    return f"m_{prefix}{delivery:x}"


@dataclass(slots=True)
class Counters:
    accepted: int = 0
    delivered: int = 0
    acked: int = 0
    held: int = 0
    anomalies: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_ALERTS))


class Relay(Admission, Routing):
    def __init__(
        self,
        config: Config,
        store: Store,
        committer: Committer,
        *,
        clock: Callable[[], float] = time.time,
        signer: MessageSigner | None = None,
    ) -> None:
        self.config = config
        self.signer = signer or MessageSigner.load_or_create(config.state_dir)
        self.limits = config.limits
        self.committer = committer
        self.clock = clock
        self.started_at = clock()
        self.agents: dict[str, AgentRecord] = {a.name: a for a in store.agents()}
        self._db_rules = [Rule(s, r, a) for s, r, a in store.rules()]
        self.policy = Policy.from_rules([*config.rules, *self._db_rules])
        self._init_admission()
        self.connections = 0
        self.unauthenticated = 0
        self.counters = Counters()
        # Per agent: sent (committed), delivered (pushed to it), refused.
        self.activity: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.anomaly = AnomalyDetector(config.anomaly)
        # Set by the server when per-agent sockets are on.
        self.on_agent_added: Callable[[str], Awaitable[None]] | None = None
        self.on_agent_removed: Callable[[str], object] | None = None
        self._last_delivery = store.max_delivery()
        self._init_routing()
        # Ids are this run's random prefix plus the delivery number: unique
        # across restarts, and minted without a syscall per message.
        self._id_prefix = secrets.token_urlsafe(6)  # 8 characters

    def new_message(
        self,
        sender: str,
        recipient: str,
        body: str,
        *,
        thread: str | None = None,
        reply_to: str | None = None,
        deliver_at: float | None = None,
    ) -> StoredMessage:
        """A message with the next delivery number (numbers follow submit order,
        which is commit order) and an id derived from it."""
        self._last_delivery += 1
        delivery = self._last_delivery
        return StoredMessage(
            id=message_id(self._id_prefix, delivery),
            sender=sender,
            recipient=recipient,
            body=body,
            sent_at=self.clock(),
            thread=thread,
            reply_to=reply_to,
            deliver_at=deliver_at,
            delivery=delivery,
        )

    # --- audit ----------------------------------------------------------------

    def record(self, event: str, **fields: Any) -> AuditRecord:
        return AuditRecord(self.clock(), event, fields)

    def audit(self, event: str, **fields: Any) -> None:
        """Write an audit line that nothing waits for."""
        try:
            self.committer.submit(Job(audit=[self.record(event, **fields)]), want_result=False)
        except StoreFailure:
            log.error("audit line lost, the store has failed: %s %s", event, fields)

    def refuse(
        self, who: str | None, exc: ProtocolError, *, claimed: str | None = None, **fields: Any
    ) -> None:
        """Count, audit and watch a refusal.

        ``who`` is the authenticated agent; before authentication ``claimed``
        is the name the peer claimed, recorded as such and counted against that
        name's failed-auth rule (never quarantining on it by default: anyone can
        claim a name).
        """
        self.counters.refused[exc.code.value] += 1
        name = who or claimed
        if name is not None and name in self.agents:
            self.activity[name]["refused"] += 1
        if who is None and claimed is not None:
            fields["claimed"] = claimed
        self.audit("refused", agent=who, code=exc.code.value, reason=exc.message, **fields)
        if name is not None and name in self.agents:
            self.alert(self.anomaly.refused(name, exc.code.value, self.clock()))

    # --- anomalies and quarantine -------------------------------------------

    def alert(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.counters.anomalies += 1
            fields = {
                "agent": alert.agent,
                "rule": alert.rule,
                "value": alert.value,
                "threshold": alert.threshold,
                "window": alert.window,
                "quarantine": alert.quarantine,
            }
            self.counters.alerts.append({"ts": self.clock(), **fields})
            self.audit("anomaly", **fields, detail=alert.describe())
            log.warning("anomaly: %s", alert.describe())
            if alert.quarantine:
                self.quarantine(alert.agent, f"anomaly rule {alert.rule}: {alert.describe()}")

    def quarantine(self, agent: str, reason: str) -> None:
        record = self.agents.get(agent)
        if record is None or record.quarantined:
            return
        self.agents[agent] = msgspec.structs.replace(record, quarantined=reason)
        self.committer.submit(
            Job(
                run=lambda s: s.set_quarantine(agent, reason),
                audit=[self.record("quarantined", agent=agent, reason=reason)],
            ),
            want_result=False,
        )
        self.close_agent(agent, ErrorCode.QUARANTINED, f"agent quarantined: {reason}")

    # --- committing -----------------------------------------------------------

    def enqueue(
        self,
        message: StoredMessage,
        *,
        seq_update: tuple[str, int] | None = None,
        hold: bool = False,
        **audit_fields: Any,
    ) -> asyncio.Future[Any]:
        """Make a message durable; the future resolves after COMMIT.

        With ``hold`` it waits in the held table for an operator's decision
        instead of the delivery queue.

        Raises StoreFailure when the store has already failed.
        """
        options = self.limits.sanitize
        scrubbed = options.enabled and options.redact_secrets and message.sender in self.agents
        fields = {
            "id": message.id,
            "from": message.sender,
            "to": message.recipient,
            **body_fields(
                message.body, self.config.audit.log_all_messages, secrets_removed=scrubbed
            ),
            **audit_fields,
        }
        if message.thread:
            fields["thread"] = message.thread
        if message.deliver_at:
            fields["deliver_at"] = message.deliver_at
        if hold:
            job = Job(
                audit=[self.record("held", **fields)],
                run=lambda s: s.hold(message),
                seq_update=seq_update,
            )
        else:
            job = Job(
                audit=[self.record("accepted", **fields)], message=message, seq_update=seq_update
            )
        future = self.committer.submit(job)
        assert future is not None
        if message.sender in self.agents:
            self.alert(self.anomaly.accepted(message.sender, message.recipient, self.clock()))
        return future

    def committed(self, message: StoredMessage) -> None:
        """A message is durable: count it and route it."""
        self.counters.accepted += 1
        self.activity[message.sender]["sent"] += 1
        if message.deliver_at is not None and message.deliver_at > self.clock():
            self._schedule_wake.set()
            return
        self.route(message.recipient, message)

    # --- administration -----------------------------------------------------

    def reload(self, new: Config) -> dict[str, list[str]]:
        """Take what can change while running from ``new``: policy rules, anomaly
        rules, sanitisation, and whether the audit keeps bodies. Everything else
        (paths, sockets, user, limits) is reported as needing a restart."""
        old = self.config
        applied: list[str] = []
        restart: list[str] = []
        if new.rules != old.rules:
            applied.append("policy")
        if new.anomaly != old.anomaly:
            applied.append("anomaly")
            self.anomaly = AnomalyDetector(new.anomaly)
        if new.limits.sanitize != old.limits.sanitize:
            applied.append("security.sanitize")
        if new.audit.log_all_messages != old.audit.log_all_messages:
            applied.append("audit.log_all_messages")
        for name in (
            "state_dir",
            "socket_path",
            "admin_socket_path",
            "socket_mode",
            "socket_group",
            "user",
            "per_agent_sockets",
            "agent_socket_dir",
        ):
            if getattr(new, name) != getattr(old, name):
                restart.append(name)
        if replace(new.limits, sanitize=old.limits.sanitize) != old.limits:
            restart.append("security limits")
        if replace(new.audit, log_all_messages=old.audit.log_all_messages) != old.audit:
            restart.append("audit.log_path/retention/log_group")
        kept = replace(
            old,
            rules=new.rules,
            anomaly=new.anomaly,
            limits=replace(old.limits, sanitize=new.limits.sanitize),
            audit=replace(old.audit, log_all_messages=new.audit.log_all_messages),
        )
        self.config = kept
        self.limits = kept.limits
        self.policy = Policy.from_rules([*kept.rules, *self._db_rules])
        return {"applied": applied, "restart_needed": restart}

    def reload_policy(self, db_rules: list[tuple[str, str, str]]) -> None:
        self._db_rules = [Rule(s, r, a) for s, r, a in db_rules]
        self.policy = Policy.from_rules([*self.config.rules, *self._db_rules])

    def rules_with_source(self) -> list[dict[str, str]]:
        rows = [
            {"from": r.sender, "to": r.recipient, "action": r.action, "source": "config"}
            for r in self.config.rules
        ]
        rows += [
            {"from": r.sender, "to": r.recipient, "action": r.action, "source": "admin"}
            for r in self._db_rules
        ]
        return sorted(rows, key=lambda r: (r["from"], r["to"], r["source"]))
