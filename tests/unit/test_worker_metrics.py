"""The worker's metrics: prometheus_client exposition, bulk histograms, per-range lags."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.commits import OutputCounts, RangeCounts
from streams.monitoring.buckets import BucketCounts
from streams.worker.metrics import END_TO_END_LAG_BUCKETS, WorkerMetrics
from streams.worker.pipeline import RawRecord

NOW = 1_800_000_000.0  # seconds since the epoch: the moment ranges are committed in these tests
BOUNDS = (0.5, 1.0, 2.5, 10.0)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text, by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def counts(raw: int, *, dead: dict[str, int] | None = None, duplicates: int = 0) -> RangeCounts:
    dead = dead or {}
    accepted = raw - duplicates - sum(dead.values())
    return RangeCounts(
        raw=raw,
        accepted=accepted,
        duplicates=duplicates,
        dead_lettered=dead,
        outputs={
            "identifiable": OutputCounts(accepted, {"traffic": accepted}),
            "facts": OutputCounts(accepted),
        },
        bytes_written=1000,
    )


def records(first: int, count: int, arrived_s_ago: float) -> list[RawRecord]:
    arrival_ms = int((NOW - arrived_s_ago) * 1000)
    return [RawRecord(first + i, arrival_ms, b"{}") for i in range(count)]


# --- the bulk histogram against prometheus_client's own ----------------------------------


@given(
    st.lists(
        st.one_of(
            st.floats(min_value=-5, max_value=50, allow_nan=False),
            st.sampled_from(BOUNDS),  # exactly on a bound: that bucket (le), as Prometheus says
        ),
        max_size=200,
    )
)
def test_bulk_buckets_equal_prometheus_clients_histogram_fed_one_by_one(
    values: list[float],
) -> None:
    reference_registry = CollectorRegistry()
    reference = Histogram("lag_seconds", "doc", buckets=BOUNDS, registry=reference_registry)
    for v in values:
        reference.observe(v)
    bulk = BucketCounts(BOUNDS)
    bulk.observe_many(np.asarray(values, dtype=np.float64))
    bulk_registry = CollectorRegistry()

    class One:
        def collect(self):  # type: ignore[no-untyped-def]
            yield bulk.family("lag_seconds", "doc")

    bulk_registry.register(One())  # type: ignore[arg-type]
    expected = samples(generate_latest(reference_registry).decode())
    got = samples(generate_latest(bulk_registry).decode())
    expected = {k: v for k, v in expected.items() if not k[0].endswith("_created")}
    assert got.keys() == expected.keys()
    for key, number in expected.items():
        assert math.isclose(got[key], number, rel_tol=1e-9, abs_tol=1e-9), key


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        BucketCounts((1.0, 0.5))
    with pytest.raises(ValueError, match="increasing"):
        BucketCounts((1.0, 1.0))


# --- the worker's exposition -------------------------------------------------------------


def test_every_counter_is_exposed_and_parses() -> None:
    metrics = WorkerMetrics()
    metrics.range_committed(
        0, 0, 9, counts(10, dead={"invalid_json": 1}, duplicates=2), now=NOW, write_seconds=0.2
    )
    metrics.lag.update({0: 5, 3: 7})
    text = metrics.render()

    assert value(text, "sieve_raw_records_total") == 10
    assert value(text, "sieve_accepted_total") == 7
    assert value(text, "sieve_duplicates_total") == 2
    assert value(text, "sieve_dead_lettered_total", reason="invalid_json") == 1
    assert value(text, "sieve_identifiable_records_total", retention_class="traffic") == 7
    assert value(text, "sieve_facts_total") == 7
    assert value(text, "sieve_bytes_written_total") == 1000
    assert value(text, "sieve_ranges_committed_total") == 1
    assert value(text, "sieve_consumer_lag", partition="0") == 5
    assert value(text, "sieve_consumer_lag", partition="3") == 7
    assert value(text, "sieve_range_write_seconds_count") == 1
    assert value(text, "sieve_range_write_seconds_sum") == pytest.approx(0.2)
    assert value(text, "process_resident_memory_bytes") > 0


def test_two_workers_in_one_process_have_their_own_metrics() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.range_committed(0, 0, 9, counts(10), now=NOW, write_seconds=0.1)
    assert value(first.render(), "sieve_raw_records_total") == 10
    assert value(second.render(), "sieve_raw_records_total") == 0


def test_a_batch_is_one_observation_and_its_records_count_as_processed() -> None:
    metrics = WorkerMetrics()
    metrics.batch_processed(0, records(0, 500, arrived_s_ago=1), seconds=0.04)
    text = metrics.render()
    assert value(text, "sieve_batch_processing_seconds_count") == 1
    assert value(text, "sieve_batch_processing_seconds_bucket", le="0.025") == 0
    assert value(text, "sieve_batch_processing_seconds_bucket", le="0.05") == 1
    assert value(text, "sieve_processed_records_total") == 500
    assert value(text, "sieve_raw_records_total") == 0  # nothing committed yet
    assert value(text, "sieve_end_to_end_lag_seconds_count") == 0


# --- end-to-end lag per range --------------------------------------------------------------


def test_a_committed_range_observes_the_lag_of_each_of_its_records() -> None:
    metrics = WorkerMetrics()
    metrics.batch_processed(2, records(100, 300, arrived_s_ago=3.0), seconds=0.01)
    metrics.batch_processed(2, records(400, 200, arrived_s_ago=40.0), seconds=0.01)
    metrics.range_committed(2, 100, 599, counts(500), now=NOW, write_seconds=0.1)
    text = metrics.render()

    assert value(text, "sieve_end_to_end_lag_seconds_count") == 500
    assert value(text, "sieve_end_to_end_lag_seconds_bucket", le="2.5") == 0
    assert value(text, "sieve_end_to_end_lag_seconds_bucket", le="5.0") == 300
    assert value(text, "sieve_end_to_end_lag_seconds_bucket", le="30.0") == 300
    assert value(text, "sieve_end_to_end_lag_seconds_bucket", le="60.0") == 500
    assert value(text, "sieve_end_to_end_lag_seconds_bucket", le="+Inf") == 500
    # Kafka timestamps are whole milliseconds: the sum is exact to a few ms per record.
    assert value(text, "sieve_end_to_end_lag_seconds_sum") == pytest.approx(
        300 * 3.0 + 200 * 40.0, abs=500 * 0.001
    )


def test_batches_after_the_range_wait_for_their_own_range() -> None:
    metrics = WorkerMetrics()
    metrics.batch_processed(0, records(0, 100, arrived_s_ago=1), seconds=0.01)
    metrics.batch_processed(0, records(100, 50, arrived_s_ago=1), seconds=0.01)
    metrics.range_committed(0, 0, 99, counts(100), now=NOW, write_seconds=0.1)
    assert metrics.end_to_end_lag.count == 100
    metrics.range_committed(0, 100, 149, counts(50), now=NOW, write_seconds=0.1)
    assert metrics.end_to_end_lag.count == 150


def test_an_abandoned_range_processed_again_is_observed_once() -> None:
    metrics = WorkerMetrics()
    metrics.batch_processed(0, records(0, 100, arrived_s_ago=1), seconds=0.01)
    # The range was abandoned (fenced) and the partition fetched again from offset 0.
    metrics.batch_processed(0, records(0, 60, arrived_s_ago=2), seconds=0.01)
    metrics.batch_processed(0, records(60, 40, arrived_s_ago=2), seconds=0.01)
    metrics.range_committed(0, 0, 99, counts(100), now=NOW, write_seconds=0.1)
    assert metrics.end_to_end_lag.count == 100
    assert metrics.end_to_end_lag.sum == pytest.approx(200.0, abs=0.1)


def test_a_partition_given_away_forgets_its_lag_and_arrivals() -> None:
    metrics = WorkerMetrics()
    metrics.lag[1] = 10
    metrics.batch_processed(1, records(0, 100, arrived_s_ago=1), seconds=0.01)
    metrics.forget_partition(1)
    assert 1 not in metrics.lag
    metrics.range_committed(1, 0, 99, counts(100), now=NOW, write_seconds=0.1)
    assert metrics.end_to_end_lag.count == 0  # its arrivals were dropped with it
    assert metrics.raw == 100  # what was committed still counts


def test_records_without_a_timestamp_have_no_lag_and_a_clock_behind_gives_zero() -> None:
    metrics = WorkerMetrics()
    batch = [RawRecord(0, -1, b"{}"), RawRecord(1, int((NOW + 5) * 1000), b"{}")]
    metrics.batch_processed(0, batch, seconds=0.01)
    metrics.range_committed(0, 0, 1, counts(2), now=NOW, write_seconds=0.1)
    assert metrics.end_to_end_lag.count == 1
    assert metrics.end_to_end_lag.sum == 0.0
    assert metrics.end_to_end_lag.cumulative()[0] == (str(END_TO_END_LAG_BUCKETS[0]), 1)


def test_samples_helper_reads_labels() -> None:
    # The helper above must distinguish labelled samples, or the tests could pass vacuously.
    parsed = samples('x_total{a="1"} 2\nx_total{a="2"} 3\n')
    assert parsed == {("x_total", (("a", "1"),)): 2, ("x_total", (("a", "2"),)): 3}
