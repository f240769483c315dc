"""Federation's decisions, without I/O: what goes to another relay, and what
this relay does with what another relay sends.

* **Out**: a message for ``bob@h2`` that this relay accepted becomes a signed
  ``Envelope`` in an ``OutboxEntry`` (``Federation.outbound``), committed with
  the message's ``accepted`` line and answered once the stream holds it.
* **In**: bytes from the stream are trusted for nothing until
  ``Federation.open`` has decoded them, checked the signature against the key
  registered for the claimed host and that they are addressed to this host.
  Then ``decide_arrivals`` judges each message as a local send is judged --
  size, the pair policy for ``alice@h1 -> bob``, the rate limits of that remote
  address, sanitising, the recipient's queue -- and returns what to store in
  one transaction: messages, held ones, the ids seen, the signed refusals to
  send back, and the audit lines naming the remote relay (``via``) and the
  verified sender. A refusal from another relay becomes a message to the
  original sender from ``relay@<that host>`` -- only for a message this relay
  sent to that host (``sent``), once, and within its sender's queue cap.
* **Freshness**: an envelope older than ``MAX_AGE`` or more than ``MAX_AHEAD``
  in the future is refused: its key may have left ``federation_seen``
  (``SEEN_KEPT``), so it could otherwise be delivered a second time.

The relay core calls this module; it never calls back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec

from ccc_relay.audit.records import AuditRecord
from ccc_relay.core.admission import Admission
from ccc_relay.core.checks import clean_thread, findings, size_refusal
from ccc_relay.core.shares import Shares
from ccc_relay.policy.acl import HOLD, Policy
from ccc_relay.policy.anomaly import Alert, AnomalyDetector
from ccc_relay.policy.config_types import FederationConfig, Limits
from ccc_relay.policy.sanitize import Sanitized, SanitizeOptions, sanitize
from ccc_relay.protocol.errors import ErrorCode, Refusal
from ccc_relay.protocol.federation import (
    MAX_REASON,
    Envelope,
    EnvelopeError,
    decode_envelope,
    encode_envelope,
    signed_bytes,
)
from ccc_relay.protocol.names import split_address
from ccc_relay.store.records import AgentRecord, OutboxEntry, StoredMessage

RELAY = "relay"  # the name a relay's own notices come from: relay@<host>
DAY = 86400.0
# Keys of stored envelopes (federation_seen) and the ids sent to each host
# (federation_sent) are kept this long, then swept.
SEEN_KEPT = 30 * DAY
# An envelope older than this is refused: its key may be swept already, so a
# captured copy must be too old to pass. A day short of SEEN_KEPT, for clocks
# and for a sweep that runs hourly.
MAX_AGE = SEEN_KEPT - DAY
MAX_AHEAD = 600.0  # seconds an envelope's sent_at may be ahead of this clock


@dataclass(slots=True)
class Opened:
    """Stream bytes judged: the envelope when it may be believed, else why not
    (``claimed``: the host it says it is from, for the audit)."""

    envelope: Envelope | None
    problem: str | None = None
    code: str = ErrorCode.INVALID.value
    claimed: str | None = None
    verified: bool = False  # signed by the claimed host: a refusal may be sent back


@dataclass(slots=True)
class Arrivals:
    """What one batch from the stream leaves to store, in one transaction."""

    messages: list[StoredMessage] = field(default_factory=list)
    held: list[StoredMessage] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)
    # (id, host) of sent messages a refusal was accepted for: forgotten with the
    # batch, so each id bounces once.
    bounced: list[tuple[str, str]] = field(default_factory=list)
    # Keys (from_host/stream id) of refusals not believed: terminated, not acked.
    dropped: set[str] = field(default_factory=set)
    # What the anomaly rules are to see of the batch's senders: shown to them once
    # the batch is stored, so a batch the stream redelivers is seen once.
    observed: list[Observation] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Observation:
    """One event for the anomaly rules: a ``refused`` code, an ``accepted``
    message (``detail``: its recipient), or ``sanitized`` findings (a count)."""

    kind: Literal["refused", "accepted", "sanitized"]
    sender: str  # whom it counts against: a named remote sender, or relay@HOST
    detail: str | int

    def shown_to(self, anomaly: AnomalyDetector, now: float) -> list[Alert]:
        if self.kind == "refused":
            return anomaly.refused(self.sender, str(self.detail), now)
        if self.kind == "accepted":
            return anomaly.accepted(self.sender, str(self.detail), now)
        return anomaly.sanitized(self.sender, int(self.detail), now)


@dataclass(frozen=True, slots=True)
class Cleaned:
    """Bodies the shell sanitised beforehand, off the event loop, with ``options``:
    ``bodies[i]`` is the ``i``-th envelope's (None: left to the core)."""

    options: SanitizeOptions
    bodies: Sequence[Sanitized | None]


