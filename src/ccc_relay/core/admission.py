"""Admission: who may authenticate as an agent, for how long, and what a
session may send right now.

A hello is checked against the stored credential hash and the agent's bound
uid/gid, with one answer for every kind of failure and a per-uid throttle on
failed attempts. Sessions expire after ``session_timeout``. A send must be
allowed by the pair policy and pass four sliding-window limiters at once --
session, agent (all its sessions), pair and global -- so reconnecting never
resets a budget.

Sessions live here, keyed by id, with their durable seq high-water mark: a
session can be resumed on another connection, so its seq belongs to it, not
to a connection. Plain data; time is passed in.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ccc_relay import credentials
from ccc_relay.policy.acl import Policy
from ccc_relay.policy.config import Limits
from ccc_relay.policy.limits import WindowLimiter
from ccc_relay.protocol.errors import ErrorCode, Refusal
from ccc_relay.store.records import AgentRecord, SessionRecord

MAX_SCHEDULE_AHEAD = 30 * 86400.0  # deliver_at may not lie further ahead than this
MAX_AUTH_FAILURE_KEYS = 10_000  # failed-hello counters kept before idle ones are swept
RATE_WINDOW = 60.0
TOO_FAR_AHEAD = Refusal(ErrorCode.INVALID, "deliver_at lies more than 30 days ahead")
AUTH_FAILED = Refusal(
    ErrorCode.AUTH_FAILED,
    "authentication failed: unknown agent, wrong credential, or wrong peer",
    fatal=True,
)


def round_up(seconds: float) -> float:
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
    def __init__(self, limits: Limits, agents: dict[str, AgentRecord], policy: Policy) -> None:
        self.limits = limits
        self.agents = agents  # shared with the core: one table of who exists
        self.policy = policy  # replaced by the core when the rules change
        self.sessions: dict[str, Session] = {}
        self._agent_limiters: dict[str, WindowLimiter] = {}
        self._pair_limiters: dict[tuple[str, str], WindowLimiter] = {}
        self._global_limiter = WindowLimiter(limits.global_rate_per_minute, RATE_WINDOW)
        # Failed hellos, per (peer uid, claimed name): a wrong guess at one name
        # must not lock out another agent of the same uid.
        self._auth_failures: dict[tuple[int, str], WindowLimiter] = {}
        self._sessions_of: dict[str, dict[str, None]] = {}  # per agent, oldest first

    # --- authentication -------------------------------------------------------

    def authenticate(
        self,
        agent: str,
        credential: str,
        peer: tuple[int, int, int],
        resume: str | None,
        now: float,
    ) -> tuple[Session, SessionRecord | None] | Refusal:
        """Check a hello: its (new or resumed) session and, for a new one, the
        record to store; or the refusal (RATE_LIMITED when this peer uid failed too
        often; AUTH_FAILED for a wrong name, credential or uid, one answer for all;
        QUARANTINED; SESSION_EXPIRED for a resume of an unknown or expired session).
        """
        _pid, uid, gid = peer
        failures = self._auth_failures.get((uid, agent))
        if failures is not None:
            wait = failures.retry_after(now)
            if wait:
                return Refusal(
                    ErrorCode.RATE_LIMITED,
                    "too many failed hellos for this agent from this user; wait before trying "
                    "again",
                    fatal=True,
                    retry_after=round_up(wait),
                )
        record = self.agents.get(agent)
        ok = credentials.matches(credential, record.cred_hash if record else None)
        if ok and record is not None and record.uid is not None and record.uid != uid:
            ok = False
        if ok and record is not None and record.gid is not None and record.gid != gid:
            ok = False
        if not ok or record is None:
            if len(self._auth_failures) >= MAX_AUTH_FAILURE_KEYS:
                self._forget_idle_failures(now)
            limiter = self._auth_failures.setdefault(
                (uid, agent), WindowLimiter(self.limits.auth_failures_per_minute, RATE_WINDOW)
            )
            limiter.record(now)
            return AUTH_FAILED
        if record.quarantined:
            return Refusal(
                ErrorCode.QUARANTINED,
                "this agent is quarantined; the operator must release it "
                f"(ccc agent release {agent})",
                fatal=True,
            )
        if resume is not None:
            session = self.sessions.get(resume)
            if session is None or session.agent != agent or session.expires <= now:
                return Refusal(
                    ErrorCode.SESSION_EXPIRED,
                    "that session is unknown or expired; say hello without resume",
                )
            return session, None
        session = Session(
            id=new_session_id(),
            agent=agent,
            expires=now + self.limits.session_timeout,
            last_seq=0,
            limiter=WindowLimiter(self.limits.rate_per_minute, RATE_WINDOW),
        )
        self._remember(session)
        return session, SessionRecord(session.id, agent, now, session.expires, 0)

    def _remember(self, session: Session) -> None:
        self.sessions[session.id] = session
        self._sessions_of.setdefault(session.agent, {})[session.id] = None

    def forget(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            of_agent = self._sessions_of.get(session.agent, {})
            of_agent.pop(session_id, None)
            if not of_agent:
                self._sessions_of.pop(session.agent, None)

    def make_room(self, agent: str, in_use: Callable[[str], bool]) -> list[str]:
        """``agent`` opened a session: while it holds more than
        ``max_sessions_per_agent``, forget its oldest sessions that no connection
        is using. The ids forgotten (their rows go too); a session in use, the new
        one included, is never taken."""
        held = self._sessions_of.get(agent, {})
        excess = len(held) - self.limits.max_sessions_per_agent
        forgotten: list[str] = []
        for sid in list(held):
            if excess <= 0:
                break
            if not in_use(sid):
                self.forget(sid)
                forgotten.append(sid)
                excess -= 1
        return forgotten

    def load_sessions(self, records: Iterable[SessionRecord], now: float) -> None:
        for r in records:
            if r.expires > now and r.agent in self.agents:
                self._remember(
                    Session(
                        r.id,
                        r.agent,
                        r.expires,
                        r.last_seq,
                        WindowLimiter(self.limits.rate_per_minute, RATE_WINDOW),
                    )
                )

    def expire(self, now: float) -> list[Session]:
        """Forget the sessions past their expiry; the ones forgotten."""
        expired = [s for s in self.sessions.values() if s.expires <= now]
        for session in expired:
            self.forget(session.id)
        self._forget_idle_failures(now)
        return expired

    def end_sessions_of(self, agent: str) -> None:
        for sid in list(self._sessions_of.get(agent, ())):
            self.forget(sid)

    def _forget_idle_failures(self, now: float) -> None:
        """Drop failed-hello counters with nothing left in their window (bounded memory)."""
        for key in [
            k for k, limiter in self._auth_failures.items() if limiter.room(now) >= limiter.limit
        ]:
            del self._auth_failures[key]

    # --- sending --------------------------------------------------------------

    def check_sends(
        self,
        sender: str,
        session: Session,
        sends: Sequence[tuple[str, float | None]],
        now: float,
    ) -> list[str | Refusal]:
        """Policy and limits for consecutive sends of one session, decided
        together: for each (recipient, deliver_at), in order, the pair's action or
        the refusal (FORBIDDEN -- unknown and forbidden recipients get the same
        answer --, INVALID for a deliver_at too far ahead, RATE_LIMITED with
        retry_after). The result is the same as deciding them one by one: every
        limiter is asked once per batch, and each send takes one place in the
        session's, the agent's, its pair's and the relay's window.
        """
        record = self.agents.get(sender)
        if record is not None and record.quarantined:
            quarantined = Refusal(ErrorCode.QUARANTINED, "this agent is quarantined", fatal=True)
            return [quarantined] * len(sends)
        known = self.agents.keys()
        policy = self.policy
        shared = (session.limiter, self._agent_limiter(sender), self._global_limiter)
        room = min(limiter.room(now) for limiter in shared)
        pair_room: dict[str, int] = {}
        actions: dict[str, str | None] = {}
        taken: dict[str, int] = {}
        results: list[str | Refusal] = []
        limited: list[tuple[int, str]] = []
        for to, deliver_at in sends:
            if to not in actions:
                actions[to] = policy.action(sender, to, known)
            action = actions[to]
            if action is None:
                results.append(Refusal(ErrorCode.FORBIDDEN, f"you may not send to {to!r}"))
                continue
            if deliver_at is not None and deliver_at > now + MAX_SCHEDULE_AHEAD:
                results.append(
                    Refusal(ErrorCode.INVALID, "deliver_at lies more than 30 days ahead")
                )
                continue
            pair = pair_room.get(to)
            if pair is None:
                pair = pair_room[to] = self._pair_limiter(sender, to).room(now)
            if room <= 0 or pair <= 0:
                limited.append((len(results), to))
                results.append(action)  # replaced below by the refusal
                continue
            room -= 1
            pair_room[to] = pair - 1
            taken[to] = taken.get(to, 0) + 1
            results.append(action)
        admitted = sum(taken.values())
        if admitted:
            for limiter in shared:
                limiter.record_many(now, admitted)
            for to, count in taken.items():
                self._pair_limiter(sender, to).record_many(now, count)
        for index, to in limited:
            wait = max(
                limiter.retry_after(now) for limiter in (*shared, self._pair_limiter(sender, to))
            )
            results[index] = Refusal(
                ErrorCode.RATE_LIMITED,
                f"rate limit reached ({self.limits.rate_per_minute:g} msg/min); retry later",
                retry_after=round_up(wait),
            )
        return results

    def check_fanout(
        self,
        sender: str,
        session: Session,
        group: str,
        members: Sequence[str] | None,
        deliver_at: float | None,
        now: float,
    ) -> tuple[list[tuple[str, str]], list[str]] | Refusal:
        """Policy and limits for one send to ``group`` (its ``members``, None for
        no such group): the (member, action) pairs that get a copy and the
        members skipped because the sender may not write to them; or the refusal
        of the whole send. Unknown groups, groups with no member the sender may
        write to, and forbidden agents get the same FORBIDDEN answer. Each copy
        takes one place in the session's, the agent's and the relay's window and
        one in its pair's; all fit or none is taken (RATE_LIMITED).
        """
        record = self.agents.get(sender)
        if record is not None and record.quarantined:
            return Refusal(ErrorCode.QUARANTINED, "this agent is quarantined", fatal=True)
        known = self.agents.keys()
        policy = self.policy
        copies: list[tuple[str, str]] = []
        skipped: list[str] = []
        for member in members or ():
            if member == sender:
                continue
            action = policy.action(sender, member, known)
            if action is None:
                skipped.append(member)
            else:
                copies.append((member, action))
        if not copies:
            return Refusal(ErrorCode.FORBIDDEN, f"you may not send to {group!r}")
        if deliver_at is not None and deliver_at > now + MAX_SCHEDULE_AHEAD:
            return TOO_FAR_AHEAD
        shared = (session.limiter, self._agent_limiter(sender), self._global_limiter)
        pairs = [self._pair_limiter(sender, member) for member, _action in copies]
        cost = len(copies)
        if cost > min(limiter.limit for limiter in shared):
            return Refusal(
                ErrorCode.RATE_LIMITED,
                f"a send to {group} costs {cost} messages, more than the rate limit allows "
                "in a minute; write to fewer agents at a time",
            )
        if min(limiter.room(now) for limiter in shared) < cost or any(
            pair.room(now) < 1 for pair in pairs
        ):
            wait = max(
                *(limiter.retry_after(now, cost) for limiter in shared),
                *(pair.retry_after(now) for pair in pairs),
            )
            return Refusal(
                ErrorCode.RATE_LIMITED,
                f"rate limit reached ({self.limits.rate_per_minute:g} msg/min, and a send to "
                f"{group} costs {cost}); retry later",
                retry_after=round_up(wait),
            )
        for limiter in shared:
            limiter.record_many(now, cost)
        for pair in pairs:
            pair.record_many(now, 1)
        return copies, skipped

    def check_arrival(
        self, sender: str, recipient: str, deliver_at: float | None, now: float
    ) -> str | Refusal:
        """Policy and limits for one message another relay forwards: ``sender`` is
        its address (``alice@h1``), limited as an agent of this relay is (its own
        window, its pair's, the relay's); the pair's action or the refusal."""
        action = self.policy.action(sender, recipient, self.agents.keys())
        if action is None:
            return Refusal(ErrorCode.FORBIDDEN, f"{sender} may not send to {recipient!r} here")
        if deliver_at is not None and deliver_at > now + MAX_SCHEDULE_AHEAD:
            return TOO_FAR_AHEAD
        limiters = (
            self._agent_limiter(sender),
            self._pair_limiter(sender, recipient),
            self._global_limiter,
        )
        wait = max(limiter.retry_after(now) for limiter in limiters)
        if wait:
            return Refusal(
                ErrorCode.RATE_LIMITED,
                f"rate limit reached for {sender} ({self.limits.agent_rate_per_minute:g} "
                "msg/min); retry later",
                retry_after=round_up(wait),
            )
        for limiter in limiters:
            limiter.record(now)
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
