"""The sending half of an agent connection: a ``send`` from frame to answer.

A send's ``seq`` must be last+1 and is consumed whatever happens next; the
body's size, the relay's admission checks, sanitisation (on a worker thread
for large bodies, the connection's later frames held back meanwhile), then
the commit. ``accepted`` (or ``held``) goes out only once the committer has
made the message durable.

A mixin of ``AgentConnection``: it uses the connection's relay, agent,
session, state, writer, refusals and input hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ccc_relay.daemon.committer import Job
from ccc_relay.policy.acl import HOLD
from ccc_relay.policy.sanitize import Sanitized, sanitize
from ccc_relay.protocol.codec import body_size
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.frames import Accepted, Error, Held, Send
from ccc_relay.store import StoredMessage, StoreFailure

if TYPE_CHECKING:
    from ccc_relay.daemon.admission import Session
    from ccc_relay.daemon.relay import Relay

# Bodies longer than this are sanitised on a worker thread (their frames still
# in order), so one hostile megabyte cannot stall every other agent's frames.
SANITIZE_INLINE_LIMIT = 64 * 1024
# Normalisations that say nothing about intent; the rest count towards the
# "sanitized" anomaly rule.
BENIGN_CHANGES = frozenset({"newline", "nfc"})


class Sending:
    # Provided by AgentConnection.
    relay: Relay
    agent: str | None
    state: str
    session: Session | None
    write: Callable[[Any], None]
    refuse: Callable[..., None]
    _hold_input: Callable[[], None]
    _release_input: Callable[[], None]

    def _on_send(self, frame: Send) -> None:
        session = self.session
        assert session is not None
        assert self.agent is not None
        relay = self.relay
        if frame.seq <= session.last_seq:
            raise ProtocolError(
                ErrorCode.REPLAY,
                f"seq {frame.seq} was already used in this session (last was {session.last_seq})",
            )
        if frame.seq != session.last_seq + 1:
            raise ProtocolError(
                ErrorCode.OUT_OF_ORDER,
                f"seq {frame.seq} skips ahead; the next seq is {session.last_seq + 1}",
            )
        # The seq is consumed whatever happens next, so the client's next frame
        # is always last+1; the high-water mark is made durable with it.
        session.last_seq = frame.seq
        seq_update = (session.id, frame.seq)
        try:
            size = body_size(frame.body)
            limit = relay.limits.max_message_size
            if size > limit:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"body is {size} bytes; the limit is {limit} bytes; the connection is closed",
                    fatal=True,
                )
            action = relay.check_send(self.agent, session, frame.to, frame.deliver_at)
        except ProtocolError:
            relay.committer.submit(_seq_only(seq_update), want_result=False)
            raise
        options = relay.limits.sanitize
        if options.enabled and len(frame.body) > SANITIZE_INLINE_LIMIT:
            self._hold_input()
            work = asyncio.get_running_loop().run_in_executor(None, sanitize, frame.body, options)
            work.add_done_callback(lambda f: self._after_sanitize(f, frame, action, seq_update))
            return
        cleaned = sanitize(frame.body, options) if options.enabled else None
        self._finish_send(frame, action, seq_update, cleaned)

    def _after_sanitize(
        self,
        future: asyncio.Future[Sanitized],
        frame: Send,
        action: str,
        seq_update: tuple[str, int],
    ) -> None:
        try:
            if self.state != "closed":
                try:
                    self._finish_send(frame, action, seq_update, future.result())
                except StoreFailure as exc:
                    self.refuse(ProtocolError(ErrorCode.UNAVAILABLE, str(exc)), seq=frame.seq)
        finally:
            self._release_input()

    def _finish_send(
        self, frame: Send, action: str, seq_update: tuple[str, int], cleaned: Sanitized | None
    ) -> None:
        relay = self.relay
        session = self.session
        assert session is not None
        assert self.agent is not None
        body = frame.body if cleaned is None else cleaned.text
        changes = cleaned.describe() if cleaned is not None and cleaned.changes else []
        extra: dict[str, Any] = {}
        if cleaned is not None and cleaned.changes:
            extra["sanitized"] = dict(cleaned.changes)
            findings = sum(n for kind, n in cleaned.changes.items() if kind not in BENIGN_CHANGES)
            if findings:
                relay.alert(relay.anomaly.sanitized(self.agent, findings, relay.clock()))
        message = relay.new_message(
            self.agent,
            frame.to,
            body,
            thread=frame.thread,
            reply_to=frame.reply_to,
            deliver_at=frame.deliver_at,
        )
        hold = action == HOLD
        future = relay.enqueue(
            message,
            seq_update=seq_update,
            hold=hold,
            send_seq=frame.seq,
            session=session.id,
            **extra,
        )
        future.add_done_callback(lambda f: self._on_committed(f, frame.seq, message, hold, changes))

    def _on_committed(
        self,
        future: asyncio.Future[Any],
        seq: int,
        message: StoredMessage,
        hold: bool,
        changes: list[str],
    ) -> None:
        exc = future.exception()
        if exc is not None:
            self.write(
                Error(
                    code=ErrorCode.UNAVAILABLE.value,
                    seq=seq,
                    message=f"the relay cannot store messages right now: {exc}",
                )
            )
            return
        if hold:
            self.relay.counters.held += 1
            self.write(Held(seq=seq, id=message.id, changes=changes))
            return
        self.write(Accepted(seq=seq, id=message.id, changes=changes))
        self.relay.committed(message)


def _seq_only(seq_update: tuple[str, int]) -> Job:
    return Job(seq_update=seq_update)
