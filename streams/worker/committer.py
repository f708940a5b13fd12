"""Writing one range: dead letters confirmed, files written, offsets committed in the
partition's generation, marker published; or, for a worker the group moved on from, nothing.

Order of effects (docs/architecture.md, "Exactly once" and "Fencing"): the range's dead
letters confirmed one by one -> its files written and its marker staged -> its offsets
committed to Kafka in the group generation the partition was assigned in -> the marker
renamed into place. A commit the group coordinator refuses (the worker was evicted: a broker
pause, a long stall) abandons the range: its files are removed, no marker, the partition is
dropped until the group assigns it again.

A full disk is waited out: consumption is paused (the consumer keeps polling, so the group
keeps the worker) and the write retried with backoff, with one log line when the disk fills
and one when it takes writes again. Any other write error stops the worker with nothing of
the range committed.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.commits import CommitMarker
from streams.worker.delivery import DeadLetterSender, SentLetter
from streams.worker.fencing import FencedError, Membership, commit_fenced
from streams.worker.memory import release_free_memory
from streams.worker.metrics import WorkerMetrics
from streams.worker.pipeline import PartitionPipeline, PendingRange
from streams.worker.sink import RangeWriter, StagedRange

logger = logging.getLogger(__name__)

# Backoff between attempts to write a range to a full disk.
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


class RangeCommitter:
    """Commits the ranges of one worker, one at a time on its writer thread.

    ``drop(partition, pipeline)`` forgets a partition the group gave away; ``pause(True)``
    pauses consumption while the disk is full, ``pause(False)`` resumes it.
    """

    def __init__(
        self,
        topic: str,
        writer: RangeWriter,
        metrics: WorkerMetrics,
        *,
        drop: Callable[[int, PartitionPipeline], None],
        pause: Callable[[bool], None],
    ) -> None:
        self.topic = topic
        self.writer = writer
        self.metrics = metrics
        self._drop = drop
        self._pause = pause
        # Parquet encoding, zstd, encryption and fsync release the GIL: the second core
        # does them while the consume loop processes the next batches (bench/README.md).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sieve-write")
        self.disk_full_since: float | None = None

    def shutdown(self) -> None:
        self._thread.shutdown(wait=True)

    async def wait_idle(self) -> None:
        """Wait until the writer thread has done every job handed to it so far.

        Cancelling a write (a revocation or a stop that could not wait for it) does not
        stop its job on the thread (staging its files, publishing its marker, its keys going
        into the store): no one may close that partition's store or recover its files
        before the job ends. The thread takes jobs in order, so a no-op runs after them.
        """
        await asyncio.get_running_loop().run_in_executor(self._thread, _nothing)

    async def commit(
        self,
        consumer: AIOKafkaConsumer,
        sender: DeadLetterSender,
        partition: int,
        pipeline: PartitionPipeline,
        pending: PendingRange,
        letters: list[SentLetter],
        membership: Membership,
    ) -> None:
        """Dead letters confirmed, files written, offsets committed in ``membership``'s
        generation, then the marker: or, if the group refused the commit, nothing."""
        started = time.monotonic()
        await sender.confirm(letters)
        tp = TopicPartition(self.topic, partition)
        try:
            staged = await self._stage(partition, pending, membership)
        except FileNotFoundError:
            # A file of the range vanished while it was written: the partition's next owner
            # recovered it meanwhile (this worker is a zombie), or the data root is broken.
            if await _still_ours(consumer, tp, pending.first_offset, membership):
                raise
            self._abandoned(partition, pipeline, pending, "recovered by another worker")
            return
        try:
            await commit_fenced(consumer, tp, pending.last_offset + 1, membership)
        except FencedError as fenced:
            self.writer.abandon(staged)
            self._abandoned(partition, pipeline, pending, str(fenced))
            return
        except BaseException:
            # Cancelled (a stop, a revocation that could not wait) or failed: the range
            # must not count. Its offsets may have been committed: markers are the truth.
            self.writer.abandon(staged)
            raise
        loop = asyncio.get_running_loop()
        try:
            marker = await loop.run_in_executor(self._thread, self.writer.publish, staged)
        except FileNotFoundError:
            # The staged marker is gone: the worker stalled between its accepted commit and
            # the marker long enough for the partition's next owner to recover it (which
            # removes this range's files). It must not count.
            self.writer.abandon(staged)
            if await _still_ours(consumer, tp, pending.first_offset, membership):
                raise
            self._abandoned(partition, pipeline, pending, "recovered before its marker")
            return
        # The range is committed: its keys and consent changes move into the partition's
        # state store, on the writer thread (one range in flight per partition, so ranges go
        # in in order). A crash before this is caught up from the range's dedup log.
        await loop.run_in_executor(self._thread, _apply_committed, pipeline, pending, marker)
        self.metrics.range_committed(
            partition,
            pending.first_offset,
            pending.last_offset,
            marker.counts,
            now=time.time(),
            write_seconds=time.monotonic() - started,
        )

    def _abandoned(
        self, partition: int, pipeline: PartitionPipeline, pending: PendingRange, why: str
    ) -> None:
        self._drop(partition, pipeline)
        logger.warning(
            "partition %s: range %s-%s abandoned, the partition belongs to another worker now (%s)",
            partition,
            pending.first_offset,
            pending.last_offset,
            why,
        )

    async def _stage(
        self, partition: int, pending: PendingRange, membership: Membership
    ) -> StagedRange:
        """The range's files in place and its marker staged, waiting out a full disk."""
        loop = asyncio.get_running_loop()
        stage = functools.partial(
            self.writer.stage_range,
            self.topic,
            partition,
            pending,
            generation=membership.generation,
            member_id=membership.member_id,
        )
        attempt = 0
        try:
            while True:
                try:
                    staged = await loop.run_in_executor(self._thread, stage)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    self._disk_full(partition, error)
                    attempt += 1
                    await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S)) - 1])
                    continue
                if self.disk_full_since is not None:
                    self._disk_writable(attempt)
                return staged
        except asyncio.CancelledError:
            if attempt and self.disk_full_since is not None:
                self._disk_wait_abandoned(partition)
            raise

    def _disk_full(self, partition: int, error: OSError) -> None:
        if self.disk_full_since is not None:
            return
        self.disk_full_since = time.monotonic()
        logger.error(
            "disk full writing partition %s (%s): consumption paused, retrying with backoff",
            partition,
            error.strerror or error,
        )
        self._pause(True)

    def _disk_wait_abandoned(self, partition: int) -> None:
        # A revocation or a stop gave up on a range waiting for the disk. Only a write that
        # goes through resumes consumption, and consumption paused cuts no range to write:
        # left paused, the worker would poll for good without consuming. The next range
        # tries the disk again (and pauses consumption again if it is still full).
        self.disk_full_since = None
        logger.warning(
            "partition %s: the range waiting for the full disk was abandoned; consumption"
            " resumed, the next range tries the disk again",
            partition,
        )
        self._pause(False)

    def _disk_writable(self, attempts: int) -> None:
        assert self.disk_full_since is not None
        waited = time.monotonic() - self.disk_full_since
        self.disk_full_since = None
        logger.warning(
            "disk writable again after %.0f s (%d retries): consumption resumed", waited, attempts
        )
        self._pause(False)


def _apply_committed(
    pipeline: PartitionPipeline, pending: PendingRange, marker: CommitMarker
) -> None:
    pipeline.range_committed(pending, marker)
    # After every range, so RSS follows what the worker holds (streams.worker.memory).
    release_free_memory()


def _nothing() -> None:
    return None


async def _still_ours(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, membership: Membership
) -> bool:
    """Whether the group still has ``tp`` in ``membership``'s generation: a commit of an
    offset already committed (it moves nothing) is accepted iff it does."""
    try:
        await commit_fenced(consumer, tp, offset, membership)
    except FencedError:
        return False
    return True
