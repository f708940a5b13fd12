"""The raw-topic batch consumer: a mode Service that the faust worker hosts.

Why not a faust agent: faust dispatches every message through its own task machinery
(~180 µs an event: ``Consumer._drain_messages`` awaits a callback per record, with its tasks
and loop turns, before any batching; ``bench/worker_throughput.py`` runs a naive agent beside
this service, ``bench/README.md`` has the numbers), which caps a worker at
a few thousand events/s however the agent batches. This service fetches with aiokafka's
``getmany`` in batches of ``batch_max_records``, transforms whole batches as Arrow columns
(streams.worker.pipeline) and writes ranges exactly once (streams.worker.sink). It uses its
own consumer group with manual commits and a rebalance listener, so per-partition recovery
is ours, not faust's (faust-streaming#606: its commits can run ahead of processing).

A range is committed by streams.worker.committer: dead letters confirmed, files written,
offsets committed in the group generation the partition was assigned in (a worker the group
moved on from is refused and abandons the range), marker published. The commit markers are
the truth: whoever owns the partition next resumes after them, never at Kafka's committed
offset (docs/architecture.md, "Exactly once" and "Fencing").

Ranges are written in the background while the next batches are processed, on one writer
thread that takes them in the order they are cut; a partition has at most one range in
flight, so each partition's markers stay in offset order and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from mode import Service

from streams.worker.committer import BACKOFF_S, RangeCommitter
from streams.worker.delivery import DeadLetterSender, SentLetter
from streams.worker.fencing import Membership, current_membership, operator_position
from streams.worker.metrics import WorkerMetrics
from streams.worker.pipeline import PartitionPipeline, PipelineContext
from streams.worker.sink import RangeWriter, recover_partition

logger = logging.getLogger(__name__)

# How long a clean stop or a revocation waits for a range in flight (its offset commit may
# wait on a broker that is away) before it abandons the range: abandoning is always safe,
# nothing of it counts and the next owner processes it again.
SETTLE_TIMEOUT_S = 30.0


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
    # The dead-letter topic's max.message.bytes (larger dead letters are cut to fit).
    dead_letter_max_bytes: int = 1_048_576
    # Buffered Arrow bytes per partition before a range is cut (Settings.roll_max_bytes).
    roll_max_bytes: int = 16 << 20


def range_is_due(
    options: ConsumerOptions,
    *,
    buffered_rows: int,
    buffered_records: int,
    age_seconds: float,
    caught_up: bool,
    buffered_bytes: int = 0,
    after_burst: bool = False,
) -> bool:
    """Whether a partition's buffered range should be cut and written now.

    Big enough (in rows, or in bytes: rows vary in size, and what a range costs in memory
    while it is buffered and written is its bytes), or old enough; or done for now:
    ``caught_up`` means the last fetch returned nothing for any partition. A range is then
    cut at once, instead of after the roll interval, if it holds at least a batch or if the
    partition was part of a full fetch since the worker was last caught up (``after_burst``:
    it had records waiting). A burst that ended is committed without waiting, its tail
    however small, while a trickle (small ranges, never a full fetch) still rolls on the
    timer and does not make a file per fetch.
    """
    return (
        buffered_rows >= options.roll_max_records
        or buffered_bytes >= options.roll_max_bytes
        or age_seconds >= options.roll_interval_seconds
        or (caught_up and (after_burst or buffered_records >= options.batch_max_records))
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
        self._membership: dict[int, Membership] = {}  # the generation each partition is ours in
        self._letters: dict[int, list[SentLetter]] = {}  # dead letters of the open range
        self._opened_at: dict[int, float] = {}
        # Partitions in a full fetch since the worker was last caught up (range_is_due).
        self._behind: set[int] = set()
        self._writes: dict[int, asyncio.Future[None]] = {}  # the range in flight, per partition
        self._processing: PartitionPipeline | None = None  # whose batch is on a thread now
        self.committer = RangeCommitter(
            options.topic, writer, metrics, drop=self._drop, pause=self._set_paused
        )
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._sender: DeadLetterSender | None = None
        self.assigned_event = asyncio.Event()
        self.stopped_cleanly = False  # every range committed or abandoned, consumer closed
        self._disk_full = asyncio.Event()  # set while consumption is paused for the disk
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
        self._sender = DeadLetterSender(
            self._producer,
            self.options.dead_letter_topic,
            # The producer refuses anything over its own max_request_size (1 MiB) too.
            min(self.options.dead_letter_max_bytes, 1_048_576),
        )
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
        # After a crash, a partition whose batch failed half way hands out no range.
        try:
            if self._consumer is not None:
                async with self._lock:
                    for partition in list(self.pipelines):
                        await self._flush(partition, wait=True)
                        pipeline = self.pipelines.get(partition)
                        if pipeline is not None:  # None: dropped meanwhile (and closed then)
                            self._drop(partition, pipeline)  # closing it saves its filters
        finally:
            # Even after a failed write (which raises above, and the worker exits non-zero):
            # the group learns at once that this member left, instead of after the session
            # timeout, and nothing half-sent stays in the producer.
            if self._consumer is not None:
                await self._consumer.stop()
            if self._producer is not None:
                await self._producer.stop()
            self.committer.shutdown()
        self.stopped_cleanly = self.crash_reason is None

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
                if sum(map(len, batches.values())) >= self.options.batch_max_records:
                    self._behind.update(tp.partition for tp in batches)
                async with self._lock:
                    for tp, messages in batches.items():
                        messages = self._in_sequence(tp, messages)
                        if not messages:
                            continue
                        await self._process(tp.partition, messages)
                    await self._flush_due(caught_up=not batches)
                if not batches:
                    self._behind.clear()
        finally:
            fetch.cancel()
            if fetch.done() and not fetch.cancelled():
                # Its records are not processed (nothing is committed without a marker, so
                # they are fetched again); a fetch that failed as the consumer stopped must
                # not be logged as an exception never retrieved.
                fetch.exception()

    async def _process(self, partition: int, messages: list[Any]) -> None:
        started = time.perf_counter()
        pipeline = self.pipelines[partition]
        self._processing = pipeline
        try:
            letters = await asyncio.to_thread(pipeline.process, messages)
        finally:
            self._processing = None
            if self.pipelines.get(partition) is not pipeline:
                # A refused commit of its range in flight dropped the partition while this
                # batch was processed (the committer does not take the lock): the store
                # closes now that no thread uses it.
                pipeline.close()
        if self.pipelines.get(partition) is not pipeline:
            return  # the partition is another worker's now: the batch goes with it
        if letters:
            assert self._sender is not None
            try:
                sent = await self._sender.send(letters)
            except BaseException:
                # The batch is in the buffer, its dead letters are not all on their way:
                # the range must never be committed (a restart replays it).
                pipeline.broken = True
                raise
            if self.pipelines.get(partition) is not pipeline:
                return  # dropped while its letters were sent (a refused commit): as above
            self._letters.setdefault(partition, []).extend(sent)
        self._opened_at.setdefault(partition, time.monotonic())
        self.metrics.batch_processed(partition, messages, time.perf_counter() - started)

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

    async def _flush_due(self, *, caught_up: bool) -> None:
        now = time.monotonic()
        for partition, pipeline in list(self.pipelines.items()):
            opened = self._opened_at.get(partition)
            if opened is None:
                continue
            if self.committer.disk_full_since is not None and partition in self._writes:
                continue  # a range is waiting for the disk: do not wait behind it
            if range_is_due(
                self.options,
                buffered_rows=pipeline.buffered_rows,
                buffered_records=pipeline.buffered_records,
                buffered_bytes=pipeline.buffered_bytes,
                age_seconds=now - opened,
                caught_up=caught_up,
                after_burst=partition in self._behind,
            ):
                await self._flush(partition, wait=False)

    async def _flush(self, partition: int, *, wait: bool) -> None:
        """Cut the partition's range and write it (in the background unless ``wait``)."""
        pipeline = self.pipelines.get(partition)
        opened = self._opened_at.pop(partition, None)
        if pipeline is None:
            return
        # One range in flight per partition: its marker and offset commit must come first.
        if not await self._finish_write(partition, settle=wait):
            # Not ``wait``: the range in flight waits for a full disk; this one is cut later.
            # ``wait`` (a stop, a revocation): given up on, and the ranges after it must not
            # be committed either (a marker after a gap, keys the store cannot take); the
            # partition is dropped and its next owner processes them again.
            if not wait and opened is not None and self.pipelines.get(partition) is pipeline:
                self._opened_at[partition] = opened  # still due
            return
        if self.pipelines.get(partition) is not pipeline:
            return  # the group took the partition away meanwhile (a refused commit)
        pending = pipeline.take_range()
        letters = self._letters.pop(partition, [])
        if pending is None:
            return
        if wait and self.committer.disk_full_since is not None:
            # A stop or a revocation while the disk is full: this range cannot be written
            # now, and its records are processed again by whoever owns the partition next.
            logger.warning(
                "partition %s: range %s-%s not written (disk full); it will be processed again",
                partition,
                pending.first_offset,
                pending.last_offset,
            )
            return
        assert self._consumer is not None and self._sender is not None
        write = asyncio.ensure_future(
            self.committer.commit(
                self._consumer,
                self._sender,
                partition,
                pipeline,
                pending,
                letters,
                self._membership[partition],
            )
        )
        self._writes[partition] = write
        if wait:
            await self._finish_write(partition, settle=True)

    def _raise_failed_write(self) -> None:
        # A range that failed to write must stop the worker now (nothing of it was committed,
        # so a restart replays it), not when its partition next flushes.
        for write in self._writes.values():
            if write.done() and not write.cancelled() and write.exception() is not None:
                write.result()

    async def _finish_write(self, partition: int, *, settle: bool = False) -> bool:
        """Wait for the partition's range in flight; False if it is not done. ``settle`` (a
        stop, a revocation): abandon it after SETTLE_TIMEOUT_S (a broker away, a full disk)
        rather than hold up the stop or the group's rebalance. Otherwise (the consume loop)
        stop waiting once the disk is full: the range stays in flight."""
        if not settle:
            return await self._finished_unless_disk_full(partition)
        write = self._writes.pop(partition, None)
        if write is None:
            return True
        timeout = 0.0 if self.committer.disk_full_since is not None else SETTLE_TIMEOUT_S
        try:
            await asyncio.wait_for(write, timeout)
        except TimeoutError:
            logger.warning(
                "partition %s: the range in flight did not finish in %.0f s; abandoned"
                " (its records are processed again)",
                partition,
                timeout,
            )
            # Its job on the writer thread, if any, runs on: the caller drops the partition
            # next (closing its store), and may recover it again at once.
            await self.committer.wait_idle()
            return False
        return True

    async def _finished_unless_disk_full(self, partition: int) -> bool:
        """Wait for the partition's range in flight (a failed write raises here and stops
        the worker, nothing committed), unless the disk is or becomes full: False then, and
        the range stays in flight. The consume loop waits here holding the lock; waiting
        for a full disk, it would stop polling (the group evicts a worker that does) and
        hold up revocations for as long as the disk stays full."""
        write = self._writes.get(partition)
        if write is None:
            return True
        if not write.done() and self.committer.disk_full_since is None:
            disk_full = asyncio.ensure_future(self._disk_full.wait())
            try:
                await asyncio.wait((write, disk_full), return_when=asyncio.FIRST_COMPLETED)
            finally:
                disk_full.cancel()
        if not write.done():
            return False
        del self._writes[partition]
        write.result()
        return True

    def _set_paused(self, paused: bool) -> None:
        # Paused partitions return nothing, but the consumer keeps polling: the group does
        # not take a worker that waits for its disk for one that stopped polling.
        if paused:
            self._disk_full.set()
        else:
            self._disk_full.clear()
        assert self._consumer is not None
        partitions = [TopicPartition(self.options.topic, p) for p in self.pipelines]
        with contextlib.suppress(IllegalStateError):
            if paused:
                self._consumer.pause(*partitions)
            else:
                self._consumer.resume(*partitions)

    def _drop(self, partition: int, pipeline: PartitionPipeline) -> None:
        """Forget a partition the group gave to another worker (until it is assigned again)."""
        if self.pipelines.get(partition) is not pipeline:
            return  # already dropped, or recovered anew since
        del self.pipelines[partition]
        # Releases the partition's state store (and saves its filters) for whoever is
        # assigned the partition next, in this process or another one; if a batch of it is
        # being processed on a thread, that batch's end closes it (_process).
        if pipeline is not self._processing:
            pipeline.close()
        self._membership.pop(partition, None)
        self._letters.pop(partition, None)
        self._opened_at.pop(partition, None)
        self.metrics.forget_partition(partition)
        assert self._consumer is not None
        with contextlib.suppress(IllegalStateError):
            self._consumer.pause(TopicPartition(self.options.topic, partition))

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        # Under the lock: the consume loop must see a partition either not yet assigned or
        # fully recovered (pipeline restored, position moved past the last marker).
        async with self._lock:
            await self._assign(assigned)

    async def _assign(self, assigned: Sequence[TopicPartition]) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        # The generation these partitions are ours in: every commit of theirs carries it,
        # and the coordinator refuses it once the group has moved on (streams.worker.fencing).
        membership = current_membership(consumer)
        ours = [tp for tp in assigned if tp.topic == self.options.topic]
        log_starts = await self._log_starts(ours)
        for tp in ours:
            stale = self.pipelines.get(tp.partition)
            if stale is not None:  # never after an eager revocation; be safe
                await self._finish_write(tp.partition, settle=True)
                self._drop(tp.partition, stale)  # unless its range's refusal dropped it
            log_start = log_starts[tp]
            recovered = await asyncio.to_thread(
                recover_partition, self.filesystem, self.root, tp.topic, tp.partition, log_start
            )
            next_offset = recovered.next_offset
            if next_offset is None:
                # Markers are the truth: with none, the partition starts at the beginning of
                # the log, or where an operator put the group, never where a worker's commit
                # left it (commits precede markers: its range may never have been written).
                position = await operator_position(consumer, tp)
                next_offset = log_start if position is None else max(position, log_start)
            pipeline = PartitionPipeline(tp.topic, tp.partition, self.context, next_offset)
            await asyncio.to_thread(pipeline.restore, self.filesystem, self.root, recovered.markers)
            self.pipelines[tp.partition] = pipeline
            self._membership[tp.partition] = membership
            self._letters.pop(tp.partition, None)
            self._opened_at.pop(tp.partition, None)
            consumer.seek(tp, next_offset)
            with contextlib.suppress(IllegalStateError):
                consumer.resume(tp)
            if recovered.removed_files:
                logger.info(
                    "partition %s: removed %d uncommitted or superseded files",
                    tp.partition,
                    len(recovered.removed_files),
                )
        if self.committer.disk_full_since is not None:
            self._set_paused(True)
        self.assigned_event.set()

    async def _log_starts(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The first offset each partition's log still holds (retried while the broker is
        away: an assignment cannot be recovered without it)."""
        assert self._consumer is not None
        attempt = 0
        while partitions:
            try:
                starts: dict[TopicPartition, int] = await self._consumer.beginning_offsets(
                    partitions
                )
                return starts
            except KafkaError as error:
                if attempt == 0:
                    logger.warning("log start offsets not available yet (%s); retrying", error)
                await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                attempt += 1
        return {}

    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._lock:
            for tp in revoked:
                if tp.topic == self.options.topic and tp.partition in self.pipelines:
                    await self._flush(tp.partition, wait=True)
                    pipeline = self.pipelines.get(tp.partition)
                    if pipeline is not None:
                        self._drop(tp.partition, pipeline)

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
            if tp.partition not in self.pipelines:
                # Dropped (and its lag forgotten), maybe while the broker answered: the lag of a
                # partition this worker does not process is not its to report.
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
