"""The hello of an agent connection: its deadline, proving it, and the
session's expiry afterwards.

A connection must say ``hello`` within ``hello_timeout``; the relay checks the
credential (``Relay.authenticate``), and a per-agent socket accepts only its
own agent, with the same answer as a wrong credential. A session that outlives
``session_timeout`` is closed on its next frame or by the relay's sweep.

A mixin of ``AgentConnection``: it uses the connection's relay, peer, state,
hello timer, writer and ``fail``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import PROTOCOL_VERSION, Hello, Welcome

if TYPE_CHECKING:
    from ccc_relay.daemon.admission import Session
    from ccc_relay.daemon.connection import AgentConnection
    from ccc_relay.daemon.relay import Relay


class Authenticating:
    # Provided by AgentConnection.
    relay: Relay
    bound_agent: str | None
    state: str
    agent: str | None
    claimed: str | None
    session: Session | None
    peer: tuple[int, int, int]
    wants_signatures: bool
    _hello_timer: asyncio.TimerHandle | None
    _counted_unauthenticated: bool
    write: Callable[[Any], None]
    fail: Callable[[ProtocolError], None]

    def _hello_timed_out(self) -> None:
        if self.state == "hello":
            self.fail(
                ProtocolError(
                    ErrorCode.HELLO_TIMEOUT,
                    "no hello in time; the connection is closed",
                    fatal=True,
                )
            )

    def _on_hello(self, hello: Hello) -> None:
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {hello.version} is not supported; this relay speaks "
                f"{PROTOCOL_VERSION}",
                fatal=True,
            )
        relay = self.relay
        self.claimed = hello.agent
        if self.bound_agent is not None and hello.agent != self.bound_agent:
            # Same answer as a wrong credential; the audit line says which.
            relay.audit(
                "auth_refused",
                agent=hello.agent,
                socket_agent=self.bound_agent,
                reason="agent does not match this per-agent socket",
                peer_pid=self.peer[0],
                peer_uid=self.peer[1],
                peer_gid=self.peer[2],
            )
            raise ProtocolError(
                ErrorCode.AUTH_FAILED,
                "authentication failed: unknown agent, wrong credential, or wrong peer",
                fatal=True,
            )
        session = relay.authenticate(hello.agent, hello.credential, self.peer, hello.resume)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self.state = "ready"
        self.agent = hello.agent
        self.wants_signatures = hello.signatures
        self.session = session
        if self._counted_unauthenticated:
            relay.unauthenticated -= 1
            self._counted_unauthenticated = False
        relay.attach(cast("AgentConnection", self))
        relay.audit(
            "authenticated",
            agent=hello.agent,
            session=session.id,
            resumed=hello.resume is not None,
            peer_pid=self.peer[0],
            peer_uid=self.peer[1],
            peer_gid=self.peer[2],
        )
        self.write(
            Welcome(
                session=session.id,
                agent=hello.agent,
                expires_at=session.expires,
                last_seq=session.last_seq,
                max_message_size=relay.limits.max_message_size,
                rate_limit_per_minute=relay.limits.rate_per_minute,
            )
        )

    def check_expiry(self, now: float) -> None:
        if self.session is not None and self.session.expires <= now and self.state == "ready":
            self.fail(
                ProtocolError(
                    ErrorCode.SESSION_EXPIRED,
                    "the session expired (session_timeout); authenticate again",
                    fatal=True,
                )
            )
