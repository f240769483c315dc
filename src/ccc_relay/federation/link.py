"""The relay's link to NATS JetStream: connect, ensure the stream and consumer, fetch, publish.

All of federation's network I/O lives here and nothing else does: the link moves
opaque payloads to ``ccc.v1.<host>`` and hands the ones for its own host to a
callback, which acks each after its local commit. It knows nothing of envelopes,
signatures, policy or the store.

One connection at a time, made by ``run``; when it breaks, ``run`` closes it, waits
(1 s doubling to 30 s) and connects again, forever, until cancelled. nats-py's own
reconnect is off so that "connected" means one thing: the stream and this relay's
durable consumer were ensured on the current connection and a publish can be acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from ccc_relay.federation.subjects import (
    STREAM_SUBJECTS,
    check_host,
    consumer_name,
    inbox_prefix,
    subject_for,
)

# At most this many messages are handed to deliver() at once: bounds what one round holds.
FETCH_BATCH = 256
# A fetch with nothing to read returns after this long, so the loop notices a closed
# connection and refreshes status() at least this often.
FETCH_WAIT = 1.0
BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
# The JetStream API (stream/consumer info and create) answers in milliseconds; this
# only bounds a server that does not answer at all.
API_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
# A half-open TCP connection is noticed after about PING_INTERVAL * MAX_OUTSTANDING_PINGS.
PING_INTERVAL = 10.0
MAX_OUTSTANDING_PINGS = 3
# How long the stream remembers a Nats-Msg-Id: a publish repeated within it is stored once.
DUPLICATE_WINDOW = 600.0
# A message not acked in this long is delivered again (the relay acks after its commit).
DEFAULT_ACK_WAIT = 30.0
GIVE_BACK_WAIT = 1.0  # seconds a stopping relay spends handing back an unfinished batch
# Messages delivered and not yet acked, per consumer: a few batches' worth.
MAX_ACK_PENDING = 4 * FETCH_BATCH
# The consumer and stream figures in status() are refreshed at most this often.
STATUS_REFRESH = 5.0
# An error text in status() is cut here: it is for a human, and must not grow
# (a refused stream's names every setting that differs, and the fix).
MAX_ERROR_TEXT = 600


class LinkDown(Exception):
    """The link is not connected now (never was, or lost the connection)."""


class PublishFailed(Exception):
    """Connected, but JetStream did not ack the publish (timeout or a JetStream error)."""


class LinkSettings(Protocol):
    """What the link reads from the relay's ``FederationConfig``."""

    @property
    def host(self) -> str: ...
    @property
    def servers(self) -> tuple[str, ...]: ...
    @property
    def tls_ca(self) -> Path | None: ...
    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...
    @property
    def nkey_seed(self) -> Path | None: ...
    @property
    def credentials(self) -> Path | None: ...
    @property
    def stream(self) -> str: ...


@dataclass
class InboundMessage:
    """One message for this host, fetched from its durable consumer.

    ``ack`` after the local commit; ``term`` for one refused for good; the link gives
    back what a stopping relay did not settle. Each is best effort: when the link is
    down the message simply comes again after the ack wait (the receiving store drops
    what it has already committed).
    """

    data: bytes
    subject: str
    msg_id: str  # the Nats-Msg-Id header ("" when absent): see publish_id()
    delivery_count: int = 1  # 2 and more: delivered before and not acked in time
    _msg: Msg | None = field(default=None, repr=False, compare=False)
    settled: bool = field(default=False, compare=False)  # acked, termed or given back

    async def ack(self) -> None:
        await self._settle("ack")

    async def term(self) -> None:
        await self._settle("term")

    async def give_back(self) -> None:
        """Not taken: the server may deliver it again at once, not after the ack wait."""
        await self._settle("nak")

    async def _settle(self, how: str) -> None:
        if self._msg is None or self.settled:
            return
        self.settled = True
        settle = {"ack": self._msg.ack, "term": self._msg.term, "nak": self._msg.nak}[how]
        try:
            await settle()
        except nats.errors.MsgAlreadyAckdError:
            pass
        except (nats.errors.Error, OSError):
            pass  # link lost: redelivered after the ack wait, dropped as a duplicate


