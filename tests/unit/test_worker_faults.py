"""The worker's answers to a bad day, without Kafka: dead letters confirmed one by one and cut
to fit, a range written only once the group accepted its commit, a full disk waited out,
a broker that is not up yet waited for, and a broker outage logged in two lines.

The write path of a range (``RangeCommitter.commit``) runs here on doubles of the consumer
and the producer; the real broker runs the same path in tests/integration.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiokafka.errors as kafka_errors
import pytest

import streams.worker.committer as committer_module
from schemas.commits import read_markers
from schemas.decode import Rejection
from schemas.events import BACKFILL_HEADER
from streams.errors import TransientError
from streams.privacy.keyring import Keyring
from streams.worker.deadletter import (
    DROPPED_HEADERS_HEADER,
    TRUNCATED_HEADER,
    DeadLetter,
    dead_letter,
    fit_to_size,
    record_size,
)
from streams.worker.delivery import DeadLetterDeliveryError, DeadLetterSender
from streams.worker.fencing import FencedError, Membership
from streams.worker.outage_log import OutageLog
from streams.worker.pipeline import PipelineContext, RawRecord
from streams.worker.startup import wait_for_broker
from tests.fixtures.pipeline_context import default_context
from tests.fixtures.pipeline_truth import TRAFFIC_ARRIVAL_MS, traffic_config
from tests.fixtures.service_harness import TOPIC, FakeProducer, ServiceHarness

# --- dead letters cut to fit -----------------------------------------------------------------


def _letter(value_bytes: int, extra_headers: int = 0) -> DeadLetter:
    headers = [("sieve.error.code", b"invalid_json"), ("sieve.error.reason", b"not JSON")]
    headers += [(f"client-{n}", b"v" * 100) for n in range(extra_headers)]
    return DeadLetter(key=b"raw+0+7", value=b"x" * value_bytes, headers=headers)


def test_a_dead_letter_that_fits_is_left_alone() -> None:
    letter = _letter(1_000)
    assert fit_to_size(letter, 10_000) is letter


def test_a_dead_letter_too_large_is_cut_keeping_its_headers_and_saying_so() -> None:
    letter = _letter(50_000, extra_headers=3)
    fitted = fit_to_size(letter, 20_000)
    headers = dict(fitted.headers)
    assert record_size(fitted) <= 20_000
    assert fitted.value == letter.value[: len(fitted.value)] and len(fitted.value) > 15_000
    assert headers[TRUNCATED_HEADER] == b"50000"
    assert set(dict(letter.headers)) < set(headers)  # every original header kept
    assert fitted.key == letter.key


def test_headers_too_large_for_the_topic_are_dropped_and_counted() -> None:
    letter = _letter(5_000, extra_headers=50)  # ~5.5 kB of the client's own headers
    fitted = fit_to_size(letter, 2_000)
    headers = dict(fitted.headers)
    assert record_size(fitted) <= 2_000
    assert headers[DROPPED_HEADERS_HEADER] == b"50"
    assert headers["sieve.error.code"] == b"invalid_json"


# --- dead letters confirmed one by one --------------------------------------------------------


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.worker.delivery as delivery

    monkeypatch.setattr(delivery, "RETRY_BACKOFF_S", (0.0,))
    monkeypatch.setattr(committer_module, "BACKOFF_S", (0.0,))


def test_a_delivery_the_broker_refuses_fails_the_range(no_backoff: None) -> None:
    producer = FakeProducer(kafka_errors.MessageSizeTooLargeError(), failures=1)
    sender = DeadLetterSender(producer, "dead", 1_000_000)

    async def run() -> None:
        sent = await sender.send([_letter(10), _letter(20)])
        await sender.confirm(sent)

    with pytest.raises(DeadLetterDeliveryError, match="MessageSizeTooLargeError"):
        asyncio.run(run())


@pytest.mark.parametrize(
    "error", [kafka_errors.KafkaTimeoutError(), kafka_errors.NotLeaderForPartitionError()]
)
def test_a_delivery_that_failed_while_the_broker_was_away_is_sent_again(
    no_backoff: None, error: Exception
) -> None:
    producer = FakeProducer(error, failures=3)
    sender = DeadLetterSender(producer, "dead", 1_000_000)

    async def run() -> None:
        await sender.confirm(await sender.send([_letter(10)]))

    asyncio.run(run())
    assert len(producer.sent) == 4  # the first send, then three more until one got through


def test_the_sender_cuts_a_letter_too_large_for_its_topic() -> None:
    producer = FakeProducer()
    sender = DeadLetterSender(producer, "dead", 5_000)

    async def run() -> None:
        await sender.confirm(await sender.send([_letter(50_000)]))

    asyncio.run(run())
    [(_, value, headers)] = producer.sent
    assert len(value) < 5_000 and dict(headers)[TRUNCATED_HEADER] == b"50000"
    assert sender.truncated == 1


# --- the write path of a range: confirm, stage, commit in the generation, publish --------------


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture(scope="module")
def context(keyring: Keyring) -> PipelineContext:
    return default_context(keyring)


@pytest.fixture
def harness(tmp_path: Path, keyring: Keyring, context: PipelineContext) -> Iterator[ServiceHarness]:
    yield ServiceHarness(tmp_path, keyring, context)


def _commit_answering(outcome: Exception | None) -> Any:
    calls: list[tuple[Any, int, Membership]] = []

    async def commit(consumer: Any, tp: Any, offset: int, membership: Membership) -> None:
        calls.append((tp, offset, membership))
        if outcome is not None:
            raise outcome

    commit.calls = calls  # type: ignore[attr-defined]
    return commit


def test_an_accepted_commit_publishes_the_marker_with_its_generation(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = _commit_answering(None)
    monkeypatch.setattr(committer_module, "commit_fenced", commit)
    harness.write(harness.send_letters())

    [marker] = read_markers(harness.filesystem, harness.base, TOPIC)
    assert (marker.generation, marker.member_id) == (7, "m-7")
    assert all(path.endswith("-g7.parquet") for path in marker.files)
    assert commit.calls[0][1] == marker.last_offset + 1 == 300
    assert harness.metrics.raw == 300
    assert len(harness.producer.sent) == len(harness.letters) > 0


def test_a_refused_commit_abandons_the_range_and_drops_the_partition(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_module, "commit_fenced", _commit_answering(FencedError("gone")))
    harness.write(harness.send_letters())

    assert read_markers(harness.filesystem, harness.base, TOPIC) == []
    assert harness.files() == []  # the range's files and its staged marker are gone
    assert 0 not in harness.service.pipelines
    assert harness.metrics.raw == 0


def test_a_commit_refused_while_the_next_batch_is_processed_drops_that_batch_too(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committer drops a fenced partition without the service's lock, so the drop can
    land while the consume loop processes the partition's next batch on a thread. Its store
    must close only once that batch is done (closing it under the batch crashed a worker of
    the fault storm: "the pipeline was closed"), and the batch goes with the partition."""
    from streams.generate.model import TrafficModel

    pipeline, service = harness.pipeline, harness.service
    batch = [
        RawRecord(300 + i, TRAFFIC_ARRIVAL_MS + 300 + i, r.value)
        for i, r in enumerate(TrafficModel(traffic_config(100, seed=5)))
    ]
    processing, release = threading.Event(), threading.Event()
    real_process, real_close = pipeline.process, pipeline.close
    closed_after_the_batch: list[bool] = []

    def process(records: Any) -> Any:
        processing.set()
        assert release.wait(10)
        return real_process(records)

    def close() -> None:
        closed_after_the_batch.append(release.is_set())
        real_close()

    monkeypatch.setattr(pipeline, "process", process)
    monkeypatch.setattr(pipeline, "close", close)
    processed_before = harness.metrics.processed

    async def run() -> None:
        batch_on_its_thread = asyncio.create_task(service._process(0, batch))
        assert await asyncio.to_thread(processing.wait, 10)
        service._drop(0, pipeline)  # what a refused commit does (RangeCommitter._abandoned)
        release.set()
        await batch_on_its_thread

    asyncio.run(run())

    assert closed_after_the_batch == [True]
    assert 0 not in service.pipelines and 0 not in service._opened_at
    assert harness.metrics.processed == processed_before  # the batch was not counted in


