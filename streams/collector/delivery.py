"""Forwarding a checked batch to Kafka and waiting for the broker's acknowledgements.

Runs in a worker thread (kafka-python blocks). Contract: :func:`deliver` returns one
:class:`Delivery` per event, in order, by its deadline plus at most one ``send``'s blocking
(the producer's ``max_block_s``, which the collector sets to its deadline); an event is
"accepted" only once the broker acknowledged it with a partition and offset. Once a send
fails (the broker is away) or the deadline passed, the remaining events are not sent:
issue 14 saw requests wait 240 s for their 503, one metadata wait per event.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kafka.errors import KafkaError

from schemas.events import Event
from streams.delivery_health import DeliveryState
from streams.errors import SieveError


class RecordMetadataLike(Protocol):
    """Where the broker stored a record (kafka-python's ``RecordMetadata``)."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


class AckFuture(Protocol):
    """The acknowledgement of one sent record (kafka-python's ``FutureRecordMetadata``)."""

    def get(self, timeout: float | None = None) -> RecordMetadataLike: ...


class EventSender(Protocol):
    """What the collector needs of a producer (``streams.producer.EventProducer``):
    ``send`` an event keyed by its account and get a future of its acknowledgement, and
    say whether it is delivering (``/healthz``)."""

    def send(self, event: Event) -> AckFuture: ...

    def health(self) -> DeliveryState: ...


@dataclass(frozen=True)
class Delivery:
    """The fate of one event of a batch: acknowledged (partition, offset) or an error."""

    index: int
    event_id: str
    partition: int | None = None
    offset: int | None = None
    error: str | None = None

    def as_result(self) -> dict[str, object]:
        return {
            "index": self.index,
            "event_id": self.event_id,
            "status": "accepted",
            "partition": self.partition,
            "offset": self.offset,
        }


def deliver(producer: EventSender, events: Sequence[Event], deadline: float) -> list[Delivery]:
    """Send every event, then wait for every acknowledgement until ``deadline`` (a
    ``time.monotonic()`` reading).

    All sends go out before the first wait, so the batch travels in as few produce
    requests as the producer makes of it, and the wait is one round trip, not one per event.
    A request that waited for a thread past its deadline sends nothing: its client has
    been answered 503 already.
    """
    pending: list[tuple[int, Event, AckFuture | str]] = []
    refusal: str | None = None
    for index, event in enumerate(events):
        if refusal is None and time.monotonic() >= deadline:
            refusal = "not sent: the request's deadline passed before the broker was reached"
        if refusal is not None:
            pending.append((index, event, refusal))
            continue
        try:
            pending.append((index, event, producer.send(event)))
        except (KafkaError, SieveError) as error:
            refusal = _describe(error)
            pending.append((index, event, refusal))
    return [_await(index, event, outcome, deadline) for index, event, outcome in pending]


def _await(index: int, event: Event, outcome: AckFuture | str, deadline: float) -> Delivery:
    if isinstance(outcome, str):
        return Delivery(index, event.event_id, error=outcome)
    try:
        metadata = outcome.get(timeout=max(0.0, deadline - time.monotonic()))
    except (KafkaError, SieveError) as error:
        return Delivery(index, event.event_id, error=_describe(error))
    return Delivery(index, event.event_id, metadata.partition, metadata.offset)


def _describe(error: Exception) -> str:
    # The class name says the most (KafkaTimeoutError, NotLeaderForPartitionError...);
    # the message adds detail when there is one.
    detail = str(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__
