"""Races between the consume loop, the background write of a range and rebalances, forced
one interleaving at a time (threads held on ``threading.Event``s, no sleeps).

The worker runs a partition's next batch on a thread while its previous range is written on
the writer thread, and a revocation may give up on a write whose job still runs there: each
test below pins one such interleaving and says what it broke.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

import streams.worker.committer as committer_module
import streams.worker.service as service_module
from schemas.commits import read_markers
from streams.privacy.keyring import Keyring
from streams.worker.fencing import Membership
from streams.worker.pipeline import PipelineContext, RawRecord
from streams.worker.state.consent import ConsentTracker
from streams.worker.state.folder import StateFolder
from streams.worker.state.store import AppliedRange, PartitionStore, StoreUpdate
from tests.fixtures.pipeline_context import default_context
from tests.fixtures.pipeline_truth import TRAFFIC_ARRIVAL_MS, traffic_config
from tests.fixtures.service_harness import TOPIC, FakeConsumer, ServiceHarness

MEMBERSHIP = Membership(7, "m-7")


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def context(keyring: Keyring) -> Iterator[PipelineContext]:
    # One state folder per test: a test's stores are not another test's.
    context = default_context(keyring)
    yield context
    context.state.close()


@pytest.fixture
def harness(tmp_path: Path, keyring: Keyring, context: PipelineContext) -> ServiceHarness:
    harness = ServiceHarness(tmp_path, keyring, context)
    harness.service._membership[0] = MEMBERSHIP
    return harness


def _batch(first_offset: int, count: int, seed: int) -> list[RawRecord]:
    from streams.generate.model import TrafficModel

    return [
        RawRecord(first_offset + i, TRAFFIC_ARRIVAL_MS + first_offset + i, r.value)
        for i, r in enumerate(TrafficModel(traffic_config(count, seed=seed)))
    ]


def _accepting_commits() -> Any:
    async def commit(consumer: Any, tp: Any, offset: int, membership: Membership) -> None:
        return None

    return commit


def test_a_revocation_that_gives_up_on_a_write_closes_the_store_after_its_writer_thread_job(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interleaving: a range's marker is published and its keys are going into the store on
    the writer thread (``_apply_committed``) when a revocation's wait for it runs out
    (SETTLE_TIMEOUT_S). Cancelling the write does not stop the thread; the revocation then
    dropped the partition and closed its pipeline and store under that job. Broke: the
    committed range's keys never reached the store (the job failed on the closed pipeline,
    silently: its future was cancelled), and a store was closed while a thread wrote it."""
    monkeypatch.setattr(committer_module, "commit_fenced", _accepting_commits())
    monkeypatch.setattr(service_module, "SETTLE_TIMEOUT_S", 0.0)
    service, pipeline = harness.service, harness.pipeline
    applying, release = threading.Event(), threading.Event()
    real_range_committed, real_close = pipeline.range_committed, pipeline.close
    errors: list[BaseException] = []
    closed_after_the_job: list[bool] = []

    def range_committed(pending: Any, marker: Any) -> None:
        applying.set()
        assert release.wait(10)
        try:
            real_range_committed(pending, marker)
        except BaseException as error:  # lost with the cancelled write's future otherwise
            errors.append(error)
            raise

    def close() -> None:
        closed_after_the_job.append(not applying.is_set() or release.is_set())
        real_close()

    monkeypatch.setattr(pipeline, "range_committed", range_committed)
    monkeypatch.setattr(pipeline, "close", close)
    service._opened_at[0] = 0.0

    async def run() -> None:
        await service._flush(0, wait=False)
        assert await asyncio.to_thread(applying.wait, 10)
        waiting_for_the_thread = asyncio.Event()
        real_wait_idle = getattr(service.committer, "wait_idle", None)

        async def wait_idle() -> None:
            waiting_for_the_thread.set()
            assert real_wait_idle is not None
            await real_wait_idle()

        monkeypatch.setattr(service.committer, "wait_idle", wait_idle, raising=False)
        revoked = asyncio.ensure_future(service.on_revoked([TopicPartition(TOPIC, 0)]))
        waiting = asyncio.ensure_future(waiting_for_the_thread.wait())
        # The revocation either finishes under the held job (the race) or waits for it.
        await asyncio.wait({revoked, waiting}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        release.set()
        await revoked
        await asyncio.to_thread(service.committer.shutdown)  # the held job has ended

    asyncio.run(run())

    assert closed_after_the_job == [True]
    assert errors == []
    assert 0 not in service.pipelines
    [marker] = read_markers(harness.filesystem, harness.base, TOPIC)
    store = _reopened(harness)
    assert store.applied is not None and store.applied.last_offset == marker.last_offset == 299


def _reopened(harness: ServiceHarness) -> PartitionStore:
    """The partition's store as its next pipeline in this process opens it (the harness's
    pipeline was never restored: its store is the one a pipeline opens without a root)."""
    context = harness.service.context
    return context.state.open(
        TOPIC,
        0,
        identity=f"LocalFileSystem:(none)/{TOPIC}",
        horizon_ms=context.dedup_horizon_seconds * 1000,
    )


def test_no_range_is_committed_after_one_a_revocation_gave_up_on(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interleaving: range 300-399 waits for its offset commit (a broker away) when the
    partition is revoked; the revocation gives up on it (SETTLE_TIMEOUT_S) and, with the
    next batch 400-499 buffered, cut that range and committed it. Broke: a marker after a
    gap, and the revocation crashed the worker: the committed range's keys cannot go into a
    store still at 299 ("does not follow the last one held")."""
    monkeypatch.setattr(service_module, "SETTLE_TIMEOUT_S", 0.0)
    service, pipeline = harness.service, harness.pipeline
    committing_range_300 = asyncio.Event()
    offsets: list[int] = []

    async def commit(consumer: Any, tp: Any, offset: int, membership: Membership) -> None:
        offsets.append(offset)
        if offset != 400:
            return
        committing_range_300.set()
        try:
            await asyncio.Event().wait()  # the broker never answers
        finally:
            # The revocation gave up on this one at once; a later wait would not time out.
            monkeypatch.setattr(service_module, "SETTLE_TIMEOUT_S", 10.0)

    monkeypatch.setattr(committer_module, "commit_fenced", commit)
    harness.write(harness.send_letters())  # 0-299 committed, in the store

    async def run() -> None:
        pipeline.process(_batch(300, 100, seed=5))
        service._opened_at[0] = 0.0
        await service._flush(0, wait=False)
        await committing_range_300.wait()
        pipeline.process(_batch(400, 100, seed=6))
        await service.on_revoked([TopicPartition(TOPIC, 0)])
        await asyncio.to_thread(service.committer.shutdown)

    asyncio.run(run())

    assert offsets == [300, 400]  # nothing after the range given up on
    assert [m.last_offset for m in read_markers(harness.filesystem, harness.base, TOPIC)] == [299]
    assert 0 not in service.pipelines
    assert _reopened(harness).applied.last_offset == 299  # type: ignore[union-attr]


def test_consent_read_while_the_writer_thread_applies_a_range_sees_its_changes(
    tmp_path: Path,
) -> None:
    """Interleaving: a batch on its thread asks the consent state (``state_for``) of a
    person whose opt-out is in the sealed range being committed; it reads the store before
    the writer thread applies that range, and the range's changes after the writer thread
    has forgotten them (``ConsentTracker.applied``). Broke: the opt-out was in neither, so
    the person's events of that batch were kept as if they had never opted out."""
    person = "ab" * 16
    folder = StateFolder(tmp_path)
    store = folder.open(TOPIC, 0, identity="test", horizon_ms=3_600_000)
    tracker = ConsentTracker(store)
    tracker.record([(person, "opt_out")])
    tracker.seal()  # the range 0-9 is cut; its opt-out is not in the store yet
    read, release = threading.Event(), threading.Event()
    real_statuses = store.consent_statuses

    def consent_statuses(keys: list[bytes]) -> list[int]:
        statuses = real_statuses(keys)
        read.set()
        assert release.wait(10)
        return statuses

    store.consent_statuses = consent_statuses  # type: ignore[method-assign]
    answer: list[Any] = []
    batch = threading.Thread(target=lambda: answer.append(tracker.state_for([person], [])))
    batch.start()
    try:
        assert read.wait(10)
        store.consent_statuses = real_statuses  # type: ignore[method-assign]
        # What _apply_committed does for the range, on the writer thread.
        store.apply(
            StoreUpdate(
                first_offset=0,
                applied=AppliedRange(9, "", None),
                key_id="k",
                event_keys=b"",
                arrivals=_no_arrivals(),
                consent_changes=[(person, "opt_out")],
            )
        )
        tracker.applied()
    finally:
        release.set()
        batch.join(10)
    folder.close()

    [state] = answer
    assert person in state.opted_out


def _no_arrivals() -> Any:
    import numpy as np

    return np.empty(0, np.int64)


class _GroupConsumer(FakeConsumer):
    """The consumer calls an assignment makes (generation, log start, position)."""

    def __init__(self) -> None:
        super().__init__()

        async def fetch_committed_offsets(partitions: Any) -> dict[Any, Any]:
            return {}

        self._coordinator = SimpleNamespace(
            generation=8, member_id="m-8", fetch_committed_offsets=fetch_committed_offsets
        )
        self.positions: dict[Any, int] = {}

    async def beginning_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(partitions, 0)

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset


def test_a_revocation_that_gives_up_on_a_range_waiting_for_a_full_disk_resumes_consumption(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interleaving: a range waits for a full disk (consumption paused, the write retried
    with backoff) when its partition is revoked; the revocation gives up on it at once.
    Broke: only that write could ever say the disk took writes again, so the worker stayed
    "disk full" for good: every partition assigned next was paused on assignment, no range
    was ever cut to try the disk again, and the worker polled forever without consuming."""
    monkeypatch.setattr(committer_module, "commit_fenced", _accepting_commits())
    monkeypatch.setattr(committer_module, "BACKOFF_S", (3600.0,))  # waiting when revoked
    service, consumer = harness.service, _GroupConsumer()
    service._consumer = consumer  # type: ignore[assignment]

    def stage_range(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(harness.writer, "stage_range", stage_range)
    real_pause = service.committer._pause
    paused_for_the_disk = asyncio.Event()

    def pause(paused: bool) -> None:
        real_pause(paused)
        if paused:
            paused_for_the_disk.set()

    monkeypatch.setattr(service.committer, "_pause", pause)
    tp = TopicPartition(TOPIC, 0)
    service._opened_at[0] = 0.0

    async def run() -> None:
        await service._flush(0, wait=False)
        await paused_for_the_disk.wait()
        await service.on_revoked([tp])
        await service.on_assigned([tp])  # the disk has room again meanwhile
        await asyncio.to_thread(service.committer.shutdown)

    asyncio.run(run())

    assert service.committer.disk_full_since is None
    assert consumer.paused == set()  # consuming again: the next range tries the disk
    assert consumer.positions == {tp: 0} and 0 in service.pipelines


def test_a_partition_dropped_while_a_batch_s_dead_letters_are_sent_keeps_nothing_of_it(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interleaving: a batch is processed and its dead letters are being sent (the loop
    awaits the producer) when a refused commit of the range in flight drops the partition.
    Broke: the batch was booked for the dropped partition anyway: its letters and open-range
    age kept in the service, its records counted as processed, and their arrivals held by
    the metrics (as if waiting to be committed) for a partition this worker no longer has."""
    service, pipeline = harness.service, harness.pipeline
    real_send = harness.sender.send
    processed_before = harness.metrics.processed

    async def send(letters: Any) -> Any:
        service._drop(0, pipeline)  # what a refused commit does (RangeCommitter._abandoned)
        return await real_send(letters)

    monkeypatch.setattr(harness.sender, "send", send)
    batch = _batch(300, 200, seed=7)
    batch[0] = RawRecord(300, batch[0].timestamp, b"{not json")  # a dead letter for sure

    asyncio.run(service._process(0, batch))

    assert harness.producer.sent  # the letters went (the next owner sends them again)
    assert 0 not in service._letters and 0 not in service._opened_at
    assert harness.metrics.processed == processed_before
    assert 0 not in harness.metrics._arrivals


def test_a_partition_dropped_while_its_lag_is_read_reports_no_lag(harness: ServiceHarness) -> None:
    """Interleaving: the lag timer awaits a partition's position from the broker when a
    refused commit (or a revocation) drops the partition. Broke: the lag was written after
    the drop had forgotten it, so the worker reported lag for a partition it no longer has,
    until the group gave that partition back to it (maybe never)."""
    service, pipeline = harness.service, harness.pipeline
    tp = TopicPartition(TOPIC, 0)

    class LagConsumer(FakeConsumer):
        def assignment(self) -> set[Any]:
            return {tp}

        def highwater(self, tp: Any) -> int:
            return 1_000

        async def position(self, tp: Any) -> int:
            service._drop(0, pipeline)  # while the broker answers
            return 300

    service._consumer = LagConsumer()  # type: ignore[assignment]
    asyncio.run(service.refresh_lag())

    assert 0 not in harness.metrics.lag


def test_the_consume_loop_stops_waiting_for_a_range_once_the_disk_fills(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interleaving: the next range of a partition is due, so the consume loop waits (holding
    the service's lock) for the range in flight, which then meets a full disk. Broke: the
    loop waited for the disk: it stopped polling (the group evicts a worker that stops
    polling, the very thing pausing for a full disk is for) and held the lock, so a
    revocation could not proceed either, for as long as the disk stayed full."""
    monkeypatch.setattr(committer_module, "commit_fenced", _accepting_commits())
    monkeypatch.setattr(committer_module, "BACKOFF_S", (3600.0,))
    service, pipeline = harness.service, harness.pipeline
    staging, full = threading.Event(), threading.Event()

    def stage_range(*args: Any, **kwargs: Any) -> Any:
        staging.set()
        assert full.wait(10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(harness.writer, "stage_range", stage_range)
    service._opened_at[0] = 0.0

    async def run() -> None:
        await service._flush(0, wait=False)  # 0-299 in flight
        assert await asyncio.to_thread(staging.wait, 10)
        pipeline.process(_batch(300, 100, seed=5))
        service._opened_at[0] = 1.0
        next_range = asyncio.ensure_future(service._flush(0, wait=False))
        full.set()  # the range in flight meets the full disk
        await asyncio.wait_for(next_range, 10)
        assert service.committer.disk_full_since is not None
        assert not service._writes[0].done()  # still waiting for the disk
        assert pipeline.buffered_records == 100  # not cut: cut once the disk takes writes
        assert service._opened_at[0] == 1.0  # so still due
        service._writes.pop(0).cancel()
        await asyncio.to_thread(service.committer.shutdown)

    asyncio.run(run())


def test_an_assignment_of_a_partition_whose_range_in_flight_is_refused_recovers_it(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interleaving: a partition is assigned while it still has a pipeline and a range in
    flight (an assignment with no revocation before it: not aiokafka's eager protocol, the
    service guards against it all the same); the assignment waits for that range, whose
    commit the group refuses, and the refusal drops the partition meanwhile. Broke: the
    assignment then dropped the pipeline it had looked up before the wait (KeyError), and
    the worker crashed instead of recovering the partition."""
    from streams.worker.fencing import FencedError

    async def commit(consumer: Any, tp: Any, offset: int, membership: Membership) -> None:
        raise FencedError("the group moved on")

    monkeypatch.setattr(committer_module, "commit_fenced", commit)
    service, consumer = harness.service, _GroupConsumer()
    service._consumer = consumer  # type: ignore[assignment]
    tp = TopicPartition(TOPIC, 0)
    service._opened_at[0] = 0.0

    async def run() -> None:
        await service._flush(0, wait=False)
        await service.on_assigned([tp])
        await asyncio.to_thread(service.committer.shutdown)

    asyncio.run(run())

    assert service.pipelines[0] is not harness.pipeline
    assert service._membership[0] == Membership(8, "m-8")
    assert consumer.positions == {tp: 0}