@pytest.mark.parametrize("still_ours", [False, True])
def test_a_range_whose_staged_marker_vanished_never_counts(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch, still_ours: bool
) -> None:
    """The worker stalled between an accepted commit and its marker (SIGSTOP, a frozen VM)
    long enough for the next owner to recover the partition: no marker may appear. If the
    group says the partition is still ours, the file vanished for another reason: stop."""
    from streams.worker.sink import recover_partition

    calls: list[int] = []

    async def commit(consumer: Any, tp: Any, offset: int, membership: Any) -> None:
        calls.append(offset)
        if len(calls) == 1:
            recover_partition(harness.filesystem, harness.base, TOPIC, 0)  # the next owner
        elif not still_ours:
            raise FencedError("the group moved on")

    monkeypatch.setattr(committer_module, "commit_fenced", commit)
    if still_ours:
        with pytest.raises(FileNotFoundError):
            harness.write(harness.send_letters())
    else:
        harness.write(harness.send_letters())
        assert 0 not in harness.service.pipelines

    assert calls == [300, 0]  # the range's commit, then the ownership probe (moves nothing)
    assert read_markers(harness.filesystem, harness.base, TOPIC) == []
    assert harness.files() == []
    assert harness.metrics.raw == 0


def test_a_failed_dead_letter_delivery_commits_nothing(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch, no_backoff: None
) -> None:
    commit = _commit_answering(None)
    monkeypatch.setattr(committer_module, "commit_fenced", commit)
    harness.producer.error = kafka_errors.MessageSizeTooLargeError()
    harness.producer.failures = 1

    with pytest.raises(DeadLetterDeliveryError):
        harness.write(harness.send_letters())

    assert commit.calls == []
    assert harness.files() == []
    assert harness.metrics.raw == 0