def _describe(exc: BaseException) -> str:
    """An error for status(): its type and text, short (nats-py's texts carry no secrets)."""
    text = str(exc).strip()
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return described[:MAX_ERROR_TEXT]


def _explain_connect_error(exc: BaseException) -> str:
    """A failed connect in the operator's words, then what nats-py or ssl said."""
    text = str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = "the NATS server's certificate is not signed by federation.tls.ca"
    elif isinstance(exc, ssl.SSLError):
        hint = "the NATS server refused this relay's TLS client certificate (federation.tls)"
    elif "authorization violation" in text.lower():
        hint = "the NATS server refused this relay's NKEY or credentials (federation.nkey_seed)"
    elif isinstance(exc, BrokenPipeError | ConnectionResetError):
        hint = (
            "the NATS server closed the connection while it was made "
            "(a client certificate it does not trust ends this way)"
        )
    elif isinstance(exc, ConnectionRefusedError):
        hint = "nothing listens at the NATS address (federation.servers)"
    else:
        return _describe(exc)
    return f"{hint}: {_describe(exc)}"[:MAX_ERROR_TEXT]


def publish_id(payload: bytes) -> str:
    """The ``Nats-Msg-Id`` of a publish: the payload's SHA-256, in hex.

    JetStream drops a second publish of an id within the duplicate window across the
    whole stream, and every relay may publish to every ``ccc.v1.*`` subject; an id
    another relay can guess (the bare message id) could be published first and make
    this relay's message vanish as a "duplicate". The payload carries this relay's
    signature, so no one can compute its hash before the envelope exists, and the same
    envelope published again (after a lost ack) has the same id.
    """
    return hashlib.sha256(payload).hexdigest()


def expected_stream(name: str, replicas: int) -> StreamConfig:
    """The stream federation needs (created by the first relay, or by the operator)."""
    return StreamConfig(
        name=name,
        subjects=[STREAM_SUBJECTS],
        storage=StorageType.FILE,
        # Each host's subject has one consumer; a message is gone once acked.
        retention=RetentionPolicy.WORK_QUEUE,
        duplicate_window=DUPLICATE_WINDOW,
        num_replicas=replicas,
    )


def _unlimited(value: object) -> bool:
    return value is None or value == -1


def stream_problems(found: StreamConfig, replicas: int) -> list[str]:
    """The settings of an existing stream that differ from what federation needs.

    Whoever creates the stream first decides its configuration, and a relay can
    neither update nor delete it: a stream that copies messages elsewhere (republish,
    mirror, sources), stores them under other subjects, drops them (age, count and
    size limits), lets a publisher purge a subject (rollup headers), or keeps fewer
    replicas than this relay expects must not be used. Empty: the stream is fine.
    """
    problems: list[str] = []
    if list(found.subjects or []) != [STREAM_SUBJECTS]:
        problems.append(f"subjects (must be exactly [{STREAM_SUBJECTS!r}])")
    if found.retention != RetentionPolicy.WORK_QUEUE:
        problems.append("retention (must be workqueue)")
    if found.storage != StorageType.FILE:
        problems.append("storage (must be file)")
    if not found.duplicate_window or abs(found.duplicate_window - DUPLICATE_WINDOW) > 0.001:
        problems.append(f"duplicate_window (must be {DUPLICATE_WINDOW:g} s)")
    if (found.num_replicas or 1) < replicas:
        problems.append(f"num_replicas (at least {replicas})")
    for limit in ("max_msgs", "max_bytes", "max_msgs_per_subject", "max_msg_size"):
        if not _unlimited(getattr(found, limit)):
            problems.append(f"{limit} (must be unlimited)")
    if found.max_age:
        problems.append("max_age (must be 0)")
    if found.discard not in (None, DiscardPolicy.OLD) or found.discard_new_per_subject:
        problems.append("discard (must be old)")
    for copy in ("republish", "mirror", "sources", "subject_transform"):
        if getattr(found, copy):
            problems.append(f"{copy} (must be absent)")
    for flag in ("sealed", "no_ack", "allow_rollup_hdrs", "allow_msg_counter"):
        if getattr(found, flag):
            problems.append(f"{flag} (must be false)")
    if found.persist_mode not in (None, "default"):
        problems.append("persist_mode (must be default)")
    return problems