class Desk(Protocol):
    """What ``decide_arrivals`` needs of the relay core."""

    limits: Limits
    agents: dict[str, AgentRecord]
    admission: Admission
    shares: Shares

    @property
    def policy(self) -> Policy: ...

    def minted_here(self, message_id: str) -> bool: ...

    def new_message(
        self,
        sender: str,
        recipient: str,
        body: str,
        now: float,
        *,
        thread: str | None = None,
        reply_to: str | None = None,
        deliver_at: float | None = None,
    ) -> StoredMessage: ...

    def message_record(
        self, message: StoredMessage, now: float, event: str, **extra: Any
    ) -> AuditRecord: ...


class Federation:
    def __init__(
        self,
        config: FederationConfig,
        sign: Callable[[bytes], str],
        verify: Callable[[str, bytes, str], bool],
    ) -> None:
        """``sign``: this relay's key over bytes; ``verify(host, data, sig)``:
        whether ``host``'s registered key signed ``data``."""
        self.config = config
        self.host = config.host
        self._sign = sign
        self._verify = verify

    def local(self, address: str) -> str:
        """``bob@<this host>`` is local ``bob``; any other address as it is."""
        name, host = split_address(address)
        return name if host == self.host else address

    # --- out ---------------------------------------------------------------------------

    def outbound(self, message: StoredMessage, now: float) -> OutboxEntry:
        """The signed envelope of an accepted message for ``name@host``."""
        name, host = split_address(message.recipient)
        assert host is not None
        envelope = Envelope(
            kind="message",
            id=message.id,
            from_host=self.host,
            to_host=host,
            sender=message.sender,
            recipient=name,
            sent_at=message.sent_at,
            body=message.body,
            thread=message.thread,
            reply_to=message.reply_to,
            deliver_at=message.deliver_at,
        )
        return self._entry(envelope, message.sender, message.recipient, now)

    def refusal(self, envelope: Envelope, refusal: Refusal, now: float) -> OutboxEntry:
        """The signed notice that ``envelope``'s message was refused here, for its
        sender's relay."""
        notice = Envelope(
            kind="refused",
            id=envelope.id,
            from_host=self.host,
            to_host=envelope.from_host,
            sender=envelope.recipient,
            recipient=envelope.sender,
            sent_at=now,
            code=refusal.code.value,
            reason=refusal.message[:MAX_REASON],
        )
        return self._entry(notice, RELAY, envelope.sender_address, now)

    def rejection(self, held: StoredMessage, reason: str, now: float) -> OutboxEntry:
        """The signed notice that the operator here rejected ``held``, a message
        from another relay's agent, for that relay (its sender hears it from
        ``relay@<this host>``)."""
        name, host = split_address(held.sender)
        assert host is not None
        notice = Envelope(
            kind="refused",
            id=held.id,
            from_host=self.host,
            to_host=host,
            sender=held.recipient,
            recipient=name,
            sent_at=now,
            code=ErrorCode.FORBIDDEN.value,
            reason=reason[:MAX_REASON],
        )
        return self._entry(notice, RELAY, held.sender, now)

    def _entry(self, envelope: Envelope, sender: str, recipient: str, now: float) -> OutboxEntry:
        signed = msgspec.structs.replace(envelope, sig=self._sign(signed_bytes(envelope)))
        return OutboxEntry(
            stream_id=signed.stream_id,
            to_host=signed.to_host,
            sender=sender,
            recipient=recipient,
            size=len(signed.body.encode()),
            payload=encode_envelope(signed),
            created=now,
        )

    # --- in ----------------------------------------------------------------------------

    def open(self, data: bytes) -> Opened:
        """Decode and authenticate stream bytes; nothing in them is believed before."""
        try:
            envelope = decode_envelope(data)
        except EnvelopeError as exc:
            return Opened(None, str(exc))
        claimed = envelope.from_host
        if not self._verify(claimed, signed_bytes(envelope), envelope.sig):
            return Opened(
                None,
                f"not signed by a key registered for {claimed!r} (federation.peers)",
                ErrorCode.AUTH_FAILED.value,
                claimed,
            )
        if envelope.to_host != self.host:
            return Opened(
                None,
                f"addressed to host {envelope.to_host!r}, not to this relay ({self.host!r})",
                ErrorCode.INVALID.value,
                claimed,
                verified=True,
            )
        return Opened(envelope, claimed=claimed, verified=True)

    def open_and_clean(self, payloads: list[bytes], limits: Limits) -> tuple[list[Opened], Cleaned]:
        """Each payload opened, and the body of each believed message that could be
        accepted sanitised, in the order of the envelopes: what a worker thread does
        for a big batch (``decide_arrivals`` takes the bodies)."""
        opened = [self.open(data) for data in payloads]
        options = limits.sanitize
        bodies = [
            sanitize(envelope.body, options)
            if options.enabled
            and envelope.kind == "message"
            and len(envelope.body) <= limits.max_message_size  # else refused as too large
            else None
            for envelope in (o.envelope for o in opened)
            if envelope is not None
        ]
        return opened, Cleaned(options, bodies)


