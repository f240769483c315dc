"""One agent connection's protocol state, without I/O: bytes in, events out.

Everything that decides which frame may come when lives here, in one table
(``ALLOWED``), like h11's ``_state.py``:

    phase    accepts                                              otherwise
    hello    hello                                                auth_required, fatal
    ready    send ack fetch subscribe agents ping bye             invalid ("already authenticated")
    closed   nothing (bytes after the close are ignored)

Here too: the ``seq`` rule (a send's seq is exactly last+1; a repeat is a
replay, a gap is out of order), the delivery window of a subscribed
connection, and the ids in flight on it (delivered, not yet acknowledged).

The relay core (``ccc_relay.core``) drives one ``AgentSession`` per connection:
``receive_data`` takes what the socket read, ``next_event`` hands out one
decoded frame (or a ``Rejected`` line) at a time, in the phase current at that
moment, so a hello followed by a send in the same read is judged correctly.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

import msgspec

from ccc_relay.protocol.codec import LineBuffer, decode_client_frame
from ccc_relay.protocol.errors import ErrorCode, ProtocolError, Refusal
from ccc_relay.protocol.frames import (
    Ack,
    Bye,
    ClientFrame,
    Fetch,
    Hello,
    ListAgents,
    Message,
    Ping,
    Send,
    Subscribe,
)

# A frame other than a send never needs more than this; a longer unfinished line
# must show a "send" tag or it is refused before it grows further.
SHORT_LINE_CAP = 64 * 1024
SEND_TAG = b'"send"'
# A line past SHORT_LINE_CAP must arrive at this rate on average, after a grace:
# a megabyte body takes a second at worst, and nobody holds memory by trickling.
MIN_LINE_RATE = 64 * 1024  # bytes per second
LINE_GRACE = 2.0  # seconds
# ... and may not stall: a burst, then silence, would hold its bytes for free.
LINE_STALL = 5.0  # seconds without a byte of a long unfinished line
LONG_NON_SEND = Refusal(
    ErrorCode.TOO_LARGE,
    f"a frame other than send is at most {SHORT_LINE_CAP // 1024} KiB; the connection is closed",
    fatal=True,
)


class Phase(enum.Enum):
    HELLO = "hello"
    READY = "ready"
    CLOSED = "closed"


# The state table: which frames each phase accepts.
ALLOWED: dict[Phase, tuple[type, ...]] = {
    Phase.HELLO: (Hello,),
    Phase.READY: (Send, Ack, Fetch, Subscribe, ListAgents, Ping, Bye),
    Phase.CLOSED: (),
}
# What a frame the phase does not accept is answered with.
WRONG_PHASE: dict[Phase, Refusal] = {
    Phase.HELLO: Refusal(ErrorCode.AUTH_REQUIRED, "say hello before anything else", fatal=True),
    Phase.READY: Refusal(ErrorCode.INVALID, "already authenticated"),
}


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that is not a frame this phase accepts, with the send's seq when
    one can be read (so the client can match the error to its request)."""

    refusal: Refusal
    seq: int | None = None


def seq_refusal(last_seq: int, seq: int) -> Refusal | None:
    """The seq rule: ``seq`` must be exactly ``last_seq + 1``."""
    if seq <= last_seq:
        return Refusal(
            ErrorCode.REPLAY, f"seq {seq} was already used in this session (last was {last_seq})"
        )
    if seq != last_seq + 1:
        return Refusal(
            ErrorCode.OUT_OF_ORDER, f"seq {seq} skips ahead; the next seq is {last_seq + 1}"
        )
    return None