def tls_context(settings: LinkSettings) -> ssl.SSLContext | None:
    """The mutual-TLS context: verify the server against ``tls_ca``, present ``tls_cert``."""
    if settings.tls_ca is None and settings.tls_cert is None:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.tls_ca) if settings.tls_ca else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_cert is not None:
        key = str(settings.tls_key) if settings.tls_key else None
        context.load_cert_chain(str(settings.tls_cert), key)
    return context


class FederationLink:
    """The NATS JetStream link of one relay (host ``config.host``)."""

    def __init__(
        self,
        config: LinkSettings,
        *,
        on_change: Callable[[], None] | None = None,
        ack_wait: float = DEFAULT_ACK_WAIT,
        stream_replicas: int | None = None,
    ) -> None:
        """``ack_wait`` is used when this link creates its consumer (tests shorten it);
        ``stream_replicas`` when it creates the stream (default: one per listed server,
        at most three)."""
        self._config = config
        self._host = check_host(config.host)
        self._stream = config.stream
        self._on_change = on_change
        self._ack_wait = ack_wait
        self._replicas = stream_replicas or max(1, min(3, len(config.servers)))
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connected = False
        self._connects = 0
        self._generation = 0
        self._last_error: str | None = None
        self._server: str | None = None
        self._stream_state: dict[str, object] | None = None
        self._consumer_state: dict[str, object] | None = None
        self._refreshed_at = 0.0
        self._published = 0
        self._duplicates = 0
        self._publish_failures = 0

    # --- state -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def max_payload(self) -> int | None:
        """The largest payload the connected server takes (1 MB by default), else None."""
        nc = self._nc
        return nc.max_payload if nc is not None and self._connected else None

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if not connected:
            self._js = None
            self._server = None
        if self._on_change is not None:
            self._on_change()

    def status(self) -> dict[str, object]:
        """The connection, the stream, this relay's consumer (lag), counters, the last error."""
        return {
            "host": self._host,
            "connected": self._connected,
            "server": self._server,
            "max_payload": self.max_payload,
            "stream": self._stream_state or {"name": self._stream},
            "consumer": self._consumer_state or {"name": consumer_name(self._host)},
            "reconnects": max(0, self._connects - 1),
            "published": self._published,
            "duplicates": self._duplicates,
            "publish_failures": self._publish_failures,
            "last_error": self._last_error,
        }

    # --- connection ----------------------------------------------------------------------

    async def _connect(self) -> Client:
        config = self._config
        # A late callback from a connection already replaced must not mark the new one down.
        self._generation += 1
        generation = self._generation

        async def on_gone() -> None:
            if generation == self._generation:
                self._set_connected(False)

        options: dict[str, Any] = {
            "servers": list(config.servers),
            "name": f"ccc-relay {self._host}",
            "inbox_prefix": inbox_prefix(self._host),
            "connect_timeout": CONNECT_TIMEOUT,
            "ping_interval": PING_INTERVAL,
            "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
            # run() reconnects; nats-py only tries each listed server twice per attempt.
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.1,
            "error_cb": self._on_error,
            "disconnected_cb": on_gone,
            "closed_cb": on_gone,
        }
        context = tls_context(config)
        if context is not None:
            options["tls"] = context
        if config.nkey_seed is not None:
            options["nkeys_seed"] = str(config.nkey_seed)
        elif config.credentials is not None:
            options["user_credentials"] = str(config.credentials)
        return await nats.connect(**options)

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = _describe(exc) if self._connected else _explain_connect_error(exc)

    async def _ensure(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        """The stream and this relay's durable consumer, created when absent, never changed."""
        try:
            info = await js.stream_info(self._stream)
        except nats.js.errors.NotFoundError:
            try:
                info = await js.add_stream(expected_stream(self._stream, self._replicas))
            except TimeoutError:  # what a permissions violation looks like to a request
                raise LinkDown(
                    f"stream {self._stream} does not exist and this relay could not create "
                    "it (no answer: its NATS user may not): the NATS operator creates it as "
                    "docs/federation.md step 3 shows; the relay retries"
                ) from None
        problems = stream_problems(info.config, self._replicas)
        if problems:
            raise LinkDown(
                f"stream {self._stream} is not set up as federation needs, so this relay does "
                f"not use it: {'; '.join(problems)}. The NATS operator must delete it and "
                "create it as docs/federation.md step 3 shows (messages in it are lost); "
                "the relay retries"
            )
        self._note_stream(info.state.messages, info.state.bytes, info.config.num_replicas)
        name, subject = consumer_name(self._host), subject_for(self._host)
        try:
            consumer = await js.consumer_info(self._stream, name)
        except nats.js.errors.NotFoundError:
            consumer = await js.add_consumer(
                self._stream,
                ConsumerConfig(
                    name=name,
                    durable_name=name,
                    filter_subject=subject,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self._ack_wait,
                    max_deliver=-1,
                    max_ack_pending=MAX_ACK_PENDING,
                ),
            )
        if consumer.config.filter_subject != subject:
            raise LinkDown(
                f"consumer {name} reads {consumer.config.filter_subject!r}, not {subject!r}: "
                "delete it on the NATS server and restart the relay"
            )
        self._note_consumer(
            consumer.num_pending, consumer.num_ack_pending, consumer.num_redelivered
        )
        return await js.pull_subscribe_bind(consumer=name, stream=self._stream)

    def _note_stream(self, messages: int | None, size: int | None, replicas: int | None) -> None:
        self._stream_state = {
            "name": self._stream,
            "messages": messages,
            "bytes": size,
            "replicas": replicas,
        }

    def _note_consumer(
        self, pending: int | None, ack_pending: int | None, redelivered: int | None
    ) -> None:
        self._consumer_state = {
            "name": consumer_name(self._host),
            "num_pending": pending,
            "num_ack_pending": ack_pending,
            "num_redelivered": redelivered,
        }
        self._refreshed_at = time.monotonic()

    async def _refresh(self, js: JetStreamContext) -> None:
        """Fresher figures for status(); a failure keeps the old ones (a cluster electing a
        leader answers late) -- a lost connection is noticed by the fetch loop, not here."""
        if time.monotonic() - self._refreshed_at < STATUS_REFRESH:
            return
        self._refreshed_at = time.monotonic()
        try:
            info = await js.stream_info(self._stream)
            self._note_stream(info.state.messages, info.state.bytes, info.config.num_replicas)
            consumer = await js.consumer_info(self._stream, consumer_name(self._host))
        except (TimeoutError, nats.errors.Error) as exc:
            self._last_error = _describe(exc)
            return
        self._note_consumer(
            consumer.num_pending, consumer.num_ack_pending, consumer.num_redelivered
        )

    # --- the loop ------------------------------------------------------------------------

    async def run(self, deliver: Callable[[list[InboundMessage]], Awaitable[None]]) -> None:
        """Stay connected and hand this host's messages to ``deliver``, until cancelled.

        ``deliver`` gets up to FETCH_BATCH messages at a time and is awaited before the
        next fetch; it acks (or terms) each. An exception from ``deliver`` closes the
        connection and propagates (unacked messages come again after the ack wait).
        Link errors never propagate: they are kept for status() and retried.
        """
        delay = BACKOFF_MIN
        while True:
            nc: Client | None = None
            try:
                nc = await self._connect()
                js = nc.jetstream(timeout=API_TIMEOUT)
                subscription = await self._ensure(js)
                self._nc, self._js = nc, js
                url = nc.connected_url
                self._server = f"{url.hostname}:{url.port}" if url is not None else None
                self._connects += 1
                self._set_connected(True)
                delay = BACKOFF_MIN
                await self._consume(nc, js, subscription, deliver)
            except _DeliverFailed as failed:
                raise failed.error from None
            except (TimeoutError, nats.errors.Error, OSError, LinkDown) as exc:
                if nc is None:  # connecting: nats-py's NoServersError hides the cause
                    if not isinstance(exc, nats.errors.NoServersError):
                        self._last_error = _explain_connect_error(exc)
                else:
                    self._last_error = _describe(exc)
            finally:
                self._set_connected(False)
                self._nc = None
                if nc is not None:
                    await _close(nc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _consume(
        self,
        nc: Client,
        js: JetStreamContext,
        subscription: JetStreamContext.PullSubscription,
        deliver: Callable[[list[InboundMessage]], Awaitable[None]],
    ) -> None:
        """Fetch and deliver until the connection is gone (returns) or breaks (raises)."""
        while nc.is_connected:
            try:
                msgs = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT)
            except TimeoutError:
                msgs = []  # nothing to read (a dead connection shows as not is_connected)
            if msgs:
                batch = [
                    InboundMessage(
                        data=m.data,
                        subject=m.subject,
                        msg_id=(m.headers or {}).get("Nats-Msg-Id", ""),
                        delivery_count=m.metadata.num_delivered or 1,
                        _msg=m,
                    )
                    for m in msgs
                ]
                try:
                    await deliver(batch)
                except asyncio.CancelledError:
                    # The relay is stopping with this batch in hand: what it did not
                    # settle comes again as soon as it reads again, not after the ack wait.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            asyncio.gather(*(m.give_back() for m in batch)), GIVE_BACK_WAIT
                        )
                    raise
                except Exception as exc:
                    raise _DeliverFailed(exc) from exc
            await self._refresh(js)
        raise LinkDown("the connection to the NATS server was lost")

    # --- publishing ----------------------------------------------------------------------

    async def publish(
        self,
        to_host: str,
        msg_id: str,
        payload: bytes,
        *,
        timeout: float,  # noqa: ASYNC109 -- the publish-ack wait, nats-py's request timeout
    ) -> None:
        """Publish ``payload`` for ``to_host``; return once JetStream has stored it.

        ``msg_id`` is for logs; the ``Nats-Msg-Id`` is ``publish_id(payload)``. A
        publish JetStream recognises as a duplicate (the same payload within the
        duplicate window) returns too: it was stored before. Raises LinkDown when not
        connected (or the connection breaks meanwhile), PublishFailed when connected
        but no publish-ack came in ``timeout`` seconds or JetStream refused it, and
        ValueError for a ``to_host`` that cannot be a subject token.
        """
        subject = subject_for(to_host)
        js = self._js
        if js is None or not self._connected:
            raise LinkDown("not connected to NATS")
        try:
            ack = await js.publish(
                subject,
                payload,
                timeout=timeout,
                stream=self._stream,
                headers={"Nats-Msg-Id": publish_id(payload)},
            )
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as e:
            self._publish_failures += 1
            raise LinkDown("the connection to NATS was lost during the publish") from e
        except TimeoutError as e:
            self._publish_failures += 1
            raise PublishFailed(f"no publish-ack from JetStream within {timeout:g} s") from e
        except nats.js.errors.APIError as e:
            self._publish_failures += 1
            raise PublishFailed(f"JetStream refused the publish: {e.description}") from e
        except (nats.errors.Error, OSError) as e:
            self._publish_failures += 1
            raise PublishFailed(f"the publish failed: {_describe(e)}") from e
        self._published += 1
        if ack.duplicate:
            self._duplicates += 1


class _DeliverFailed(Exception):
    """Carries an exception from deliver() past run()'s link-error handling."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


async def _close(nc: Client) -> None:
    try:
        await nc.close()
    except (TimeoutError, nats.errors.Error, OSError):
        pass


__all__: list[str] = [
    "FederationLink",
    "InboundMessage",
    "LinkDown",
    "LinkSettings",
    "PublishFailed",
    "expected_stream",
    "publish_id",
    "stream_problems",
    "tls_context",
]
