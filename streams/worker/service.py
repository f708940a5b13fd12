"""The raw-topic batch consumer: a mode Service that the faust worker hosts.

Why not a faust agent: faust dispatches every message through its own task machinery
(~180 µs an event, DESIGN.md "Speed"; ``bench/`` measures it again), which caps a worker at
a few thousand events/s however the agent batches. This service fetches with aiokafka's
``getmany`` in batches of ``batch_max_records``, transforms whole batches as Arrow columns
(streams.worker.pipeline) and writes ranges exactly once (streams.worker.sink). It uses its
own consumer group with manual commits and a rebalance listener, so per-partition recovery
is ours, not faust's (faust-streaming#606: its commits can run ahead of processing).

Order of effects for a range: dead letters flushed -> files + marker written -> offsets
committed. A Kafka commit that fails (rebalance) loses nothing: the commit markers are the
truth, and whoever owns the partition next seeks by them.

Ranges are written in the background while the next batches are processed: Parquet
encoding, zstd, encryption and fsync release the GIL, so the second core does them
(bench/README.md). One writer thread takes the ranges in the order they are cut, and a
partition has at most one range in flight, so each partition's markers and offset commits
stay in offset order and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from mode import Service

from streams.worker.deadletter import DeadLetter
from streams.worker.metrics import WorkerMetrics
from streams.worker.pipeline import PartitionPipeline, PendingRange, PipelineContext
from streams.worker.sink import RangeWriter, recover_partition

logger = logging.getLogger(__name__)

COMMIT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ConsumerOptions:
    """Plain values the service needs (from Settings, built at the edge)."""

    bootstrap_servers: str
    topic: str
    dead_letter_topic: str
    group_id: str
    batch_max_records: int
    roll_max_records: int
    roll_interval_seconds: float
    session_timeout_seconds: float = 30.0


def range_is_due(
    options: ConsumerOptions,
    *,
    buffered_rows: int,
    buffered_records: int,
    age_seconds: float,
    caught_up: bool,
) -> bool:
    """Whether a partition's buffered range should be cut and written now.

    Big enough, or old enough; or done for now: ``caught_up`` means the last fetch returned
    nothing for any partition, and a range of at least a batch is then cut at once instead
    of after the roll interval. A burst that ended is committed without waiting, while a
    trickle (small ranges) still rolls on the timer and does not make a file per fetch.
    """
    return (
        buffered_rows >= options.roll_max_records
        or age_seconds >= options.roll_interval_seconds
        or (caught_up and buffered_records >= options.batch_max_records)
    )


class RawTopicService(Service):
    """Consumes the raw topic in large batches and commits ranges exactly once."""

    def __init__(
        self,
        options: ConsumerOptions,
        context: PipelineContext,
        filesystem: pafs.FileSystem,
        root: str,
        writer: RangeWriter,
        metrics: WorkerMetrics,
        **kwargs: object,
    ) -> None:
        self.options = options
        self.context = context
        self.filesystem = filesystem
        self.root = root
        self.writer = writer
        self.metrics = metrics
        self.pipelines: dict[int, PartitionPipeline] = {}
        self._opened_at: dict[int, float] = {}
        self._writes: dict[int, asyncio.Future[None]] = {}  # the range in flight, per partition
        self._write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sieve-write")
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.assigned_event = asyncio.Event()
        super().__init__(**kwargs)  # type: ignore[arg-type]

    async def on_start(self) -> None:
        # The parsers, the geo database and the rules built at start live as long as the
        # process; freezing them out of the collector's scans measured +18 % throughput
        # (bench/README.md).
        gc.collect()
        gc.freeze()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.options.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=20,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.options.bootstrap_servers,
            group_id=self.options.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            # Writing a large range can take seconds; heartbeats run on their own task, but
            # give slow disks room before the group evicts us.
            max_poll_interval_ms=600_000,
            session_timeout_ms=int(self.options.session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(self.options.session_timeout_seconds * 1000 / 3),
        )
        self._consumer.subscribe([self.options.topic], listener=_Listener(self))
        await self._consumer.start()

    async def on_stop(self) -> None:
        # Commit what is buffered on a clean stop; on a kill the buffer is simply replayed.
        if self._consumer is not None:
            async with self._lock:
                for partition in list(self.pipelines):
                    await self._flush(partition, wait=True)
                    self.pipelines.pop(partition).close()  # saves its dedup filters
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        self._write_thread.shutdown(wait=True)

    @Service.task
    async def _consume(self) -> None:
        # The next fetch runs while this one's records are processed: waiting for the broker
        # and unpacking records then overlap the pipeline instead of following it (+19 %,
        # bench/README.md). What it returns is checked like any fetch (``_in_sequence``), so
        # a rebalance or a rewind in between loses nothing.
        fetch = self._fetch()
        try:
            while not self.should_stop:
                self._raise_failed_write()
                batches = await fetch
                fetch = self._fetch()
                async with self._lock:
                    for tp, messages in batches.items():
                        messages = self._in_sequence(tp, messages)
                        if not messages:
                            continue
                        pipeline = self.pipelines[tp.partition]
                        letters = await asyncio.to_thread(pipeline.process, messages)
                        await self._send_dead_letters(letters)
                        self._opened_at.setdefault(tp.partition, time.monotonic())
                    await self._flush_due(caught_up=not batches)
        finally:
            fetch.cancel()
            if fetch.done() and not fetch.cancelled():
                # Its records are not processed (nothing is committed without a marker, so
                # they are fetched again); a fetch that failed as the consumer stopped must
                # not be logged as an exception never retrieved.
                fetch.exception()

    def _fetch(self) -> asyncio.Future[dict[TopicPartition, list[Any]]]:
        assert self._consumer is not None
        return asyncio.ensure_future(
            self._consumer.getmany(timeout_ms=200, max_records=self.options.batch_max_records)
        )

    def _in_sequence(self, tp: TopicPartition, messages: list[Any]) -> list[Any]:
        """The fetched messages the partition's pipeline must process next, in order.

        A fetch can race a rebalance: records may arrive for a partition whose assignment
        is still being recovered, or from the position Kafka had before recovery moved it
        to the offset after the last commit marker. Records already committed are dropped;
        records that would leave a gap, or that have no pipeline yet, are fetched again
        (rewind). Nothing is skipped: a skipped record would be lost, since the position
        has moved past it.
        """
        pipeline = self.pipelines.get(tp.partition)
        if pipeline is None:
            self._rewind(tp, messages[0].offset)
            return []
        expected = pipeline.next_offset
        if expected is None:
            return messages
        fresh = [m for m in messages if m.offset >= expected]
        if fresh and fresh[0].offset > expected:
            self._rewind(tp, expected)
            return []
        return fresh

    def _rewind(self, tp: TopicPartition, offset: int) -> None:
        assert self._consumer is not None
        # No longer assigned: nothing to rewind, the next owner starts from the markers.
        with contextlib.suppress(IllegalStateError):
            self._consumer.seek(tp, offset)

    async def _send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        assert self._producer is not None
        for letter in letters:
            await self._producer.send(
                self.options.dead_letter_topic,
                key=letter.key,
                value=letter.value,
                headers=letter.headers,
            )

    async def _flush_due(self, *, caught_up: bool) -> None:
        now = time.monotonic()
        for partition, pipeline in list(self.pipelines.items()):
            opened = self._opened_at.get(partition)
            if opened is not None and range_is_due(
                self.options,
                buffered_rows=pipeline.buffered_rows,
                buffered_records=pipeline.buffered_records,
                age_seconds=now - opened,
                caught_up=caught_up,
            ):
                await self._flush(partition, wait=False)

    async def _flush(self, partition: int, *, wait: bool) -> None:
        """Cut the partition's range and write it (in the background unless ``wait``)."""
        pipeline = self.pipelines.get(partition)
        self._opened_at.pop(partition, None)
        if pipeline is None:
            return
        # One range in flight per partition: its marker and offset commit must come first.
        await self._finish_write(partition)
        pending = pipeline.take_range()
        if pending is None:
            return
        assert self._producer is not None
        # The range's dead letters are acknowledged before its marker exists.
        await self._producer.flush()
        write = asyncio.ensure_future(self._write_range(partition, pending))
        self._writes[partition] = write
        if wait:
            await self._finish_write(partition)

    def _raise_failed_write(self) -> None:
        # A range that failed to write must stop the worker now (nothing of it was committed,
        # so a restart replays it), not when its partition next flushes.
        for write in self._writes.values():
            if write.done() and write.exception() is not None:
                write.result()

    async def _finish_write(self, partition: int) -> None:
        write = self._writes.pop(partition, None)
        if write is not None:
            await write  # a failed write raises here and stops the worker, nothing committed

    async def _write_range(self, partition: int, pending: PendingRange) -> None:
        """Files and marker written, then the offset committed."""
        assert self._consumer is not None
        loop = asyncio.get_running_loop()
        marker = await loop.run_in_executor(
            self._write_thread, self.writer.commit_range, self.options.topic, partition, pending
        )
        # The range is committed: its keys move into the partition's dedup store (on the
        # writer thread; a partition has one range in flight, so they go in in order).
        pipeline = self.pipelines.get(partition)  # None once revoked: the next owner catches up
        if pipeline is not None:
            await loop.run_in_executor(
                self._write_thread, pipeline.range_committed, pending, marker
            )
        self.metrics.add(marker.counts)
        tp = TopicPartition(self.options.topic, partition)
        try:
            # Bounded: the commit is advisory (markers are the truth), and a commit stuck in
            # a rebalance must not keep the lock the rebalance listener is waiting for.
            await asyncio.wait_for(
                self._consumer.commit({tp: OffsetAndMetadata(pending.last_offset + 1, "")}),
                timeout=COMMIT_TIMEOUT_S,
            )
        except (CommitFailedError, KafkaError, TimeoutError) as error:
            logger.warning(
                "offset commit for partition %s failed (%s); markers stay the truth",
                partition,
                error,
            )

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        # Under the lock: the consume loop must see a partition either not yet assigned or
        # fully recovered (pipeline restored, position moved past the last marker).
        async with self._lock:
            await self._assign(assigned)

    async def _assign(self, assigned: Sequence[TopicPartition]) -> None:
        assert self._consumer is not None
        for tp in assigned:
            if tp.topic != self.options.topic or tp.partition in self.pipelines:
                continue
            recovered = await asyncio.to_thread(
                recover_partition, self.filesystem, self.root, tp.topic, tp.partition
            )
            pipeline = PartitionPipeline(
                tp.topic, tp.partition, self.context, next_offset=recovered.next_offset
            )
            await asyncio.to_thread(pipeline.restore, self.filesystem, self.root, recovered.markers)
            self.pipelines[tp.partition] = pipeline
            if recovered.next_offset is not None:
                self._consumer.seek(tp, recovered.next_offset)
            if recovered.removed_files:
                logger.info(
                    "partition %s: removed %d uncommitted files",
                    tp.partition,
                    len(recovered.removed_files),
                )
        self.assigned_event.set()

    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._lock:
            for tp in revoked:
                if tp.topic == self.options.topic and tp.partition in self.pipelines:
                    await self._flush(tp.partition, wait=True)
                    # Releases the partition's state store for whoever is assigned it next.
                    self.pipelines.pop(tp.partition).close()

    async def refresh_lag(self) -> None:
        """Update the lag gauge: records between our position and the end of each partition."""
        consumer = self._consumer
        if consumer is None:
            return
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await consumer.position(tp)
            except KafkaError:
                continue
            self.metrics.lag[tp.partition] = max(0, highwater - position)


class _Listener(ConsumerRebalanceListener):
    """Forwards rebalances to the service; a failure there crashes the worker.

    aiokafka logs and swallows a listener's exception: a partition whose recovery failed
    would then have no pipeline, and the worker would rewind it forever while looking alive.
    """

    def __init__(self, service: RawTopicService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        try:
            await self._service.on_revoked(revoked)
        except Exception as error:
            await self._service.crash(error)
            raise

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        try:
            await self._service.on_assigned(assigned)
        except Exception as error:
            await self._service.crash(error)
            raise
