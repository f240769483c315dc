"""Admission: who may authenticate as an agent, for how long, and what a
session may send right now.

A hello is checked against the stored credential hash and the agent's bound
uid/gid, with one answer for every kind of failure and a per-uid throttle on
failed attempts. Sessions expire after ``session_timeout``. A send must be
allowed by the pair policy and pass four sliding-window limiters at once --
session, agent (all its sessions), pair and global -- so reconnecting never
resets a budget.

A mixin of ``Relay``: it uses the relay's clock, limits, agents, policy,
committer and audit.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ccc_relay import credentials
from ccc_relay.daemon.committer import Committer, Job
from ccc_relay.policy.acl import Policy
from ccc_relay.policy.config import Limits
from ccc_relay.policy.limits import WindowLimiter, admit
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.store import AgentRecord, SessionRecord

if TYPE_CHECKING:
    from ccc_relay.daemon.connection import AgentConnection

MAX_SCHEDULE_AHEAD = 30 * 86400.0  # deliver_at may not lie further ahead than this
RATE_WINDOW = 60.0


def _round_up(seconds: float) -> float:
    """Milliseconds, rounded up: waiting exactly retry_after must be enough."""
    return math.ceil(seconds * 1000) / 1000


def new_session_id() -> str:
    return "s_" + secrets.token_urlsafe(12)


@dataclass(slots=True)
class Session:
    id: str
    agent: str
    expires: float
    last_seq: int
    limiter: WindowLimiter


class Admission:
    # Provided by Relay.
    clock: Callable[[], float]
    limits: Limits
    agents: dict[str, AgentRecord]
    policy: Policy
    committer: Committer
    online: dict[str, list[AgentConnection]]
    audit: Callable[..., None]

    def _init_admission(self) -> None:
        self.sessions: dict[str, Session] = {}
        self._agent_limiters: dict[str, WindowLimiter] = {}
        self._pair_limiters: dict[tuple[str, str], WindowLimiter] = {}
        self._global_limiter = WindowLimiter(self.limits.global_rate_per_minute, RATE_WINDOW)
        self._auth_failures: dict[int, WindowLimiter] = {}

    @property
    def known(self) -> set[str]:
        return self.agents.keys()  # type: ignore[return-value]

    # --- authentication -------------------------------------------------------

    def authenticate(
        self, agent: str, credential: str, peer: tuple[int, int, int], resume: str | None
    ) -> Session:
        """Check a hello; return its (new or resumed) session.

        Raises ProtocolError: RATE_LIMITED when this peer uid failed too often,
        AUTH_FAILED for a wrong name, credential or uid (one answer for all),
        SESSION_EXPIRED for a resume of an unknown or expired session.
        """
        _pid, uid, gid = peer
        now = self.clock()
        failures = self._auth_failures.get(uid)
        if failures is not None:
            wait = failures.retry_after(now)
            if wait:
                raise ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    "too many failed hellos from this user; wait before trying again",
                    fatal=True,
                    retry_after=_round_up(wait),
                )
        record = self.agents.get(agent)
        ok = credentials.matches(credential, record.cred_hash if record else None)
        if ok and record is not None and record.uid is not None and record.uid != uid:
            ok = False
        if ok and record is not None and record.gid is not None and record.gid != gid:
            ok = False
        if not ok:
            limiter = self._auth_failures.setdefault(
                uid, WindowLimiter(self.limits.auth_failures_per_minute, RATE_WINDOW)
            )
            limiter.record(now)
            raise ProtocolError(
                ErrorCode.AUTH_FAILED,
                "authentication failed: unknown agent, wrong credential, or wrong peer",
                fatal=True,
            )
        assert record is not None
        if record.quarantined:
            raise ProtocolError(
                ErrorCode.QUARANTINED,
                "this agent is quarantined; the operator must release it "
                f"(ccc agent release {agent})",
                fatal=True,
            )
        if resume is not None:
            session = self.sessions.get(resume)
            if session is None or session.agent != agent or session.expires <= now:
                raise ProtocolError(
                    ErrorCode.SESSION_EXPIRED,
                    "that session is unknown or expired; say hello without resume",
                )
            return session
        session = Session(
            id=new_session_id(),
            agent=agent,
            expires=now + self.limits.session_timeout,
            last_seq=0,
            limiter=WindowLimiter(self.limits.rate_per_minute, RATE_WINDOW),
        )
        self.sessions[session.id] = session
        record_ = SessionRecord(session.id, agent, now, session.expires, 0)
        self.committer.submit(Job(run=lambda s: s.create_session(record_)), want_result=False)
        return session

    def load_sessions(self, records: Iterable[SessionRecord]) -> None:
        now = self.clock()
        for r in records:
            if r.expires > now and r.agent in self.agents:
                self.sessions[r.id] = Session(
                    r.id,
                    r.agent,
                    r.expires,
                    r.last_seq,
                    WindowLimiter(self.limits.rate_per_minute, RATE_WINDOW),
                )

    def expire_sessions(self) -> None:
        now = self.clock()
        for sid, session in list(self.sessions.items()):
            if session.expires <= now:
                del self.sessions[sid]
                self.audit("session_expired", agent=session.agent, session=sid)
        for conns in list(self.online.values()):
            for conn in list(conns):
                conn.check_expiry(now)

    # --- sending --------------------------------------------------------------

    def check_send(self, sender: str, session: Session, to: str, deliver_at: float | None) -> str:
        """Policy and limits for one send; returns the pair's action.

        Raises ProtocolError FORBIDDEN (unknown and forbidden recipients get
        the same answer), INVALID for a deliver_at too far ahead, or
        RATE_LIMITED with retry_after.
        """
        record = self.agents.get(sender)
        if record is not None and record.quarantined:
            raise ProtocolError(ErrorCode.QUARANTINED, "this agent is quarantined", fatal=True)
        action = self.policy.action(sender, to, self.known)
        if action is None:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"you may not send to {to!r}")
        now = self.clock()
        if deliver_at is not None and deliver_at > now + MAX_SCHEDULE_AHEAD:
            raise ProtocolError(ErrorCode.INVALID, "deliver_at lies more than 30 days ahead")
        wait = admit(
            (
                session.limiter,
                self._agent_limiter(sender),
                self._pair_limiter(sender, to),
                self._global_limiter,
            ),
            now,
        )
        if wait:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"rate limit reached ({self.limits.rate_per_minute:g} msg/min); retry later",
                retry_after=_round_up(wait),
            )
        return action

    def _agent_limiter(self, agent: str) -> WindowLimiter:
        limiter = self._agent_limiters.get(agent)
        if limiter is None:
            limiter = WindowLimiter(self.limits.agent_rate_per_minute, RATE_WINDOW)
            self._agent_limiters[agent] = limiter
        return limiter

    def _pair_limiter(self, sender: str, to: str) -> WindowLimiter:
        limiter = self._pair_limiters.get((sender, to))
        if limiter is None:
            limiter = WindowLimiter(self.limits.pair_rate_per_minute, RATE_WINDOW)
            self._pair_limiters[(sender, to)] = limiter
        return limiter
