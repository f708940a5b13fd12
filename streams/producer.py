"""The Python producer SDK: typed events onto the raw topic, keyed by account.

Delivery: ``acks="all"`` with the idempotent producer, so a retried batch is written once
and, with at most 5 requests in flight, in order. Keying by ``account_id`` puts all of an
account's events on one partition (Kafka's murmur2 partitioner, the same in every client),
which is what keeps them ordered for the worker's per-partition dedup and consent state.

``send`` never puts an invalid event on the wire: it raises ``InvalidEventError`` first.
``send_raw`` sends bytes as given, on purpose (the generator plants malformed events,
replay forwards what it read, marked as a backfill).

Healing (issue 14): after a broker pause longer than its request timeout (SIGSTOP for
150 s, then SIGCONT), kafka-python 3.0's idempotent producer kept failing every record for
minutes with the broker answering again (reproduced: each send timed out after 30 s, for
over 4 minutes). kafka-python offers no call that resets a producer, so an
``EventProducer`` watches what happens to its records (:mod:`streams.delivery_health`):
once records fail, a healer thread probes the broker every second, and if records still
fail ``heal_grace_s`` after the broker answers again, it replaces the producer with a fresh
one (new connections, metadata and producer id). The old one is closed in the background:
its pending records expire within ``delivery_timeout_s`` (they were reported failed to
whoever waited for them; if it still delivers some, the events' ids let deduplication drop
a client's resend). Reconnect backoff is capped at 5 s (kafka-python: 30 s), so a producer
that can recover by itself does so within seconds of the broker's return.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final, Self

import msgspec
from kafka import KafkaProducer
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    InvalidTimestampError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.producer.future import FutureRecordMetadata

from schemas.events import Event, encode
from schemas.validate import parse_event
from streams.delivery_health import DeliveryHealth, DeliveryState
from streams.errors import InvalidEventError, TransientError
from streams.settings import Settings

log = logging.getLogger(__name__)

LINGER_MS: Final = 20  # a 20 ms wait fills batches under load and is invisible to a person
# A batch holds one partition's records; 256 KiB is several hundred typical events and
# always fits a maximal (64 KiB) event, so no event is sent alone for being large.
BATCH_BYTES: Final = 256 * 1024
# gzip is the only codec kafka-python *and* aiokafka (the worker, faust) can read without
# extra packages; lz4/zstd need `lz4`/`zstandard` here and `cramjam` for aiokafka.
COMPRESSION: Final = "gzip"
# kafka-python's defaults for how long send() may block on metadata and how long a record
# may wait for its acknowledgement; the collector passes its own, shorter, deadline.
MAX_BLOCK_S: Final = 60.0
DELIVERY_TIMEOUT_S: Final = 120.0
REQUEST_TIMEOUT_S: Final = 30.0
HEAL_GRACE_S: Final = 10.0
PROBE_INTERVAL_S: Final = 1.0
RECONNECT_BACKOFF_MAX_MS: Final = 5_000
# A fresh producer is built only once the broker answered a probe: bootstrapping is quick
# then, and this bounds the healer's wait if the broker goes away again meanwhile.
REBUILD_BOOTSTRAP_TIMEOUT_MS: Final = 10_000

# Refusals of one record for what it is: the producer still delivers others, so they say
# nothing about its health (a 1-byte max.message.bytes refuses every record, yet the broker
# and the producer are fine).
_RECORD_REFUSALS: Final = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidRecordError,
    CorruptRecordError,
    InvalidTimestampError,
)

Headers = Sequence[tuple[str, bytes]]
BrokerProbe = Callable[[str], bool]


def encode_checked(event: Event) -> bytes:
    """The wire bytes of ``event`` after checking them against the contract.

    msgspec checks constraints only when decoding, not when a struct is built, so the
    encoded bytes go through the consumer side's own check (``schemas.validate``): what
    ``send`` accepts is exactly what the worker accepts. Raises ``InvalidEventError`` with
    every (path, reason); reasons never quote values (they may be personal data).
    """
    try:
        data = encode(event)
    except (TypeError, ValueError, msgspec.EncodeError) as unencodable:
        raise InvalidEventError([("$", "the event cannot be written as JSON")]) from unencodable
    parse_event(data)
    return data


def _probe_broker(bootstrap_servers: str) -> bool:
    """True if a broker answers a metadata request. A refused TCP connection answers first,
    without a Kafka client (whose failed bootstrap would log an error every second)."""
    from streams.broker.control import answers_metadata  # kafka admin client: import late

    if not any(_accepts_connections(server) for server in bootstrap_servers.split(",")):
        return False
    return answers_metadata(bootstrap_servers, timeout_s=2.0)


def _accepts_connections(server: str, timeout_s: float = 1.0) -> bool:
    host, _, port = server.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s):
            return True
    except (OSError, ValueError):
        return False


class EventProducer:
    """Sends events to one topic. Thread-safe (kafka-python's producer is, and so is the
    swap to a fresh one); close it, or use it as a context manager, so buffered events are
    delivered before the process exits."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        client_id: str = "sieve-producer",
        *,
        linger_ms: int = LINGER_MS,
        batch_bytes: int = BATCH_BYTES,
        compression_type: str | None = COMPRESSION,
        max_block_s: float = MAX_BLOCK_S,
        delivery_timeout_s: float = DELIVERY_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        heal_grace_s: float = HEAL_GRACE_S,
        probe_interval_s: float = PROBE_INTERVAL_S,
        probe: BrokerProbe = _probe_broker,
    ) -> None:
        """Connects at once: raises ``TransientError`` when no broker answers within 30 s
        (kafka-python's bootstrap timeout).

        ``max_block_s`` bounds how long ``send`` blocks when the topic's metadata is
        unknown (the broker is away); ``delivery_timeout_s`` how long a record may wait for
        its acknowledgement before its future fails (at least linger + request timeout).
        """
        self.topic = topic
        self._bootstrap_servers = bootstrap_servers
        self._delivery_timeout_s = delivery_timeout_s
        self._config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers.split(","),
            "client_id": client_id,
            "acks": "all",
            # Set explicitly: since kafka-python 3 (KIP-679) a config that conflicts with
            # idempotence then raises instead of silently turning idempotence off.
            "enable_idempotence": True,
            # Topics are made by `sieve topics` with their retention and timestamp type; a
            # typo must fail the send, not create a topic on a broker that auto-creates.
            "allow_auto_create_topics": False,
            "linger_ms": linger_ms,
            "batch_size": batch_bytes,
            "compression_type": compression_type,
            "max_block_ms": int(max_block_s * 1000),
            "delivery_timeout_ms": int(delivery_timeout_s * 1000),
            "request_timeout_ms": int(request_timeout_s * 1000),
            "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        }
        self._producer: Any = self._connect()
        self._lock = threading.Lock()
        self._health = DeliveryHealth(heal_grace_s)
        self._probe = probe
        self._probe_interval_s = probe_interval_s
        self.rebuilds = 0  # how many times a fresh producer replaced a failing one
        self._closing = threading.Event()
        self._healer = threading.Thread(
            target=self._heal_while_open, name=f"{client_id}-healer", daemon=True
        )
        self._healer.start()

    @classmethod
    def from_settings(
        cls, settings: Settings, client_id: str = "sieve-producer", **options: Any
    ) -> Self:
        """A producer to ``settings.raw_topic`` at ``settings.bootstrap_servers``."""
        return cls(settings.bootstrap_servers, settings.raw_topic, client_id, **options)

    def _connect(self, bootstrap_timeout_ms: int | None = None) -> Any:
        config = dict(self._config)
        if bootstrap_timeout_ms is not None:
            config["bootstrap_timeout_ms"] = bootstrap_timeout_ms
        try:
            return KafkaProducer(**config)
        except KafkaError as away:
            servers = self._bootstrap_servers
            raise TransientError(f"no Kafka broker answered at {servers}: {away}") from away

    # -- sending -------------------------------------------------------------------------------

    def send(self, event: Event) -> FutureRecordMetadata:
        """Queue ``event`` keyed by its account id (UTF-8); the future resolves to its
        record metadata (partition, offset) once the broker has it on all in-sync replicas.

        Raises ``InvalidEventError`` (and sends nothing) if the event breaks the contract,
        ``KafkaTimeoutError`` if the topic's metadata stays unknown for ``max_block_s``.
        """
        value = encode_checked(event)
        return self._send(event.account_id.encode("utf-8"), value, None, None)

    def send_raw(
        self,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> FutureRecordMetadata:
        """Queue ``value`` as is, unchecked; ``timestamp_ms`` (the record's receive time)
        defaults to now. For planted malformed events and for replay (whose ``headers``
        mark its records as a backfill)."""
        return self._send(key, value, timestamp_ms, headers)

    def _send(
        self, key: bytes | None, value: bytes, timestamp_ms: int | None, headers: Headers | None
    ) -> FutureRecordMetadata:
        with self._lock:
            producer = self._producer
        try:
            future = producer.send(
                self.topic,
                key=key,
                value=value,
                timestamp_ms=timestamp_ms,
                headers=list(headers) if headers else None,
            )
        except KafkaTimeoutError as late:  # no metadata within max_block_s: broker away
            self._health.failed(time.monotonic(), type(late).__name__)
            raise
        future.add_callback(self._delivered)
        future.add_errback(self._failed)
        return future

    def _delivered(self, _metadata: object) -> None:
        self._health.delivered()

    def _failed(self, error: BaseException) -> None:
        if not isinstance(error, _RECORD_REFUSALS):
            self._health.failed(time.monotonic(), type(error).__name__)

    def health(self) -> DeliveryState:
        """Whether records are being delivered, or since when they are not and why."""
        return self._health.state(time.monotonic())

    # -- healing -------------------------------------------------------------------------------

    def _heal_while_open(self) -> None:
        while not self._closing.wait(self._probe_interval_s):
            if not self._health.failing:
                continue
            try:
                answering = self._probe(self._bootstrap_servers)
            except Exception:  # a probe that breaks proves nothing; the next one may not
                answering = False
            now = time.monotonic()
            self._health.broker_answers(now, answering)
            if self._health.should_rebuild(now) and not self._closing.is_set():
                self._rebuild()

    def _rebuild(self) -> None:
        try:
            fresh = self._connect(REBUILD_BOOTSTRAP_TIMEOUT_MS)
        except TransientError:
            return  # the broker went away again; the healer tries on its next round
        with self._lock:
            stale, self._producer = self._producer, fresh
        self._health.rebuilt()
        self.rebuilds += 1
        log.warning(
            "the Kafka producer for %s still failed after the broker came back: replaced it"
            " with a fresh one (replacement %d)",
            self.topic,
            self.rebuilds,
        )
        _close_in_background(stale, self._delivery_timeout_s + 5.0)

    # -- flushing and closing ------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued record is acknowledged or failed (see the futures).
        Raises ``TransientError`` when that takes longer than ``timeout`` seconds."""
        with self._lock:
            producer = self._producer
        try:
            producer.flush(timeout=timeout)
        except KafkaTimeoutError as late:
            raise TransientError(f"records not delivered to Kafka within {timeout} s") from late

    def close(self, timeout: float | None = 30.0) -> None:
        """Deliver what is queued (waiting at most ``timeout`` seconds), then disconnect.

        Raises ``TransientError`` if records were still pending at the timeout (the broker
        is away); the healer stops either way.
        """
        self._closing.set()
        with self._lock:
            producer = self._producer
        try:
            producer.close(timeout=timeout)
        except KafkaTimeoutError as late:
            # kafka-python flushes before closing and gives up on the first record still
            # pending, leaving its network thread running; finish the close once they have
            # expired, and say so once rather than with a traceback.
            _close_in_background(producer, self._delivery_timeout_s + 5.0)
            raise TransientError(
                f"records still not delivered to Kafka after {timeout} s; closing anyway"
            ) from late

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _close_in_background(producer: Any, timeout: float) -> None:
    threading.Thread(
        target=_close_for_good,
        args=(producer, timeout),
        name="sieve-stale-producer-close",
        daemon=True,
    ).start()


def _close_for_good(producer: Any, timeout: float) -> None:
    # kafka-python's close() flushes first and, while a record is pending at its timeout,
    # raises without stopping its network thread or closing its sockets. Every pending
    # record completes or expires within the delivery timeout, so a close that waits that
    # long ends it; while the broker stays away, try again rather than leak the thread.
    warned = False
    while True:
        try:
            producer.close(timeout=timeout)
            return
        except KafkaError:
            if not warned:
                log.warning("a Kafka producer did not close within %.0f s; retrying", timeout)
                warned = True
