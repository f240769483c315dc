"""The client's half of a session, without I/O: requests out as bytes, bytes in as events.

``RelayClient`` and ``AsyncRelayClient`` each drive one ``ClientSession`` and
only move bytes (like httpx's clients over one ``BaseClient``, or h11). Every
client-side rule of the protocol lives here, once:

* Framing. ``receive_data`` feeds a capped ``LineBuffer``; ``next_event``
  decodes one line at a time, so a frame's effect is never ahead of the frames
  before it.
* Numbering. Sends are numbered ``last_seq + 1, + 2, ...``, where ``last_seq``
  is what the relay's ``welcome`` says (0 for a new session).
* Matching, in one rule:

      accepted, held, group_accepted,      the send numbered N
      error with seq N
      welcome, fetched, acked, agents,     the oldest outstanding request of
      pong                                 that kind (the relay answers each
                                           kind in order)
      error without seq                    the oldest outstanding request that
                                           is not a send (a send's refusal
                                           always carries its seq); with none,
                                           it is a ``Notice`` to the session
      bye                                  a ``Notice``: the relay ends the session
      an answer no request waits for       dropped (its request was abandoned)

* The inbox. A pushed ``message`` waits in ``inbox``; a ``fetched`` answer
  takes every message in the inbox with it, since the relay sends a fetch's
  messages before its ``fetched``.
* Duplicates. Delivery is at least once; a message whose id was seen before
  (on this session object, across reconnects) is dropped, so the agent sees it
  once. Memory is bounded: the oldest of ``SEEN_IDS`` ids is forgotten first.
* Signatures. The session knows no keys: a ``verify`` callable, when given,
  sees every message before anything else does, and whatever it raises
  propagates (the session is then over). With one, ``hello`` asks the relay to
  sign deliveries.

No clock, socket, asyncio or logging here, so it is tested in microseconds.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable

import msgspec

from ccc_relay.protocol.codec import LineBuffer, decode_relay_frame, encode
from ccc_relay.protocol.frames import (
    Accepted,
    Ack,
    Acked,
    AgentList,
    Bye,
    Error,
    Fetch,
    Fetched,
    Goodbye,
    GroupAccepted,
    Held,
    Hello,
    ListAgents,
    Message,
    Ping,
    Pong,
    RelayFrame,
    Send,
    Subscribe,
    Welcome,
)

SEEN_IDS = 65536  # ids remembered to drop redeliveries; bounded so a long-lived client stays small
# The relay's replies are bounded by its own limits: a 16 MB body * 6 + envelope.
REPLY_LINE_CAP = 100 * 1024 * 1024

Answer = Welcome | Accepted | Held | GroupAccepted | Fetched | Acked | AgentList | Pong


class SeenIds:
    """The ids already taken in, oldest forgotten first beyond ``capacity``."""

    __slots__ = ("_capacity", "_ids")

    def __init__(self, capacity: int = SEEN_IDS) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def first_time(self, message_id: str) -> bool:
        """True once per id (while it is remembered); records it."""
        if message_id in self._ids:
            return False
        self._ids[message_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True


# A msgspec Struct, not a dataclass: Claude Code hooks load this module and
# the dataclasses module alone costs them more start-up time than msgspec's Structs.
class Request(msgspec.Struct, eq=False):
    """One request sent and not answered yet.

    Compared by identity, so a client can key its waiters (futures) by it.
    ``answer`` is the frame kind that answers it (a send's is ``Accepted``;
    ``held`` answers a send too); ``seq`` is set for sends only.
    """

    answer: type[Answer]
    seq: int | None = None


class Reply(msgspec.Struct, frozen=True):
    """The relay answered ``request``: with its answer, or with an ``Error``.

    ``messages`` are a fetch's messages (empty for other requests).
    """

    request: Request
    frame: Answer | Error
    messages: tuple[Message, ...] = ()


class Notice(msgspec.Struct, frozen=True):
    """A frame for the session rather than a request: an error no request
    waits for (the session expired, the agent was quarantined...) or ``bye``."""

    frame: Error | Goodbye


Event = Reply | Notice


class ClientSession:
    """See the module docstring for the rules; the methods follow them."""

    def __init__(
        self,
        *,
        verify: Callable[[Message], None] | None = None,
        line_cap: int = REPLY_LINE_CAP,
        seen_capacity: int = SEEN_IDS,
    ) -> None:
        self.inbox: deque[Message] = deque()
        self._verify = verify
        self._line_cap = line_cap
        self._buffer = LineBuffer(line_cap)
        self._lines: deque[bytes] = deque()
        self._seen = SeenIds(seen_capacity)
        self._seq = 0
        self._sends: dict[int, Request] = {}
        self._others: list[Request] = []  # in the order they were sent
        self._abandoned: set[Request] = set()

    @property
    def last_seq(self) -> int:
        """The seq of the last send numbered (the next one is this + 1)."""
        return self._seq

    # --- requests: each returns the bytes to write --------------------------------

    def hello(self, agent: str, credential: str) -> tuple[Request, bytes]:
        # A session that verifies signatures asks the relay to sign; every
        # session asks to see a body the relay changed.
        frame = Hello(
            agent=agent,
            credential=credential,
            signatures=self._verify is not None,
            show_delivered=True,
        )
        return self._other(Welcome), encode(frame)

    def send(
        self,
        to: str,
        body: str,
        *,
        thread: str | None = None,
        reply_to: str | None = None,
        deliver_at: float | None = None,
    ) -> tuple[Request, bytes]:
        self._seq += 1
        request = Request(Accepted, self._seq)
        self._sends[self._seq] = request
        frame = Send(
            seq=self._seq,
            to=to,
            body=body,
            thread=thread,
            reply_to=reply_to,
            deliver_at=deliver_at,
        )
        return request, encode(frame)

    def fetch(self, limit: int = 100) -> tuple[Request, bytes]:
        return self._other(Fetched), encode(Fetch(limit=limit))

    def ack(self, ids: list[str]) -> tuple[Request, bytes]:
        """At most ``MAX_ACK_IDS`` ids; a client splits longer lists."""
        return self._other(Acked), encode(Ack(ids=ids))

    def agents(self) -> tuple[Request, bytes]:
        return self._other(AgentList), encode(ListAgents())

    def ping(self) -> tuple[Request, bytes]:
        return self._other(Pong), encode(Ping())

    def subscribe(self, window: int = 64) -> bytes:
        """No answer: pushed messages follow, into the inbox."""
        return encode(Subscribe(window=window))

    def bye(self) -> bytes:
        """The relay answers with ``bye``, a ``Notice``, and closes."""
        return encode(Bye())

    def abandon(self, request: Request) -> None:
        """The client stopped waiting for ``request`` (a timeout, a cancel, a
        failed write). It stays in line so that its answer, when it comes, is
        not taken for a later request's, but that answer is dropped; an
        abandoned fetch's ``fetched`` takes nothing from the inbox."""
        if self._outstanding(request):
            self._abandoned.add(request)

    def connection_closed(self) -> None:
        """The connection is gone (or a new one starts): no line not yet read and
        no outstanding request survive it (a message in an unread line was not
        taken in; the relay delivers it again). The inbox and the seen ids do:
        messages taken in are not lost, and the relay's redelivery of them on
        the next connection is dropped."""
        self._buffer = LineBuffer(self._line_cap)
        self._lines.clear()
        self._sends.clear()
        self._others.clear()
        self._abandoned.clear()

    # --- what the relay sent -------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the connection, split anywhere. Raises FrameTooLarge
        when a line passes the cap (the connection must then be closed)."""
        self._lines.extend(self._buffer.feed(data))

    def next_event(self) -> Event | None:
        """The next answer or notice among the lines received, or None when
        none is left. Messages met on the way go to the inbox.

        Raises ProtocolError for a line that is not a relay frame, and what
        ``verify`` raises for a message it refuses.
        """
        while self._lines:
            event = self._handle(decode_relay_frame(self._lines.popleft()))
            if event is not None:
                return event
        return None

    @property
    def fetching(self) -> bool:
        """A fetch is outstanding: the messages arriving now are its answer's."""
        return any(r.answer is Fetched and r not in self._abandoned for r in self._others)

    def next_message(self) -> Message | None:
        return self.inbox.popleft() if self.inbox else None

    def take_messages(self) -> list[Message]:
        messages = list(self.inbox)
        self.inbox.clear()
        return messages

    # --- the rules ---------------------------------------------------------------

    def _other(self, answer: type[Answer]) -> Request:
        request = Request(answer)
        self._others.append(request)
        return request

    def _outstanding(self, request: Request) -> bool:
        if request.seq is not None:
            return self._sends.get(request.seq) is request
        return request in self._others

    def _handle(self, frame: RelayFrame) -> Event | None:
        if isinstance(frame, Message):
            self._take_in(frame)
            return None
        if isinstance(frame, Goodbye):
            return Notice(frame)
        request = self._match(frame)
        if request is None:
            if isinstance(frame, Error) and frame.seq is None:
                return Notice(frame)
            return None  # an answer nothing waits for
        if request in self._abandoned:
            self._abandoned.discard(request)
            return None
        if isinstance(frame, Welcome):
            self._seq = frame.last_seq  # numbering continues where the session left off
        messages = tuple(self.take_messages()) if isinstance(frame, Fetched) else ()
        return Reply(request, frame, messages)

    def _match(self, frame: Answer | Error) -> Request | None:
        """The one matching rule: the outstanding request ``frame`` answers, taken."""
        if isinstance(frame, Accepted | Held | GroupAccepted):
            return self._sends.pop(frame.seq, None)
        if isinstance(frame, Error):
            if frame.seq is not None:
                return self._sends.pop(frame.seq, None)
            # Without a seq it is not a send's: every send refusal carries its seq.
            return self._oldest(lambda request: True)
        kind = type(frame)
        return self._oldest(lambda request: request.answer is kind)

    def _oldest(self, fits: Callable[[Request], bool]) -> Request | None:
        """Take the oldest outstanding request (not a send) that ``fits``."""
        for index, request in enumerate(self._others):
            if fits(request):
                del self._others[index]
                return request
        return None

    def _take_in(self, message: Message) -> None:
        if self._verify is not None:
            self._verify(message)  # a refusal ends the session before the inbox sees it
        if self._seen.first_time(message.id):
            self.inbox.append(message)