def decide_arrivals(
    desk: Desk,
    federation: Federation,
    envelopes: Iterable[Envelope],
    seen: set[str],
    in_use: set[str],
    sent: dict[str, str],
    now: float,
    cleaned: Cleaned | None = None,
) -> Arrivals:
    """Judge authenticated envelopes as local sends are judged; ``seen``: keys
    (``from_host/stream id``) stored before, dropped; ``in_use``: message ids
    another message holds already, refused; ``sent``: ``host/id`` of messages
    this relay sent to that host and that have not bounced, with their local
    sender (only a refusal of one of those is believed); ``cleaned``: bodies
    the shell sanitised beforehand, used while the sanitiser's options are still
    the ones they were cleaned with."""
    out = Arrivals()
    taken = set(seen)
    unbounced = dict(sent)
    # The anomaly rules watch each remote sender a pair here names; the others a
    # relay may claim are counted against that relay (relay@host), so a peer
    # cannot make this relay remember names without end.
    named = {sender for sender, _recipient in desk.policy.pairs if "@" in sender}
    bodies: Sequence[Sanitized | None] = ()
    if cleaned is not None and cleaned.options == desk.limits.sanitize:
        bodies = cleaned.bodies  # else a reload changed the rules meanwhile: clean again
    for index, envelope in enumerate(envelopes):
        key = f"{envelope.from_host}/{envelope.stream_id}"
        if key in taken:
            continue  # delivered again after a crash between commit and ack: once is enough
        taken.add(key)
        out.seen.append(key)
        stale = _stale(envelope, now)
        if envelope.kind == "refused":
            if stale is not None:
                out.audit.append(_bounce_dropped(envelope, stale.message, now))
                out.dropped.add(key)
            else:
                _bounce(desk, envelope, unbounced, out, now)
            continue
        refusal = stale or _arrival_refusal(desk, envelope, in_use, now)
        watched = _watched(envelope, named)
        if isinstance(refusal, Refusal):
            _refuse(federation, envelope, refusal, out, now)
            out.observed.append(Observation("refused", watched, refusal.code.value))
            continue
        body = bodies[index] if index < len(bodies) else None
        _accept(desk, federation, envelope, refusal, out, now, watched, body)
    return out


def _watched(envelope: Envelope, named: set[str]) -> str:
    """Whom the anomaly rules count an envelope's message against."""
    address = envelope.sender_address
    return address if address in named else f"{RELAY}@{envelope.from_host}"


def _arrival_refusal(desk: Desk, envelope: Envelope, in_use: set[str], now: float) -> Refusal | str:
    too_large = size_refusal(envelope.body, desk.limits.max_message_size, closes=False)
    if too_large is not None:
        return too_large
    if envelope.id in in_use:
        return Refusal(ErrorCode.INVALID, f"message id {envelope.id} is in use there already")
    if desk.minted_here(envelope.id):
        # The arrival keeps its id (replies and refusals on both sides name one
        # message), and ids are unique in relay.db: an id of the form this relay
        # mints now could take one of its own future messages' ids and fail that
        # commit. Another relay's ids carry its own random run prefix, so only a
        # made-up id is refused here.
        return Refusal(ErrorCode.INVALID, f"message id {envelope.id} is of this relay's own form")
    return desk.admission.check_arrival(
        envelope.sender_address, envelope.recipient, envelope.deliver_at, now
    )


