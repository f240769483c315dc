"""What each admin request does: agents, pair rules, groups, held and operator
messages, status, sessions, reload and shutdown.

Every change is one store operation with its audit line in the same commit
(``_write``), then the core is told. A refusal is a ``ProtocolError`` with a
stable code; the admin connection (``admin.py``) answers and audits it.

* An agent is a name, a credential hash and an optional bound uid/gid.
  Rotating a credential or removing an agent ends every session it has, so an
  old credential stops working at once; removing it also drops its rules.
* Rules set here live in the store next to those of the config file; after a
  change the policy is rebuilt from the rules the same commit left. Groups
  added here likewise live beside those of the config file.
* A held message is approved (queued with a fresh delivery number, same id)
  or rejected (the sender gets a notice from ``relay``) in one transaction.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from ccc_relay.audit.records import AuditRecord
from ccc_relay.audit.sealing import seal_status
from ccc_relay.audit.tamper import ALARM_ACK
from ccc_relay.core.effects import Forward, Persist
from ccc_relay.core.relay import OPERATOR, RELAY
from ccc_relay.daemon.audit_lifecycle import AcknowledgeAuditAlarm, ReadAuditAlarms
from ccc_relay.daemon.committer import SLOW_COMMIT, Job
from ccc_relay.daemon.federation_status import FederationView, federation_report
from ccc_relay.daemon.shell import RelayShell
from ccc_relay.policy.config import local_address, pair_problem
from ccc_relay.policy.groups import MAX_GROUPS, group_name_problem
from ccc_relay.protocol import admin as ops
from ccc_relay.protocol.codec import body_size
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.names import MAX_GROUP_MEMBERS, agent_name_problem
from ccc_relay.store import AgentRecord, StoredMessage, StoreFailure
from ccc_relay.store import ops as store_ops

T = TypeVar("T")


class Operator:
    """The admin plane's handlers, for one requesting peer uid."""

    def __init__(
        self,
        shell: RelayShell,
        *,
        by_uid: int,
        shutdown: asyncio.Event,
        sandbox: dict[str, Any],
        reload: Callable[[], dict[str, Any]] | None,
        agent_added: Callable[[str], Awaitable[None]] | None,
        agent_removed: Callable[[str], object] | None,
        federation: FederationView | None = None,
    ) -> None:
        self.shell = shell
        self.core = shell.core
        self.by_uid = by_uid
        self.shutdown = shutdown
        self.sandbox = sandbox
        self.reload = reload
        self.agent_added = agent_added
        self.agent_removed = agent_removed
        self.federation = federation

    async def handle(self, request: ops.AdminRequest) -> Any:
        # Every operation is routed here and only here, so the plane's whole
        # vocabulary can be read in one place.
        match request:
            case ops.AgentAdd():
                return await self.add_agent(request)
            case ops.AgentRotate():
                return await self.rotate_agent(request)
            case ops.AgentRemove():
                return await self.remove_agent(request)
            case ops.ListRegisteredAgents():
                return await self.list_agents()
            case ops.AgentRelease():
                return await self.release_agent(request)
            case ops.Allow():
                return await self.allow(request)
            case ops.Deny():
                return await self.deny(request)
            case ops.PolicyShow():
                return self.core.rules_with_source()
            case ops.GroupAdd():
                return await self.add_to_group(request)
            case ops.GroupRemove():
                return await self.remove_from_group(request)
            case ops.GroupList():
                return self.core.groups.with_source()
            case ops.Status():
                return await self.status()
            case ops.FederationStatus():
                return federation_report(self.federation, self.shell.clock())
            case ops.SessionList():
                return self.list_sessions()
            case ops.SessionSend():
                return await self.send_as_operator(request)
            case ops.HeldList():
                return await self.list_held()
            case ops.Approve():
                return await self.approve(request.id)
            case ops.Reject():
                return await self.reject(request.id, request.reason)
            case ops.Reload():
                if self.reload is None:
                    raise ProtocolError(ErrorCode.INVALID, "this relay cannot reload")
                return self.reload()
            case ops.AuditAcknowledge():
                return await self.acknowledge_audit_alarm(request)
            case ops.Shutdown():
                self._audit("admin_shutdown")
                self.shutdown.set()
                return {"stopping": True}
        raise ProtocolError(ErrorCode.INVALID, "unknown operation")  # pragma: no cover

    # --- plumbing -----------------------------------------------------------------------

    async def _write(self, op: store_ops.StoreOp[T], event: str, **fields: Any) -> T:
        """One store operation and its audit line, in one commit."""
        now = self.shell.clock()
        job = Job(op=op, audit=[self.core.record(now, event, by_uid=self.by_uid, **fields)])
        future = self.shell.committer.submit(job)
        assert future is not None
        result = await future
        if isinstance(result, sqlite3.IntegrityError):
            raise ProtocolError(ErrorCode.CONFLICT, f"conflict: {fields}")
        if isinstance(result, BaseException):
            raise ProtocolError(ErrorCode.INTERNAL, f"admin operation failed: {result}")
        return result

    def _audit(self, event: str, **fields: Any) -> None:
        record = self.core.record(self.shell.clock(), event, by_uid=self.by_uid, **fields)
        self.shell.run([Persist(audit=[record])])

    def _agent(self, name: str) -> AgentRecord:
        record = self.core.agents.get(name)
        if record is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no agent named {name!r}")
        return record

    def _address_pairs(
        self, sender: str, recipient: str, both: bool
    ) -> tuple[tuple[str, str], ...]:
        """The pairs a rule names, ``name@<this host>`` as plain ``name``; another
        relay's agent only when this relay federates."""
        federation = self.core.config.federation
        sender, recipient = (local_address(a, federation) for a in (sender, recipient))
        if federation is None and "@" in sender + recipient:
            raise ProtocolError(
                ErrorCode.INVALID,
                "name@host names another relay's agent, but this relay has no federation: "
                "section in its config",
            )
        return _pairs(sender, recipient, both)

    def _end_sessions(self, agent: str, why: str) -> None:
        self.shell.run(self.core.end_sessions(agent, why, self.shell.clock()))

    # --- agents -----------------------------------------------------------------------------

    async def add_agent(self, request: ops.AgentAdd) -> dict[str, Any]:
        problem = agent_name_problem(request.name)
        if problem:
            raise ProtocolError(ErrorCode.INVALID, problem)
        if request.name in self.core.agents:
            raise ProtocolError(ErrorCode.CONFLICT, f"agent {request.name!r} already exists")
        record = AgentRecord(
            request.name, request.cred_hash, self.shell.clock(), request.uid, request.gid
        )
        # The agent's own socket first: an agent is registered whole or not at all,
        # and a socket is easier to take back than a committed row.
        if self.agent_added is not None:
            try:
                await self.agent_added(request.name)
            except (OSError, RuntimeError) as exc:
                raise ProtocolError(
                    ErrorCode.UNAVAILABLE,
                    f"agent {request.name!r} was not added: its socket could not be made "
                    f"({exc}); fix that, then add it again",
                ) from None
        try:
            await self._write(
                store_ops.AddAgent(record),
                "agent_added",
                agent=request.name,
                uid=request.uid,
                gid=request.gid,
            )
        except BaseException:
            if self.agent_removed is not None:
                self.agent_removed(request.name)
            raise
        self.core.agents[request.name] = record
        return {"name": request.name}

    async def rotate_agent(self, request: ops.AgentRotate) -> dict[str, Any]:
        record = self._agent(request.name)
        await self._write(
            store_ops.SetCredential(request.name, request.cred_hash),
            "agent_rotated",
            agent=request.name,
        )
        self.core.agents[request.name] = msgspec.structs.replace(
            record, cred_hash=request.cred_hash
        )
        self._end_sessions(request.name, "the agent's credential was rotated")
        return {"name": request.name}

    async def remove_agent(self, request: ops.AgentRemove) -> dict[str, Any]:
        self._agent(request.name)
        rules = await self._write(
            store_ops.RemoveAgent(request.name), "agent_removed", agent=request.name
        )
        del self.core.agents[request.name]
        self._end_sessions(request.name, "the agent was removed")
        if self.agent_removed is not None:
            self.agent_removed(request.name)
        self.core.set_db_rules(rules)
        self.core.set_db_groups(await self.shell.committer.read(store_ops.ReadGroupMembers()))
        return {"name": request.name}

    async def list_agents(self) -> list[dict[str, Any]]:
        depths, later = await self.shell.committer.read(
            store_ops.ReadQueueDepths(self.shell.clock())
        )
        online = self.core.online
        return [
            {
                "name": a.name,
                "created": a.created,
                "uid": a.uid,
                "gid": a.gid,
                "online": len(online.get(a.name, ())),
                "queued": depths.get(a.name, 0),
                "scheduled": later.get(a.name, 0),
            }
            for a in self.core.agents.values()
        ]

    async def release_agent(self, request: ops.AgentRelease) -> dict[str, Any]:
        record = self._agent(request.name)
        if not record.quarantined:
            raise ProtocolError(ErrorCode.CONFLICT, f"agent {request.name!r} is not quarantined")
        await self._write(
            store_ops.SetQuarantine(request.name, None), "released", agent=request.name
        )
        self.core.agents[request.name] = msgspec.structs.replace(record, quarantined=None)
        self.core.anomaly.forget(request.name)
        return {"name": request.name}

    # --- pair rules -------------------------------------------------------------------------

    async def allow(self, request: ops.Allow) -> dict[str, Any]:
        pairs = self._address_pairs(request.sender, request.recipient, request.both)
        problem = pair_problem(*pairs[0], request.action, both=request.both)
        if problem:
            raise ProtocolError(ErrorCode.INVALID, problem)
        for sender, recipient in pairs:
            for name in (sender, recipient):
                if "@" not in name:
                    self._agent(name)
        rules = await self._write(
            store_ops.SetRules(pairs, request.action),
            "policy_changed",
            change=request.action,
            pairs=[f"{a} -> {b}" for a, b in pairs],
        )
        self.core.set_db_rules(rules)
        return {"pairs": [[a, b] for a, b in pairs], "action": request.action}

    async def deny(self, request: ops.Deny) -> dict[str, Any]:
        """Remove rules made with ``allow``; nothing to remove is an error, as a
        delete of what is not there is (``kubectl delete``): a typo must not pass."""
        pairs = self._address_pairs(request.sender, request.recipient, request.both)
        for sender, recipient in pairs:
            for name in (sender, recipient):
                if "@" not in name:
                    self._agent(name)
        rows = self.core.rules_with_source()
        stored = {(r["from"], r["to"]) for r in rows if r["source"] == "admin"}
        configured = {(r["from"], r["to"]) for r in rows if r["source"] == "config"}
        present = [pair for pair in pairs if pair in stored]
        if not present:
            shown = " or ".join(f"{a} -> {b}" for a, b in pairs)
            if any(pair in configured for pair in pairs):
                raise ProtocolError(
                    ErrorCode.CONFLICT,
                    f"{shown} is allowed by the config file, which 'ccc deny' does not "
                    "change: edit the file's policy: section, then 'ccc-statusd reload'",
                )
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"no rule {shown} to remove ('ccc policy show' lists them)"
            )
        removed, rules = await self._write(
            store_ops.DeleteRules(pairs),
            "policy_changed",
            change="deny",
            pairs=[f"{a} -> {b}" for a, b in pairs],
        )
        self.core.set_db_rules(rules)
        note = None
        if any(pair in configured for pair in pairs):
            note = "still allowed by the config file; edit it to deny"
        return {
            "removed": removed,
            "pairs": [[a, b] for a, b in present],
            "missing": [[a, b] for a, b in pairs if (a, b) not in stored],
            "note": note,
        }

    # --- groups ------------------------------------------------------------------------------

    async def add_to_group(self, request: ops.GroupAdd) -> dict[str, Any]:
        problem = group_name_problem(request.name)
        if problem:
            raise ProtocolError(ErrorCode.INVALID, problem)
        for member in request.members:
            self._agent(member)
        groups = self.core.groups
        members = tuple(dict.fromkeys([*(groups.members(request.name) or ()), *request.members]))
        if len(members) > MAX_GROUP_MEMBERS:
            raise ProtocolError(
                ErrorCode.CONFLICT,
                f"@{request.name} would have {len(members)} members; a group has at most "
                f"{MAX_GROUP_MEMBERS}",
            )
        if not groups.stored_members(request.name) and len(groups.stored()) >= MAX_GROUPS:
            raise ProtocolError(
                ErrorCode.CONFLICT, f"there are {MAX_GROUPS} groups already; remove one first"
            )
        added = tuple(dict.fromkeys(request.members))
        rows = await self._write(
            store_ops.AddGroupMembers(request.name, added),
            "group_changed",
            change="add",
            group="@" + request.name,
            members=list(added),
        )
        self.core.set_db_groups(rows)
        now_members = self.core.groups.members(request.name) or ()
        return {"group": request.name, "members": list(now_members)}

    async def remove_from_group(self, request: ops.GroupRemove) -> dict[str, Any]:
        groups = self.core.groups
        if groups.members(request.name) is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no group named @{request.name}")
        members = None if request.members is None else tuple(dict.fromkeys(request.members))
        removed, rows = await self._write(
            store_ops.RemoveGroupMembers(request.name, members),
            "group_changed",
            change="remove",
            group="@" + request.name,
            members=None if members is None else list(members),
        )
        self.core.set_db_groups(rows)
        note = None
        if groups.in_config(request.name):
            note = "the config file defines this group too; edit it to change those members"
        return {
            "group": request.name,
            "removed": removed,
            "members": list(self.core.groups.members(request.name) or ()),
            "note": note,
        }

    # --- messages -----------------------------------------------------------------------------

    async def list_held(self) -> list[dict[str, Any]]:
        held = await self.shell.committer.read(store_ops.ReadHeld())
        return [
            {
                "id": m.id,
                "from": m.sender,
                "to": m.recipient,
                "sent_at": m.sent_at,
                "size": len(m.body.encode()),
                "body": m.body,
                "thread": m.thread,
            }
            for m in held
        ]

    async def approve(self, message_id: str) -> dict[str, Any]:
        # A new delivery number keeps the recipient's deliveries in order; the id
        # stays. Taking the held row, queueing it and its audit lines are one commit.
        target = await self._held(message_id)
        now = self.shell.clock()
        queued = msgspec.structs.replace(target, delivery=self.core.next_delivery())
        message = await self._commit(
            store_ops.ApproveHeld(message_id, queued.delivery),
            self.core.message_record(queued, now, "accepted", by_uid=self.by_uid, approved=True),
            self.core.record(now, "approved", id=message_id, by_uid=self.by_uid),
        )
        if message is None:  # another operator took it between the read and the commit
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no held message {message_id!r}")
        self.shell.run(self.core.message_committed(message, now))
        return {"id": message.id, "to": message.recipient}

    async def reject(self, message_id: str, reason: str | None) -> dict[str, Any]:
        target = await self._held(message_id)
        now = self.shell.clock()
        federation = self.core.federation
        if federation is not None and "@" in target.sender:
            return await self._reject_remote(target, reason, now)
        notice = self.core.new_message(
            RELAY,
            target.sender,
            f"Your message {target.id} to {target.recipient} was rejected by the operator."
            + (f" Reason: {reason}" if reason else ""),
            now,
            reply_to=message_id,
        )
        taken = await self._commit(
            store_ops.RejectHeld(message_id, notice),
            self.core.record(now, "rejected", id=message_id, by_uid=self.by_uid, reason=reason),
            self.core.message_record(notice, now, "accepted", notice_for=message_id),
        )
        if taken is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no held message {message_id!r}")
        self.shell.run(self.core.message_committed(notice, now))
        return {"id": message_id, "to": target.recipient, "notified": target.sender}

    async def _reject_remote(
        self, target: StoredMessage, reason: str | None, now: float
    ) -> dict[str, Any]:
        """The sender is on another relay: the notice goes back to it signed, through
        the outbox, like any refusal of an arrival."""
        federation = self.core.federation
        assert federation is not None
        entry = federation.rejection(
            target, "rejected by the operator" + (f": {reason}" if reason else ""), now
        )
        taken = await self._commit(
            store_ops.RejectHeld(target.id, None, entry),
            self.core.record(now, "rejected", id=target.id, by_uid=self.by_uid, reason=reason),
        )
        if taken is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no held message {target.id!r}")
        self.shell.run([Forward(entry)])
        return {"id": target.id, "to": target.recipient, "notified": target.sender}

    async def _held(self, message_id: str) -> StoredMessage:
        held = await self.shell.committer.read(store_ops.ReadHeldMessage(message_id))
        if held is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no held message {message_id!r}")
        return held

    async def _commit(
        self,
        op: store_ops.StoreOp[T],
        *audit: AuditRecord,
        messages: list[StoredMessage] | None = None,
    ) -> T:
        """One store operation, the messages it queues and its audit lines: one commit."""
        job = Job(op=op, audit=list(audit), messages=messages or [])
        future = self.shell.committer.submit(job)
        assert future is not None
        return await future

    async def send_as_operator(self, request: ops.SessionSend) -> dict[str, Any]:
        self._agent(request.to)
        size = body_size(request.body)
        limit = self.core.limits.max_message_size
        if size > limit:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"body is {size} bytes; the limit is {limit}")
        now = self.shell.clock()
        message = self.core.new_message(OPERATOR, request.to, request.body, now)
        await self._commit(
            store_ops.Nothing(),
            self.core.message_record(message, now, "accepted", by_uid=self.by_uid),
            messages=[message],
        )
        self.shell.run(self.core.message_committed(message, now))
        return {"id": message.id, "to": request.to}

    # --- watching ---------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        core, committer = self.core, self.shell.committer
        held: int | None
        alarms: list[dict[str, Any]] | None
        try:
            depths, later, held = await committer.read(store_ops.ReadStatus(self.shell.clock()))
            alarms = await committer.read(ReadAuditAlarms())
        except StoreFailure:  # status must answer when the store has failed
            depths, later, held, alarms = {}, {}, None, None
        activity = core.routing.activity
        return {
            "pid": os.getpid(),
            "uptime": round(self.shell.clock() - core.started_at, 3),
            "socket": str(core.config.socket_path),
            "state_dir": str(core.config.state_dir),
            "accepting": committer.failure is None,
            "uid": os.getuid(),
            "sandbox": self.sandbox,
            "failure": committer.failure,
            "connections": core.connections,
            "held": held,
            "anomalies": core.counters.anomalies,
            "alerts": list(core.alerts)[-20:],
            "audit_alarms": alarms,
            "audit_seal": seal_status(core.config.state_dir),
            "agents": [
                {
                    "name": name,
                    "online": len(core.online.get(name, ())),
                    "queued": depths.get(name, 0),  # due now
                    "scheduled": later.get(name, 0),  # waiting for their deliver_at
                    "quarantined": core.agents[name].quarantined,
                    **{
                        k: activity[name][k] if name in activity else 0
                        for k in ("sent", "delivered", "refused")
                    },
                    "sessions": [link.session.session_id for link in core.online.get(name, ())],
                }
                for name in sorted(core.agents)
            ],
            "counters": {
                "accepted": core.counters.accepted,
                "delivered": core.counters.delivered,
                "acked": core.counters.acked,
                "held": core.counters.held,
                "refused": dict(core.counters.refused),
                "commits": committer.batches,
                "slow_commits": committer.slow_commits,
                "slow_commit_ms": SLOW_COMMIT * 1000,
                "longest_commit_ms": round(committer.longest_commit * 1000, 3),
            },
        }

    async def acknowledge_audit_alarm(self, request: ops.AuditAcknowledge) -> dict[str, Any]:
        alarms = await self.shell.committer.read(ReadAuditAlarms())
        if not any(a.get("seq") == request.seq for a in alarms):
            known = ", ".join(str(a.get("seq")) for a in alarms) or "none"
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no unacknowledged audit tamper alarm at "
                                f"seq {request.seq} (unacknowledged: {known})")  # fmt: skip
        alarm = await self._write(
            AcknowledgeAuditAlarm(request.seq), ALARM_ACK, alarm_seq=request.seq, note=request.note
        )
        return {"acknowledged": alarm}

    def list_sessions(self) -> list[dict[str, Any]]:
        core = self.core
        rows = []
        for links in core.online.values():
            for link in links:
                session = core.sessions.get(link.session.session_id or "")
                rows.append(
                    {
                        "session": link.session.session_id,
                        "agent": link.agent,
                        "peer_pid": link.peer[0],
                        "peer_uid": link.peer[1],
                        "peer_gid": link.peer[2],
                        "connected_at": link.connected_at,
                        "expires_at": session.expires if session else None,
                        "last_seq": session.last_seq if session else 0,
                        "subscribed": link.session.subscribed,
                        "inflight": len(link.session.inflight),
                    }
                )
        return rows


def _pairs(sender: str, recipient: str, both: bool) -> tuple[tuple[str, str], ...]:
    if sender == recipient:
        raise ProtocolError(ErrorCode.INVALID, "an agent does not message itself")
    return ((sender, recipient), (recipient, sender)) if both else ((sender, recipient),)