class AgentSession:
    """The protocol state of one agent connection. Plain data: no I/O, no clock."""

    __slots__ = (
        "_buffer",
        "_lines",
        "_partial_is_send",
        "_partial_last",
        "_partial_since",
        "_tail",
        "agent",
        "inflight",
        "phase",
        "session_id",
        "subscribed",
        "wants_signatures",
        "window",
    )

    def __init__(self, line_cap: int) -> None:
        self.phase = Phase.HELLO
        self._buffer = LineBuffer(line_cap)
        self._lines: deque[bytes] = deque()
        self._partial_since = 0.0  # when the unfinished line began to arrive
        self._partial_last = 0.0  # when a byte of it last arrived
        self._partial_is_send = False  # it carries a "send" tag: it may grow to the cap
        self._tail = b""  # the last bytes seen of it, for a tag split across reads
        self.agent: str | None = None
        self.session_id: str | None = None
        self.wants_signatures = False
        self.subscribed = False
        self.window = 0
        self.inflight: dict[str, int] = {}  # message id -> delivery number

    # --- bytes in, events out -------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> Refusal | None:
        """Take bytes from the socket, read at ``now``. A line is refused (fatal)
        before it is buffered whole when it outgrows the cap; when it is past
        ``SHORT_LINE_CAP`` and shows no sign of being a ``send``; or when, that
        long, it arrives slower than ``MIN_LINE_RATE``."""
        if self.phase is Phase.CLOSED:
            return None
        fresh = not self._buffer.pending  # this read starts a new line
        try:
            lines = self._buffer.feed(data)
        except ProtocolError as exc:
            return exc.refusal
        if lines or fresh:
            self._lines.extend(lines)
            self._partial_since = now  # what is left started arriving about now
            self._partial_is_send = False
            self._tail = b""
        if not self._buffer.pending:
            self._tail = b""
            return None
        self._partial_last = now
        if not self._partial_is_send:
            seen = self._tail + data[-self._buffer.pending :]
            self._partial_is_send = SEND_TAG in seen
            self._tail = seen[-len(SEND_TAG) :]
        if self._buffer.pending > SHORT_LINE_CAP and not self._partial_is_send:
            return LONG_NON_SEND
        return self.check_partial(now)

    def check_partial(self, now: float) -> Refusal | None:
        """A long unfinished line must keep arriving (the relay asks this of every
        link from time to time, so a peer that stops sending is caught too)."""
        pending = self._buffer.pending
        if pending <= SHORT_LINE_CAP or self.phase is Phase.CLOSED:
            return None
        if now - self._partial_last > LINE_STALL:
            return Refusal(
                ErrorCode.TOO_SLOW,
                f"a line of {pending} bytes stopped arriving {now - self._partial_last:.0f}s ago; "
                "the connection is closed",
                fatal=True,
            )
        took = now - self._partial_since
        if took > LINE_GRACE and pending < took * MIN_LINE_RATE:
            return Refusal(
                ErrorCode.TOO_SLOW,
                f"a line of {pending} bytes has been arriving for {took:.0f}s; a long line must "
                f"arrive at {MIN_LINE_RATE // 1024} KiB/s or more; the connection is closed",
                fatal=True,
            )
        return None

    def next_event(self) -> ClientFrame | Rejected | None:
        """The next complete frame, judged in the current phase; None when no
        complete line is waiting (or the session is closed)."""
        lines = self._lines
        while lines and self.phase is not Phase.CLOSED:
            line = lines.popleft()
            if not line.strip():
                continue  # blank keep-alive lines are harmless
            try:
                frame = decode_client_frame(line)
            except ProtocolError as exc:
                return Rejected(exc.refusal, salvage_seq(line))
            if not isinstance(frame, ALLOWED[self.phase]):
                seq = frame.seq if isinstance(frame, Send) else None
                return Rejected(WRONG_PHASE[self.phase], seq)
            return frame
        return None

    def next_events(self) -> list[ClientFrame | Rejected]:
        """Every complete frame, judged in the current phase. Before the hello,
        one at a time: the hello changes the phase the next frame is judged in."""
        if self.phase is not Phase.READY:
            event = self.next_event()
            return [] if event is None else [event]
        events: list[ClientFrame | Rejected] = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held right now."""
        return self._buffer.pending

    # --- transitions ------------------------------------------------------------

    def authenticated(self, agent: str, session_id: str, *, wants_signatures: bool) -> None:
        assert self.phase is Phase.HELLO
        self.phase = Phase.READY
        self.agent = agent
        self.session_id = session_id
        self.wants_signatures = wants_signatures

    def subscribe(self, window: int) -> None:
        self.subscribed = True
        self.window = window

    def close(self) -> dict[str, int]:
        """Enter ``closed``; returns what was in flight (it goes back to the queue)."""
        self.phase = Phase.CLOSED
        self._lines.clear()
        inflight, self.inflight = self.inflight, {}
        return inflight

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    # --- the delivery window ------------------------------------------------------

    @property
    def room(self) -> int:
        """How many more messages may be pushed before the agent acknowledges some."""
        return self.window - len(self.inflight)

    def deliver(self, message: Message) -> Message:
        """Record ``message`` as in flight here; returns it for the wire."""
        self.inflight[message.id] = message.delivery
        return message

    def settle(self, ids: list[str]) -> None:
        """Acknowledged messages leave the window."""
        inflight = self.inflight
        for mid in ids:
            inflight.pop(mid, None)


def salvage_seq(line: bytes) -> int | None:
    """The ``seq`` of an invalid ``send`` frame, when one can be read. Never raises."""
    try:
        data = msgspec.json.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    seq = data.get("seq") if isinstance(data, dict) and data.get("type") == "send" else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 else None
