"""Offset commits an evicted worker can never get accepted: the fence before each marker.

A range's marker is written only after its offsets are committed to Kafka *in the group
generation the worker owned the partition in* (docs/architecture.md, "Fencing"). The group
coordinator accepts a commit only from a current member with the current generation: a
worker whose session expired (a broker pause, a long stall) is refused with
ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID and abandons the range.

Why not ``AIOKafkaConsumer.commit``: it sends whatever generation the consumer holds when
the request is built, and after a failed heartbeat aiokafka resets that to -1 and an empty
member id. The broker takes such a commit as a standalone one ("simple consumer") whenever
the group is empty, which is exactly the state after a broker pause expired every member:
an evicted worker's commit would then be accepted. So the commit request here is built
with the generation and member id captured when the partition was assigned, and sent
through the consumer's coordinator connection (aiokafka's ``_coordinator``: private, so
its use is confined to this module, and the integration tests exercise it).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.protocol.commit import OffsetCommitRequest

from streams.errors import SieveError

logger = logging.getLogger(__name__)

# The broker's answers that mean "you no longer own this": the group moved on without us.
_FENCED = (
    kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
    kafka_errors.RebalanceInProgressError,
)
RETRY_BACKOFF_S = 0.5
# The metadata of every offset commit a worker makes for a range: an offset committed with
# other metadata was set by an operator (kafka-consumer-groups --reset-offsets, `sieve demo`)
# and is where a partition with no marker starts (see :func:`operator_position`).
RANGE_COMMIT_METADATA = "sieve:range"


@dataclass(frozen=True)
class Membership:
    """The group generation and member id a worker owned a partition in."""

    generation: int
    member_id: str


class FencedError(SieveError):
    """The coordinator refused a commit: this worker no longer owns the partition."""


def current_membership(consumer: AIOKafkaConsumer) -> Membership:
    """The consumer's group generation and member id right now (call it on assignment)."""
    coordinator: Any = consumer._coordinator
    return Membership(int(coordinator.generation), str(coordinator.member_id))


async def commit_fenced(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, membership: Membership
) -> None:
    """Commit ``offset`` for ``tp`` in ``membership``'s generation, or raise FencedError.

    Retries while the coordinator is away (a broker outage): a range waits to be committed
    rather than be lost or counted twice. Cancel the call to give up (nothing is committed
    unless the broker accepted it; the caller must treat a cancelled commit as refused).
    """
    if membership.generation < 1:
        raise FencedError(f"partition {tp.partition}: assigned without a group generation")
    coordinator: Any = consumer._coordinator
    request = OffsetCommitRequest(
        coordinator.group_id,
        membership.generation,
        membership.member_id,
        OffsetCommitRequest.DEFAULT_RETENTION_TIME,
        [(tp.topic, [(tp.partition, offset, RANGE_COMMIT_METADATA)])],
    )
    while True:
        await coordinator.ensure_coordinator_known()
        try:
            response = await coordinator._send_req(request)
        except kafka_errors.KafkaError as error:
            if not error.retriable:
                raise
            await asyncio.sleep(RETRY_BACKOFF_S)
            continue
        codes = [code for _, partitions in response.topics for _, code in partitions]
        failure = next((code for code in codes if code != 0), 0)
        if failure == 0:
            return
        error_type = kafka_errors.for_code(failure)
        if issubclass(error_type, _FENCED):
            raise FencedError(
                f"partition {tp.partition}: the group coordinator refused the commit of"
                f" generation {membership.generation} ({error_type.__name__})"
            )
        if not error_type.retriable:
            raise error_type()
        if issubclass(
            error_type,
            (kafka_errors.NotCoordinatorError, kafka_errors.CoordinatorNotAvailableError),
        ):
            coordinator.coordinator_dead()
        await asyncio.sleep(RETRY_BACKOFF_S)


async def operator_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The group's committed offset of ``tp`` if an operator set it, else None.

    Markers are the truth of what is processed, and a worker commits a range's offsets
    *before* its marker, so an offset a worker committed says nothing (it may belong to a
    range that was never written). An offset committed with other metadata is an operator's
    deliberate start position (skip a backlog, start a fresh data root at the end), which a
    partition with no marker honours. aiokafka's ``committed()`` drops the metadata, hence
    the coordinator call.
    """
    coordinator: Any = consumer._coordinator
    committed = (await coordinator.fetch_committed_offsets([tp])).get(tp)
    if committed is None or committed.offset < 0 or committed.metadata == RANGE_COMMIT_METADATA:
        return None
    return int(committed.offset)