def _accept(
    desk: Desk,
    federation: Federation,
    envelope: Envelope,
    action: str,
    out: Arrivals,
    now: float,
    watched: str,
    cleaned: Sanitized | None = None,
) -> None:
    sender = envelope.sender_address
    recipient = envelope.recipient
    options = desk.limits.sanitize
    if not options.enabled:
        cleaned = None
    elif cleaned is None:  # not sanitised beforehand (a small batch)
        cleaned = sanitize(envelope.body, options)
    body = envelope.body if cleaned is None else cleaned.text
    size = len(body.encode())
    hold = action == HOLD
    if not hold:
        full = desk.shares.queue_refusal(sender, recipient, size)
        if full is not None:
            _refuse(federation, envelope, full, out, now)
            out.observed.append(Observation("refused", watched, full.code.value))
            return
        desk.shares.queued(sender, recipient, size)
    message = desk.new_message(
        sender,
        recipient,
        body,
        now,
        thread=clean_thread(envelope.thread) if envelope.thread else None,
        reply_to=envelope.reply_to,
        deliver_at=envelope.deliver_at,
    )
    # The sender's id travels with it: replies and acks on both sides name one message.
    message = msgspec.structs.replace(message, id=envelope.id, sent_at=envelope.sent_at)
    extra: dict[str, Any] = {"via": envelope.from_host}
    if cleaned is not None and cleaned.changes:
        extra["sanitized"] = dict(cleaned.changes)
    out.audit.append(desk.message_record(message, now, "held" if hold else "accepted", **extra))
    (out.held if hold else out.messages).append(message)
    out.observed.append(Observation("accepted", watched, recipient))
    found = findings(cleaned)
    if found:
        out.observed.append(Observation("sanitized", watched, found))


def _refuse(
    federation: Federation, envelope: Envelope, refusal: Refusal, out: Arrivals, now: float
) -> None:
    out.audit.append(_refused_line(envelope, refusal, now))
    out.outbox.append(federation.refusal(envelope, refusal, now))


def _refused_line(envelope: Envelope, refusal: Refusal, now: float) -> AuditRecord:
    return AuditRecord(
        now,
        "federation_refused",
        {
            "id": envelope.id,
            "from": envelope.sender_address,
            "to": envelope.recipient,
            "via": envelope.from_host,
            "code": refusal.code.value,
            "reason": refusal.message,
            "verified": True,
        },
    )


def _stale(envelope: Envelope, now: float) -> Refusal | None:
    """Too old to be told from a replay once its key is swept, or from the future."""
    if envelope.sent_at < now - MAX_AGE:
        return Refusal(
            ErrorCode.INVALID,
            f"sent more than {MAX_AGE / DAY:g} days ago: too old to be told from a replay",
        )
    if envelope.sent_at > now + MAX_AHEAD:
        return Refusal(
            ErrorCode.INVALID,
            f"sent more than {MAX_AHEAD:g} s in the future: check the clocks of both relays",
        )
    return None


def _bounce_line(envelope: Envelope) -> dict[str, Any]:
    return {
        "id": envelope.id,
        "from": f"{RELAY}@{envelope.from_host}",
        "to": envelope.recipient,  # the original sender, an agent here
        "via": envelope.from_host,
        "recipient": envelope.sender_address,  # whom the message was for
        "code": envelope.code,
        "reason": envelope.reason,
    }


def _bounce_dropped(envelope: Envelope, why: str, now: float) -> AuditRecord:
    return AuditRecord(now, "federation_bounce_dropped", {**_bounce_line(envelope), "why": why})


def _bounce(
    desk: Desk, envelope: Envelope, unbounced: dict[str, str], out: Arrivals, now: float
) -> None:
    """Another relay refused a message of ours: tell its sender, as ``relay@host``.
    Believed only for a message this relay sent that host (and its sender), once."""
    sender = f"{RELAY}@{envelope.from_host}"
    to = envelope.recipient
    key = f"{envelope.from_host}/{envelope.id}"
    if unbounced.get(key) != to:
        why = f"no message {envelope.id} from {to} was sent to {envelope.from_host}, or it bounced"
        out.audit.append(_bounce_dropped(envelope, why, now))
        out.dropped.add(f"{envelope.from_host}/{envelope.stream_id}")
        return
    del unbounced[key]
    out.bounced.append((envelope.id, envelope.from_host))
    if to not in desk.agents:
        out.audit.append(_bounce_dropped(envelope, f"no agent {to} here now", now))
        return
    body = (
        f"your message {envelope.id} to {envelope.sender_address} was refused by "
        f"{envelope.from_host}'s relay: {envelope.code}: {envelope.reason}"
    )
    options = desk.limits.sanitize
    if options.enabled:  # the reason is another relay's text
        body = sanitize(body, options).text
    size = len(body.encode())
    full = desk.shares.queue_refusal(sender, to, size)
    if full is not None:
        out.audit.append(_bounce_dropped(envelope, full.message, now))
        return
    message = desk.new_message(sender, to, body, now, reply_to=envelope.id)
    desk.shares.queued(sender, to, size)
    out.messages.append(message)
    out.audit.append(
        AuditRecord(now, "federation_bounce", {**_bounce_line(envelope), "notice": message.id})
    )
