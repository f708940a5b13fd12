"""The Python producer SDK: typed events onto the raw topic, keyed by account.

Delivery: ``acks="all"`` with the idempotent producer, so a retried batch is written once
and, with at most 5 requests in flight, in order. Keying by ``account_id`` puts all of an
account's events on one partition (Kafka's murmur2 partitioner, the same in every client),
which is what keeps them ordered for the worker's per-partition dedup and consent state.

``send`` never puts an invalid event on the wire: it raises ``InvalidEventError`` first.
``send_raw`` sends bytes as given, on purpose (the generator plants malformed events,
replay forwards what it read).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final, Self

import msgspec
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata

from schemas.events import Event, encode
from schemas.validate import parse_event
from streams.errors import InvalidEventError, TransientError
from streams.settings import Settings

LINGER_MS: Final = 20  # a 20 ms wait fills batches under load and is invisible to a person
# A batch holds one partition's records; 256 KiB is several hundred typical events and
# always fits a maximal (64 KiB) event, so no event is sent alone for being large.
BATCH_BYTES: Final = 256 * 1024
# gzip is the only codec kafka-python *and* aiokafka (the worker, faust) can read without
# extra packages; lz4/zstd need `lz4`/`zstandard` here and `cramjam` for aiokafka.
COMPRESSION: Final = "gzip"


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


class EventProducer:
    """Sends events to one topic. Thread-safe (kafka-python's producer is); close it, or use
    it as a context manager, so buffered events are delivered before the process exits."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        client_id: str = "sieve-producer",
        *,
        linger_ms: int = LINGER_MS,
        batch_bytes: int = BATCH_BYTES,
        compression_type: str | None = COMPRESSION,
    ) -> None:
        """Connects at once: raises ``TransientError`` when no broker answers within 30 s
        (kafka-python's bootstrap timeout)."""
        self.topic = topic
        try:
            self._producer: Any = KafkaProducer(
                bootstrap_servers=bootstrap_servers.split(","),
                client_id=client_id,
                acks="all",
                # Set explicitly: since kafka-python 3 (KIP-679) a config that conflicts with
                # idempotence then raises instead of silently turning idempotence off.
                enable_idempotence=True,
                linger_ms=linger_ms,
                batch_size=batch_bytes,
                compression_type=compression_type,
            )
        except KafkaError as away:
            raise TransientError(
                f"no Kafka broker answered at {bootstrap_servers}: {away}"
            ) from away

    @classmethod
    def from_settings(cls, settings: Settings, client_id: str = "sieve-producer") -> Self:
        """A producer to ``settings.raw_topic`` at ``settings.bootstrap_servers``."""
        return cls(settings.bootstrap_servers, settings.raw_topic, client_id)

    def send(self, event: Event) -> FutureRecordMetadata:
        """Queue ``event`` keyed by its account id (UTF-8); the future resolves to its
        record metadata (partition, offset) once the broker has it on all in-sync replicas.

        Raises ``InvalidEventError`` (and sends nothing) if the event breaks the contract.
        """
        value = encode_checked(event)
        return self._producer.send(self.topic, key=event.account_id.encode("utf-8"), value=value)

    def send_raw(
        self, key: bytes | None, value: bytes, timestamp_ms: int | None = None
    ) -> FutureRecordMetadata:
        """Queue ``value`` as is, unchecked; ``timestamp_ms`` (the record's receive time)
        defaults to now. For planted malformed events and for replay."""
        return self._producer.send(self.topic, key=key, value=value, timestamp_ms=timestamp_ms)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued record is acknowledged or failed (see the futures).
        Raises ``TransientError`` when that takes longer than ``timeout`` seconds."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError as late:
            raise TransientError(f"records not delivered to Kafka within {timeout} s") from late

    def close(self, timeout: float | None = 30.0) -> None:
        """Deliver what is queued (waiting at most ``timeout`` seconds), then disconnect."""
        self._producer.close(timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