def test_a_full_disk_pauses_consumption_and_is_retried(
    harness: ServiceHarness,
    monkeypatch: pytest.MonkeyPatch,
    no_backoff: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(committer_module, "commit_fenced", _commit_answering(None))
    real_stage = harness.writer.stage_range
    attempts: list[bool] = []

    def stage(*args: Any, **kwargs: Any) -> Any:
        attempts.append(bool(harness.consumer.paused))
        if len(attempts) <= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(harness.writer, "stage_range", stage)
    with caplog.at_level(logging.WARNING, logger="streams.worker.committer"):
        harness.write(harness.send_letters())

    assert attempts == [False, True, True, True]  # paused from the first failure on
    assert harness.consumer.paused == set()  # and resumed once the write went through
    assert len(read_markers(harness.filesystem, harness.base, TOPIC)) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert sum("disk full" in line for line in lines) == 1
    assert sum("disk writable again" in line for line in lines) == 1


def test_another_write_error_stops_with_nothing_committed(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_module, "commit_fenced", _commit_answering(None))

    def stage(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(harness.writer, "stage_range", stage)
    with pytest.raises(OSError, match="Input/output"):
        harness.write(harness.send_letters())
    assert read_markers(harness.filesystem, harness.base, TOPIC) == []


def test_a_stop_after_a_failed_write_still_stops_the_consumer_and_the_producer(
    harness: ServiceHarness,
) -> None:
    service = harness.service
    service._producer = harness.producer  # type: ignore[assignment]

    async def stop() -> None:
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(OSError(errno.EIO, "Input/output error"))
        service._writes[0] = failed  # the partition's range in flight failed
        with pytest.raises(OSError, match="Input/output"):
            await service.on_stop()

    asyncio.run(stop())
    # Stopped all the same: the group hears at once that the member left.
    assert harness.consumer.stopped and harness.producer.stopped
    assert not service.stopped_cleanly
    assert read_markers(harness.filesystem, harness.base, TOPIC) == []


# --- start and outages ---------------------------------------------------------------------


def test_a_worker_waits_for_a_broker_that_is_not_up_yet_with_one_line_each_way() -> None:
    answers = iter([TransientError("refused")] * 5 + ["ready"])
    lines: list[str] = []
    sleeps: list[float] = []
    now = [0.0]

    def attempt() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    result = wait_for_broker(
        attempt, what="Kafka", report=lines.append, sleep=sleep, clock=lambda: now[0]
    )
    assert result == "ready"
    assert len(sleeps) == 5
    assert len(lines) == 2 and "waiting" in lines[0]
    assert lines[1].endswith(f"answered after {sum(sleeps):.0f} s")
    assert sleeps == sorted(sleeps) and sleeps[0] < sleeps[-1]  # backing off


def test_a_broker_outage_logs_one_line_when_it_starts_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    outage = OutageLog(quiet_s=5.0, clock=lambda: now[0])
    noisy = logging.getLogger("aiokafka.test_outage")
    noisy.addFilter(outage)
    try:
        with caplog.at_level(logging.INFO):
            noisy.info("Discovered coordinator 1")
            # A coordinator still loading (a fresh broker) is no outage: shown as it is.
            noisy.error("Group Coordinator Request failed: GroupCoordinatorNotAvailableError")
            for _ in range(1000):
                now[0] += 0.01
                noisy.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
                outage.tick()
            noisy.error("Unexpected error in fetcher routine")  # not about connecting: shown
            now[0] += 5.0
            outage.tick()
            outage.tick()
    finally:
        noisy.removeFilter(outage)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "Discovered coordinator 1"
    assert lines[1] == "Group Coordinator Request failed: GroupCoordinatorNotAvailableError"
    assert lines[2].startswith("Kafka broker unreachable (Unable connect to node with id 1")
    assert lines[3] == "Unexpected error in fetcher routine"
    assert lines[4] == (
        "Kafka broker answering again (connection errors for 10 s, 999 lines not logged)"
    )
    assert len(lines) == 5


def test_a_start_that_failed_because_the_broker_went_away_is_recognised() -> None:
    from streams.worker.startup import broker_away

    assert broker_away(kafka_errors.KafkaConnectionError("Unable to bootstrap"))
    try:
        try:
            raise kafka_errors.KafkaConnectionError("Connection closed")
        except kafka_errors.KafkaError as away:
            raise RuntimeError("the producer did not start") from away
    except RuntimeError as wrapped:
        assert broker_away(wrapped)
    assert not broker_away(ValueError("a bug"))
    assert not broker_away(kafka_errors.MessageSizeTooLargeError())
    assert not broker_away(None)


def test_a_dead_letter_keeps_the_backfill_mark_and_drops_a_client_s_other_sieve_headers() -> None:
    rejection = Rejection(index=0, code="invalid_json", field="$", reason="not JSON")
    letter = dead_letter(
        rejection,
        value=b"{",
        original_headers=[
            (BACKFILL_HEADER, b"1"),
            ("sieve.error.code", b"forged"),
            ("client-trace", b"abc"),
        ],
        topic=TOPIC,
        partition=0,
        offset=7,
        worker_version="test",
    )
    headers = dict(letter.headers)
    assert headers[BACKFILL_HEADER] == b"1"
    assert headers["sieve.error.code"] == b"invalid_json"
    assert [name for name, _ in letter.headers].count("sieve.error.code") == 1
    assert headers["client-trace"] == b"abc"
