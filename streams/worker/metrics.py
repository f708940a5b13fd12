"""The worker's metrics, exposed in the Prometheus format by prometheus_client.

Counters count what this process committed (they move when a range's marker is written,
never before), so they add up: raw = accepted + duplicates + dead-lettered. Totals across
restarts and workers come from the commit markers (``sieve status``); Prometheus sums the
workers' counters (``sum(rate(...))``) and copes with their restarts.

The hot path pays per batch and per range, never per event: a batch's processing time is
one observation, a range's write time is one, and the end-to-end lag of every record of a
range (the moment its marker is in place minus the record's arrival, its Kafka timestamp)
is bucketed in one numpy call when the range is committed
(:class:`~streams.monitoring.buckets.BucketCounts`). Each worker has a registry of its own.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.commits import RangeCounts
from schemas.datasets import FACTS_DATASET, IDENTIFIABLE_DATASET
from streams.monitoring.buckets import BucketCounts
from streams.monitoring.exposition import render

# A batch of 10,000 records takes ~0.15 s on one core (bench/README.md); ranges take from
# tens of milliseconds (a small range) to tens of seconds (200,000 records on a slow disk).
BATCH_SECONDS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RANGE_WRITE_SECONDS_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# From a caught-up worker (about the roll interval, 5 s) to a day-long backlog.
END_TO_END_LAG_BUCKETS: Final = (
    0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 86400,
)  # fmt: skip

_timestamp = operator.attrgetter("timestamp")


class _Record(Protocol):
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...  # ms since the epoch; -1 if the record has none


@dataclass(frozen=True)
class _Arrivals:
    """The arrival times (ms) of one processed batch, until its range is committed."""

    first_offset: int
    last_offset: int
    ms: npt.NDArray[np.int64]


@dataclass
class WorkerMetrics:
    raw: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    identifiable: Counter[str] = field(default_factory=Counter)
    facts: int = 0
    bytes_written: int = 0
    properties_dropped: int = 0
    ranges_committed: int = 0
    lag: dict[int, int] = field(default_factory=dict)  # partition -> records behind
    # Records taken into open ranges (committed or not yet): the worker's pace right now,
    # where the committed counters move a range at a time.
    processed: int = 0
    registry: CollectorRegistry = field(init=False, repr=False)
    batch_seconds: Histogram = field(init=False, repr=False)
    range_write_seconds: Histogram = field(init=False, repr=False)
    end_to_end_lag: BucketCounts = field(init=False, repr=False)
    _arrivals: dict[int, list[_Arrivals]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batch_seconds = Histogram(
            "sieve_batch_processing_seconds",
            "Seconds to process one fetched batch of one partition (decode to buffered outputs).",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.range_write_seconds = Histogram(
            "sieve_range_write_seconds",
            "Seconds from a range being cut to its commit marker in place (dead letters"
            " confirmed, files written, offsets committed).",
            buckets=RANGE_WRITE_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.end_to_end_lag = BucketCounts(END_TO_END_LAG_BUCKETS)
        self.registry.register(_Exposition(self))
        ProcessCollector(registry=self.registry)  # CPU seconds, resident memory, open files

    def add(self, counts: RangeCounts) -> None:
        self.raw += counts.raw
        self.accepted += counts.accepted
        self.duplicates += counts.duplicates
        self.dead_lettered.update(counts.dead_lettered)
        self.identifiable.update(counts.rows_by(IDENTIFIABLE_DATASET.name))
        self.facts += counts.rows(FACTS_DATASET.name)
        self.bytes_written += counts.bytes_written
        self.properties_dropped += counts.properties_dropped
        self.ranges_committed += 1

    def batch_processed(self, partition: int, records: Sequence[_Record], seconds: float) -> None:
        """One batch of ``partition`` went into its open range in ``seconds``; its records'
        arrivals are kept until the range is committed (8 bytes a record)."""
        self.processed += len(records)
        self.batch_seconds.observe(seconds)
        if not records:
            return
        # attrgetter through map: the loop runs in C, ~25 ns a record (no Python per event).
        arrivals = np.fromiter(map(_timestamp, records), dtype=np.int64, count=len(records))
        first = records[0].offset
        batches = self._arrivals.setdefault(partition, [])
        # Offsets are processed in order; a batch at or before an earlier one's offsets means
        # that one's range was never committed (abandoned, then fetched again): forget it.
        while batches and batches[-1].last_offset >= first:
            batches.pop()
        batches.append(_Arrivals(first, records[-1].offset, arrivals))

    def range_committed(
        self,
        partition: int,
        first_offset: int,
        last_offset: int,
        counts: RangeCounts,
        *,
        now: float,
        write_seconds: float,
    ) -> None:
        """The range's marker is in place at ``now`` (seconds since the epoch, the clock the
        Kafka timestamps come from), ``write_seconds`` after it was cut."""
        self.add(counts)
        self.range_write_seconds.observe(write_seconds)
        batches = self._arrivals.get(partition, [])
        inside = [
            b.ms for b in batches if b.first_offset >= first_offset and b.last_offset <= last_offset
        ]
        self._arrivals[partition] = [b for b in batches if b.last_offset > last_offset]
        if not inside:
            return
        arrivals = np.concatenate(inside)
        arrivals = arrivals[arrivals >= 0]  # records without a timestamp have no arrival
        # A producer's clock ahead of ours would make a lag negative: it is at most zero.
        lags = np.maximum(now - arrivals / 1000.0, 0.0)
        self.end_to_end_lag.observe_many(lags)

    def forget_partition(self, partition: int) -> None:
        """The partition went to another worker: drop its lag and its uncommitted arrivals."""
        self._arrivals.pop(partition, None)
        self.lag.pop(partition, None)

    def render(self) -> str:
        """The Prometheus exposition text of every metric."""
        return render(self.registry)[0].decode()


class _Exposition(Collector):
    """The counters and gauges of a :class:`WorkerMetrics`, read when Prometheus scrapes."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        yield _counter(
            "sieve_raw_records", "Raw messages committed (accepted+duplicates+dead).", m.raw
        )
        yield _counter("sieve_accepted", "Events accepted (valid, not duplicates).", m.accepted)
        yield _counter(
            "sieve_duplicates",
            "Events dropped as duplicates of an accepted event id.",
            m.duplicates,
        )
        dead = CounterMetricFamily(
            "sieve_dead_lettered", "Raw messages dead-lettered, by reason.", labels=["reason"]
        )
        for reason, count in sorted(m.dead_lettered.items()):
            dead.add_metric([reason], count)
        yield dead
        identifiable = CounterMetricFamily(
            "sieve_identifiable_records",
            "Identifiable records, by retention class.",
            labels=["retention_class"],
        )
        for retention_class, count in sorted(m.identifiable.items()):
            identifiable.add_metric([retention_class], count)
        yield identifiable
        yield _counter("sieve_facts", "Anonymized fact rows written.", m.facts)
        yield _counter("sieve_bytes_written", "Bytes of Parquet written.", m.bytes_written)
        yield _counter(
            "sieve_properties_dropped",
            "Properties of custom events kept nowhere (undeclared by the policy, or declared"
            " dropped).",
            m.properties_dropped,
        )
        yield _counter(
            "sieve_ranges_committed",
            "Offset ranges committed (files + marker).",
            m.ranges_committed,
        )
        yield _counter(
            "sieve_processed_records",
            "Raw records processed into open ranges (they count in sieve_raw_records_total once"
            " their range is committed).",
            m.processed,
        )
        lag = GaugeMetricFamily(
            "sieve_consumer_lag",
            "Records of the raw topic not yet fetched, by partition.",
            labels=["partition"],
        )
        for partition, behind in sorted(m.lag.items()):
            lag.add_metric([str(partition)], behind)
        yield lag
        yield m.end_to_end_lag.family(
            "sieve_end_to_end_lag_seconds",
            "Seconds from a raw record's arrival (its Kafka timestamp) to the commit of its range.",
        )


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
