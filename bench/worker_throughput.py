"""Worker throughput: one Sieve worker, raw topic to committed Parquet, against two baselines.

    python -m bench.worker_throughput [--events 300000] [--partitions 3] [--repeat 3]

One broker, one raw topic filled once with generated traffic (the traffic model's default
shares of duplicates, late and malformed records); then, ``--repeat`` times, three paths read
that topic, each with a fresh consumer group (the order is interleaved per repeat, so a
noisy neighbour hurts all three alike). The median rate of each path is reported.

bare
    aiokafka ``getmany(max_records=10_000)`` that only counts: the transport ceiling. Timed
    from the first batch returned to the last record (the group join and the first batch are
    not timed; its records are not counted).
worker
    ``RawTopicService`` (what ``sieve worker`` hosts) in this process, fresh group and data
    root. Timed from ``service.start()`` until every record is committed (the service's
    counters, which move right after each commit marker is written; the markers are re-read
    at the end and checked against the generator's ground truth): raw topic to committed
    Parquet, group join, partition recovery and the last range's write included. Also
    reported: the rate from its first fetched batch, where the run's time went, and the CPU
    time per event of this process and of the broker (bare path too).
naive
    a faust agent ``async for value in stream`` doing the worker's work one event at a time
    (the worker's own ``PartitionPipeline.process`` on a one-record batch: decode, event key,
    dedup, consent, user agent, geo, split, Arrow buffers), writing the Parquet files of what
    it processed at the end with the worker's ``RangeWriter``. Timed from its first event to
    the end of that write; capped at ``--naive-seconds`` of processing, rate over what it
    processed.

Targets (the issue): worker >= 50 % of bare, worker >= 5x naive. ``--gc-experiment`` adds
a fourth path (the worker after ``gc.freeze()``, a proposed change) and ``--profile`` one
more worker run under cProfile; neither enters the ratios. bench/README.md has the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import io
import json
import logging
import multiprocessing
import os
import platform
import pstats
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from rich.console import Console
from rich.table import Table

from streams.broker.control import LocalBroker, start_on_free_ports
from streams.generate.model import TrafficConfig, TrafficModel
from streams.generate.records import GroundTruth
from streams.generate.user_agents import load_user_agents
from streams.privacy.keyring import Keyring, write_new_keyring
from streams.settings import Settings
from streams.topics import create_topics, dead_letter_topic_spec, raw_topic_spec
from streams.worker.app import build_service
from streams.worker.commands import committed_totals
from streams.worker.metrics import WorkerMetrics
from streams.worker.pipeline import PartitionPipeline, PipelineContext, RawRecord
from streams.worker.service import RawTopicService
from streams.worker.sink import RangeWriter

REPO = Path(__file__).resolve().parent.parent
JAR_CACHE = REPO / ".sieve" / "broker" / "lib"  # shared with tests/conftest.py
TARGET_OF_BARE = 0.50
TARGET_OVER_NAIVE = 5.0
BATCH_RECORDS = 10_000
# The worker's consumer fetch sizes (streams/worker/service.py): the ceiling is measured on
# the same transport settings the worker gets.
FETCH_SIZES: dict[str, Any] = {
    "max_partition_fetch_bytes": 8 * 1024 * 1024,
    "fetch_max_bytes": 64 * 1024 * 1024,
}
# The period ends at the start of today (UTC): records arrive now, and the worker accepts
# live events only within its arrival window (SIEVE_EVENT_MAX_BEHIND, 400 days), so a fixed
# date would age into dead letters. The same seed gives the same bytes all day.
PERIOD_END = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
# Produce batches just under the broker's default message.max.bytes (1 MiB).
PRODUCE_BATCH_BYTES = 900 * 1024

T = TypeVar("T")


# --- what a run measured -----------------------------------------------------------------


@dataclass
class Run:
    """One timed run of one path: ``events`` handled in ``seconds``, plus what else it saw."""

    events: int
    seconds: float
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Fixture:
    """The broker, the filled topic and what every path shares."""

    bootstrap_servers: str
    topic: str
    dead_letter_topic: str
    partitions: int
    events: int
    mean_value_bytes: float
    per_partition: dict[int, int]
    truth: GroundTruth
    keyring: Keyring
    keyring_file: Path  # the same keys, for workers in other processes (they load it)
    work: Path
    broker_pid: int | None = None  # known when the benchmark started the broker itself


class CpuMeter:
    """CPU seconds used by this process (every thread) and by the broker, over a block.

    Rates alone hide the budget: on a shared 2-core machine the question is how many
    CPU-microseconds each event costs the consumer and the broker, per path.
    """

    def __init__(self, broker_pid: int | None) -> None:
        self._broker_pid = broker_pid
        self.process_s = 0.0
        self.broker_s: float | None = None

    def start(self) -> None:
        self._process_start = time.process_time()
        self._broker_start = _process_cpu_s(self._broker_pid)

    def stop(self) -> None:
        self.process_s = time.process_time() - self._process_start
        broker_end = _process_cpu_s(self._broker_pid)
        if self._broker_start is not None and broker_end is not None:
            self.broker_s = broker_end - self._broker_start

    def __enter__(self) -> CpuMeter:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def detail(self, events: int) -> dict[str, float]:
        per_event = {"cpu_us_per_event": self.process_s / events * 1e6}
        if self.broker_s is not None:
            per_event["broker_cpu_us_per_event"] = self.broker_s / events * 1e6
        return per_event


def _process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` from /proc (None where there is no /proc)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 of proc(5), counted after the ")" that ends the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- broker, topic, traffic ----------------------------------------------------------------


@contextlib.contextmanager
def local_broker(folder: Path) -> Iterator[LocalBroker]:
    """A broker of our own on free loopback ports, data in ``folder``, jars from the repo."""
    broker = start_on_free_ports(folder, JAR_CACHE, 120.0)
    try:
        yield broker
    finally:
        broker.stop()


def create_bench_topics(
    bootstrap_servers: str, raw: str, dead_letter: str, partitions: int
) -> None:
    """A fresh raw and dead-letter topic with the configs Sieve gives them."""
    create_topics(
        bootstrap_servers,
        [
            raw_topic_spec(raw, partitions, retention_hours=72),
            dead_letter_topic_spec(dead_letter, partitions, retention_hours=72),
        ],
    )


def delete_topics(bootstrap_servers: str, names: list[str]) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="sieve-bench")
    try:
        admin.delete_topics(names)
    finally:
        admin.close()


def generate(count: int, seed: int, days: float) -> tuple[list[tuple[bytes, bytes]], GroundTruth]:
    """Realistic traffic with the model's default duplicate, late and malformed shares."""
    config = TrafficConfig(
        count=count,
        start=PERIOD_END - timedelta(days=days),
        end=PERIOD_END,
        user_agents=load_user_agents(),
        seed=seed,
    )
    model = TrafficModel(config)
    records = [(record.key, record.value) for record in model]
    return records, model.truth


async def fill_topic(
    bootstrap_servers: str,
    topic: str,
    partitions: int,
    records: list[tuple[bytes, bytes]],
    compression: str | None,
) -> dict[int, int]:
    """Produce ``records`` keyed as the SDK does (murmur2 of the key), in large batches.

    Returns the records per partition. Order within a partition is the generator's order.
    """
    partitioner = DefaultPartitioner()
    every = list(range(partitions))
    by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for key, value in records:
        by_partition[partitioner(key, every, every)].append((key, value))
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        max_batch_size=PRODUCE_BATCH_BYTES,
        max_request_size=4 * 1024 * 1024,
        compression_type=compression,
        request_timeout_ms=60_000,
    )
    await producer.start()

    async def send(partition: int, items: list[tuple[bytes, bytes]]) -> None:
        acks: list[asyncio.Future[Any]] = []
        batch = producer.create_batch()
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:
                acks.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        if batch.record_count():
            acks.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*acks)

    try:
        await asyncio.gather(*(send(p, items) for p, items in by_partition.items()))
    finally:
        await producer.stop()
    return {p: len(by_partition.get(p, ())) for p in every}


# --- (a) bare consume ----------------------------------------------------------------------


async def measure_bare(fixture: Fixture, timeout_s: float) -> Run:
    """Count every record with ``getmany``; time from the first batch to the last record."""
    consumer = AIOKafkaConsumer(
        fixture.topic,
        bootstrap_servers=fixture.bootstrap_servers,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **FETCH_SIZES,
    )
    meter = CpuMeter(fixture.broker_pid)
    await consumer.start()
    try:
        seen = first_batch = 0
        first: float | None = None
        deadline = time.monotonic() + timeout_s
        while seen < fixture.events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"bare consumer saw {seen} of {fixture.events} records")
            batches = await consumer.getmany(timeout_ms=200, max_records=BATCH_RECORDS)
            got = sum(len(messages) for messages in batches.values())
            if got and first is None:
                first, first_batch = time.perf_counter(), got
                meter.start()  # the same window as the rate
            seen += got
        last = time.perf_counter()
        meter.stop()
    finally:
        await consumer.stop()
    assert first is not None
    return Run(seen - first_batch, last - first, meter.detail(seen - first_batch))


# --- (b) the worker ------------------------------------------------------------------------


class _WorkerProbe:
    """Times the worker's phases from outside, wrapping bound methods of this one instance.

    ``pipeline.process`` runs in a worker thread (``asyncio.to_thread``), one call at a time;
    ``writer.stage`` runs on the service's writer thread, overlapping the next batches. The
    wrappers time both; when profiling, the thread-side profiler covers ``process`` only (one
    profiler cannot follow two threads at once), so the writer shows in the phase times but
    not in the profile. Two clock reads per 10k-record batch: no measurable cost.
    """

    def __init__(self, service: RawTopicService, profiler: cProfile.Profile | None) -> None:
        self.profiler = profiler
        self.assigned_at: float | None = None
        self.first_batch_at: float | None = None
        self.last_batch_done_at: float | None = None
        self.process_s = 0.0
        self.commit_s = 0.0
        self.batches = 0
        self.commits = 0
        # Time in the cyclic garbage collector (any thread) while the probe is attached.
        self.gc_s = 0.0
        self.gc_collections = 0
        self._gc_started = 0.0
        original = service.on_assigned

        async def on_assigned(assigned: Any) -> None:
            await original(assigned)
            self.assigned_at = time.perf_counter()
            for pipeline in service.pipelines.values():
                if not getattr(pipeline, "_bench_probe", False):
                    pipeline.process = self._process(pipeline.process)  # type: ignore[method-assign]
                    pipeline._bench_probe = True  # type: ignore[attr-defined]

        service.on_assigned = on_assigned  # type: ignore[method-assign]
        # The service writes a range with stage() (files + staged marker) before its fenced
        # offset commit; publish() is a rename.
        service.writer.stage = self._commit(service.writer.stage)  # type: ignore[method-assign]

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_s += time.perf_counter() - self._gc_started
            self.gc_collections += 1

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        gc.callbacks.append(self._on_gc)
        try:
            yield
        finally:
            gc.callbacks.remove(self._on_gc)

    def _profiled(self, call: Callable[[], T]) -> T:
        if self.profiler is None:
            return call()
        self.profiler.enable()
        try:
            return call()
        finally:
            self.profiler.disable()

    def _process(self, process: Callable[..., T]) -> Callable[..., T]:
        def timed(records: Any) -> T:
            started = time.perf_counter()
            if self.first_batch_at is None:
                self.first_batch_at = started
            try:
                return self._profiled(lambda: process(records))
            finally:
                self.last_batch_done_at = time.perf_counter()
                self.process_s += self.last_batch_done_at - started
                self.batches += 1

        return timed

    def _commit(self, commit: Callable[..., T]) -> Callable[..., T]:
        def timed(**kwargs: Any) -> T:
            started = time.perf_counter()
            try:
                return commit(**kwargs)
            finally:
                self.commit_s += time.perf_counter() - started
                self.commits += 1

        return timed


def worker_settings(fixture: Fixture, root: Path, group: str, roll_interval_s: float) -> Settings:
    """Explicit values for everything that shapes the run (SIEVE_* variables cannot skew it)."""
    return Settings(
        bootstrap_servers=fixture.bootstrap_servers,
        raw_topic=fixture.topic,
        dead_letter_topic=fixture.dead_letter_topic,
        consumer_group=group,
        data_root=str(root / "data"),
        work_dir=root / "work",
        batch_max_records=BATCH_RECORDS,
        # Not file-bound: a range is cut by time (the roll interval), not by size.
        roll_max_records=200_000,
        roll_interval_seconds=roll_interval_s,
        honour_dnt=True,
        honour_gpc=True,
        dedup_horizon=timedelta(hours=24),
        policy_file=None,
        geoip_database=None,
    )


@contextlib.contextmanager
def _gc_experiment(enabled: bool) -> Iterator[None]:
    """``--gc-experiment``: what a tuned ``sieve worker`` would do (NOT what it does today).

    ``gc.freeze()`` once everything is built: the objects alive then (imported modules,
    clients, parsers, and here the benchmark's own state) move to the permanent generation,
    so the collections that each batch's many short-lived objects trigger stop re-scanning
    them. The thresholds stay at their defaults.
    """
    if not enabled:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _wait_until(
    condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(interval_s)


async def measure_worker(
    fixture: Fixture,
    root: Path,
    roll_interval_s: float,
    timeout_s: float,
    profilers: tuple[cProfile.Profile, cProfile.Profile] | None = None,
    gc_experiment: bool = False,
) -> Run:
    """Start the service, wait until the markers count every record, stop it.

    Progress is read from the service's metrics (moved right after each marker is written)
    every 20 ms; the markers themselves are read once at the end and must agree.
    """
    group = f"bench-worker-{uuid.uuid4().hex[:8]}"
    settings = worker_settings(fixture, root, group, roll_interval_s)
    metrics = WorkerMetrics()
    service = build_service(settings, fixture.keyring, metrics)
    main_profiler, thread_profiler = profilers or (None, None)
    probe = _WorkerProbe(service, thread_profiler)

    def committed_all() -> bool:
        if service.crashed:
            raise RuntimeError(f"the worker crashed: {service.crash_reason!r}")
        return metrics.raw >= fixture.events

    if main_profiler is not None:
        main_profiler.enable()
    with probe.attached(), _gc_experiment(gc_experiment):
        started = time.perf_counter()
        try:
            with CpuMeter(fixture.broker_pid) as meter:
                await service.start()
                await _wait_until(committed_all, timeout_s, "the worker to commit every record")
            done = time.perf_counter()
        finally:
            if main_profiler is not None:
                main_profiler.disable()
            await service.stop()
    totals, dead, _identifiable, ranges = committed_totals(settings.data_root, fixture.topic)
    if totals["raw"] != fixture.events:
        raise RuntimeError(f"markers count {totals['raw']} raw records, not {fixture.events}")
    truth = fixture.truth
    expected = (
        truth.by_kind["event"],
        truth.by_kind["duplicate"],
        truth.by_kind["malformed"],
    )
    found = (totals["accepted"], totals["duplicates"], sum(dead.values()))
    if found != expected:
        raise RuntimeError(f"worker outputs {found} differ from the ground truth {expected}")
    assert probe.assigned_at is not None and probe.first_batch_at is not None
    assert probe.last_batch_done_at is not None
    return Run(
        fixture.events,
        done - started,
        {
            "assigned_s": probe.assigned_at - started,
            "first_batch_s": probe.first_batch_at - started,
            "from_first_batch_s": done - probe.first_batch_at,
            "process_s": probe.process_s,
            "commit_s": probe.commit_s,
            "tail_s": done - probe.last_batch_done_at,
            **meter.detail(fixture.events),
            "batches": probe.batches,
            "gc_s": probe.gc_s,
            "gc_collections": probe.gc_collections,
            "ranges": ranges,
            "bytes_written": totals["bytes_written"],
        },
    )


# --- (b') more workers, one per process --------------------------------------------------


def _worker_process(
    settings: Settings,
    keyring_file: Path,
    ready: Any,
    go: Any,
    gauges: Any,
    stop: Any,
) -> None:
    """Another worker of the same group in its own process: what a second ``sieve worker`` is.

    It builds everything and says ``ready``; it starts consuming on ``go`` and keeps
    ``gauges`` (two shared integers) at the number of partitions it holds and the records it
    has committed: reading them costs the harness nothing, unlike re-reading the markers.
    """
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(_serve_worker(settings, keyring_file, ready, go, gauges, stop))


async def _serve_worker(
    settings: Settings, keyring_file: Path, ready: Any, go: Any, gauges: Any, stop: Any
) -> None:
    metrics = WorkerMetrics()
    service = build_service(settings, Keyring.load(keyring_file), metrics)
    ready.set()
    await asyncio.to_thread(go.wait)
    await service.start()
    try:
        while not stop.is_set():
            gauges[0], gauges[1] = len(service.pipelines), metrics.raw
            await asyncio.sleep(0.02)  # gauges for the harness, not synchronisation
    finally:
        await service.stop()


async def measure_workers(
    fixture: Fixture, root: Path, roll_interval_s: float, timeout_s: float, processes: int
) -> Run:
    """``processes`` workers in one group: this process and ``processes - 1`` spawned ones.

    The first worker to join takes every partition; the others get theirs only after a
    rebalance, which the first one learns of at its next heartbeat. So this path times the
    steady state: from the moment every worker holds partitions (the generation with all of
    them; what was committed before, which the eager rebalance has just flushed, is not
    counted) until the workers' counters, which move after each marker, count every record.
    The markers are re-read at the end and must count every record once. Its session timeout
    is the shortest allowed (6 s, heartbeats every 2 s) so the steady state is most of the
    run. Informative only: the targets are about one worker.
    """
    group = f"bench-workers-{uuid.uuid4().hex[:8]}"
    settings = worker_settings(fixture, root, group, roll_interval_s).model_copy(
        update={"session_timeout_seconds": 6.0}
    )
    spawn = multiprocessing.get_context("spawn")
    ready = [spawn.Event() for _ in range(processes - 1)]
    gauges = [spawn.Array("q", 2) for _ in range(processes - 1)]  # partitions held, committed
    go, stop = spawn.Event(), spawn.Event()
    children = [
        spawn.Process(
            target=_worker_process,
            args=(settings, fixture.keyring_file, is_ready, go, child_gauges, stop),
            daemon=True,
        )
        for is_ready, child_gauges in zip(ready, gauges, strict=True)
    ]
    for child in children:
        child.start()
    metrics = WorkerMetrics()
    service = build_service(settings, fixture.keyring, metrics)

    def committed() -> int:
        if service.crashed or any(not child.is_alive() for child in children):
            raise RuntimeError("a worker died")
        return metrics.raw + sum(int(child_gauges[1]) for child_gauges in gauges)

    async def wait_for(events: list[Any], what: str) -> None:
        for event in events:
            if not await asyncio.to_thread(event.wait, timeout_s):
                raise TimeoutError(f"timed out waiting for {what}")

    try:
        await wait_for(ready, "the worker processes to get ready")
        go.set()
        await service.start()
        await _wait_until(
            lambda: bool(service.pipelines) and all(child[0] > 0 for child in gauges),
            timeout_s,
            "every worker to hold partitions",
        )
        children_cpu = [_process_cpu_s(child.pid) or 0.0 for child in children]
        with CpuMeter(fixture.broker_pid) as meter:
            started = time.perf_counter()
            before = committed()
            await _wait_until(lambda: committed() >= fixture.events, timeout_s, "the workers")
            done = time.perf_counter()
        children_cpu = [
            (_process_cpu_s(child.pid) or 0.0) - cpu
            for child, cpu in zip(children, children_cpu, strict=True)
        ]
    finally:
        stop.set()
        await service.stop()
        for child in children:
            await asyncio.to_thread(child.join, 60)
            if child.is_alive():
                child.kill()
    totals = committed_totals(settings.data_root, fixture.topic)[0]
    if totals["raw"] != fixture.events:
        raise RuntimeError(f"markers count {totals['raw']} raw records, not {fixture.events}")
    counted = fixture.events - before
    if counted < fixture.events // 4:
        raise RuntimeError(
            f"only {counted:,} records were left when every worker had partitions: use more"
            " --events for --workers"
        )
    detail = meter.detail(counted)
    detail["cpu_us_per_event"] += sum(children_cpu) / counted * 1e6
    detail["committed_before"] = float(before)
    return Run(counted, done - started, detail)


# --- (c) the naive faust agent ---------------------------------------------------------------


@dataclass
class _NaiveState:
    context: PipelineContext
    topic: str
    target: int
    cap_s: float
    pipelines: dict[int, PartitionPipeline] = field(default_factory=dict)
    count: int = 0
    first_at: float | None = None
    stopped_at: float | None = None
    error: BaseException | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def handle(self, value: bytes | None, partition: int, offset: int, timestamp_s: float) -> None:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        pipeline = self.pipelines.get(partition)
        if pipeline is None:
            pipeline = self.pipelines[partition] = PartitionPipeline(
                self.topic, partition, self.context
            )
        # The worker's own per-partition processing, on a batch of one: the same decode,
        # event key, dedup, consent, user agent, geo and split, and the same Arrow buffers.
        pipeline.process([RawRecord(offset, int(timestamp_s * 1000), value)])
        self.count += 1
        if self.count >= self.target or now - self.first_at >= self.cap_s:
            self.stopped_at = time.perf_counter()
            self.done.set()


async def measure_naive(
    fixture: Fixture, root: Path, cap_s: float, timeout_s: float, roll_interval_s: float
) -> Run:
    """A faust agent doing the work per event; Parquet written at the end, included in time."""
    import faust

    # The worker's context and writer, built the same way (the service is never started).
    template = build_service(
        worker_settings(fixture, root, "unused", roll_interval_s), fixture.keyring, WorkerMetrics()
    )
    writer: RangeWriter = template.writer
    state = _NaiveState(template.context, fixture.topic, fixture.events, cap_s)
    app = faust.App(
        f"bench-naive-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{fixture.bootstrap_servers}",
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        topic_replication_factor=1,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        datadir=str(root / "faust"),
    )
    topic = app.topic(fixture.topic, key_serializer="raw", value_serializer="raw")

    @app.agent(topic)
    async def naive(stream: Any) -> None:
        async for value in stream:
            if state.done.is_set():
                continue
            message = stream.current_event.message
            try:
                state.handle(value, message.partition, message.offset, message.timestamp)
            except Exception as error:  # surfaced by the caller, not lost in faust's logs
                state.error = error
                state.done.set()

    del naive
    await app.start()
    try:
        await asyncio.wait_for(state.done.wait(), timeout_s)
        if state.error is not None:
            raise RuntimeError("the naive agent failed") from state.error
        assert state.first_at is not None and state.stopped_at is not None
        # Write what it processed, as the worker would: one range per partition.
        write_started = time.perf_counter()
        for partition, pipeline in sorted(state.pipelines.items()):
            pending = pipeline.take_range()
            if pending is None:
                continue
            writer.commit_range(fixture.topic, partition, pending)
        write_s = time.perf_counter() - write_started
        # Closed here, not by the state folder's finalizer at exit: by then the run's
        # temporary folder is gone, and RocksDB's flush on close fails loudly.
        for pipeline in state.pipelines.values():
            pipeline.close()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.stop(), 60)
    processing_s = state.stopped_at - state.first_at
    return Run(
        state.count,
        processing_s + write_s,
        {
            "processing_s": processing_s,
            "write_s": write_s,
            "capped": float(state.count < fixture.events),
        },
    )


# --- profile ---------------------------------------------------------------------------------


def profile_table(stats: pstats.Stats, limit: int) -> list[tuple[str, float, float, int]]:
    """(function, own seconds, cumulative seconds, calls), by own time, waiting excluded."""
    rows = []
    for (filename, line, name), (_cc, calls, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = _short_path(filename)
        label = f"{where}:{line}({name})" if line else name
        rows.append((label, own, cumulative, calls))
    # Blocking (the loop's epoll, lock waits between the loop and the worker thread) is not
    # a cost: the thread profiler would otherwise book the other thread's work here.
    waiting = ("poll' of 'select.epoll", "'_thread.lock'", "threading.py:", "wait' of")
    rows = [row for row in rows if not any(w in row[0] for w in waiting)]
    rows.sort(key=lambda row: row[1], reverse=True)
    return rows[:limit]


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


async def profile_worker(
    fixture: Fixture, root: Path, roll_interval_s: float, timeout_s: float, out: Path | None
) -> tuple[Run, pstats.Stats]:
    """One more worker run under cProfile: the event-loop thread, and the pipeline and writer
    calls in the worker threads (one profiler each, merged)."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="bench-profiled"))
    main_profiler, thread_profiler = cProfile.Profile(), cProfile.Profile()
    run = await measure_worker(
        fixture, root, roll_interval_s, timeout_s, (main_profiler, thread_profiler)
    )
    stats = pstats.Stats(main_profiler, stream=io.StringIO())
    stats.add(thread_profiler)
    if out is not None:
        stats.dump_stats(str(out))
    return run, stats


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything a run printed, for ``--json-out``."""

    command: str
    machine: dict[str, Any]
    options: dict[str, Any]
    mean_value_bytes: float
    per_partition: dict[int, int]
    runs: dict[str, list[dict[str, Any]]]
    medians: dict[str, float]
    ratios: dict[str, float]
    profile_top: list[tuple[str, float, float, int]] = field(default_factory=list)
    profile_run: dict[str, Any] = field(default_factory=dict)


def median_run(runs: list[Run]) -> Run:
    """The run of median rate (the lower middle one of an even count)."""
    by_rate = sorted(runs, key=lambda run: run.rate)
    return by_rate[(len(by_rate) - 1) // 2]


def from_first_batch_rate(run: Run) -> float:
    return run.events / run.detail["from_first_batch_s"]


async def _step(console: Console, label: str, action: Awaitable[T]) -> T:
    with console.status(label):
        return await action


async def run_benchmark(
    *,
    console: Console,
    bootstrap_servers: str,
    work: Path,
    events: int,
    partitions: int,
    repeat: int,
    naive_seconds: float,
    roll_interval_s: float,
    compression: str | None,
    seed: int,
    days: float,
    gc_experiment: bool,
    profile: bool,
    profile_out: Path | None,
    broker_pid: int | None = None,
    workers: int = 1,
) -> tuple[dict[str, list[Run]], Fixture, Results]:
    suffix = uuid.uuid4().hex[:8]
    topic, dead_letter = f"bench.raw.{suffix}", f"bench.dead-letter.{suffix}"
    create_bench_topics(bootstrap_servers, topic, dead_letter, partitions)
    try:
        with console.status(f"generating {events:,} events"):
            records, truth = generate(events, seed, days)
        mean_bytes = sum(len(value) for _, value in records) / max(1, len(records))
        started = time.perf_counter()
        per_partition = await _step(
            console,
            f"filling {topic}",
            fill_topic(bootstrap_servers, topic, partitions, records, compression),
        )
        fill_s = time.perf_counter() - started
        console.print(
            f"filled {topic}: {events:,} records ({mean_bytes:.0f} B mean value) in"
            f" {fill_s:.1f} s ({events / fill_s:,.0f}/s, not measured); per partition"
            f" {per_partition}"
        )
        del records
        fixture = Fixture(
            bootstrap_servers, topic, dead_letter, partitions, events, mean_bytes,
            per_partition, truth, write_new_keyring(work / "keyring.json"), work / "keyring.json",
            work, broker_pid,
        )  # fmt: skip
        timeout_s = max(120.0, events / 1000)
        runs: dict[str, list[Run]] = {"bare": [], "worker": [], "naive": []}
        if gc_experiment:
            runs["worker_gc"] = []
        if workers > 1:
            runs["workers"] = []
        for index in range(1, repeat + 1):
            root = work / f"repeat-{index}"
            label = f"[{index}/{repeat}]"
            bare = await _step(console, f"{label} bare consume", measure_bare(fixture, timeout_s))
            runs["bare"].append(bare)
            worker = await _step(
                console,
                f"{label} Sieve worker",
                measure_worker(fixture, root / "worker", roll_interval_s, timeout_s),
            )
            runs["worker"].append(worker)
            line = (
                f"{label} bare {bare.rate:,.0f}/s · worker {worker.rate:,.0f}/s"
                f" ({from_first_batch_rate(worker):,.0f}/s from its first batch)"
            )
            if gc_experiment:
                tuned = await _step(
                    console,
                    f"{label} Sieve worker, gc experiment",
                    measure_worker(
                        fixture, root / "worker-gc", roll_interval_s, timeout_s, gc_experiment=True
                    ),
                )
                runs["worker_gc"].append(tuned)
                line += f" · worker+gc {tuned.rate:,.0f}/s"
            if workers > 1:
                several = await _step(
                    console,
                    f"{label} {workers} Sieve workers (processes)",
                    measure_workers(fixture, root / "workers", roll_interval_s, timeout_s, workers),
                )
                runs["workers"].append(several)
                line += f" · {workers} workers {several.rate:,.0f}/s"
            naive = await _step(
                console,
                f"{label} naive faust agent (cap {naive_seconds:.0f} s)",
                measure_naive(fixture, root / "naive", naive_seconds, timeout_s, roll_interval_s),
            )
            runs["naive"].append(naive)
            console.print(
                f"{line} · naive {naive.rate:,.0f}/s ({naive.events:,} events)"
                f" · load {os.getloadavg()[0]:.2f}"
            )
        medians = {name: median_run(found).rate for name, found in runs.items()}
        medians["worker_from_first_batch"] = statistics.median(
            from_first_batch_rate(run) for run in runs["worker"]
        )
        results = Results(
            command="",
            machine={},
            options={
                "events": events,
                "partitions": partitions,
                "repeat": repeat,
                "naive_seconds": naive_seconds,
                "roll_interval_s": roll_interval_s,
                "compression": compression or "none",
                "days": days,
                "seed": seed,
                "workers": workers,
            },
            mean_value_bytes=mean_bytes,
            per_partition=per_partition,
            runs={
                name: [asdict(run) | {"rate": run.rate} for run in found]
                for name, found in runs.items()
            },
            medians=medians,
            ratios={
                "worker_over_bare": medians["worker"] / medians["bare"],
                "worker_from_first_batch_over_bare": (
                    medians["worker_from_first_batch"] / medians["bare"]
                ),
                "worker_over_naive": medians["worker"] / medians["naive"],
                **(
                    {"workers_over_bare": medians["workers"] / medians["bare"]}
                    if "workers" in medians
                    else {}
                ),
            },
        )
        if profile:
            run, stats = await _step(
                console,
                "profiling one more worker run (cProfile, not part of the medians)",
                profile_worker(fixture, work / "profiled", roll_interval_s, timeout_s, profile_out),
            )
            results.profile_run = asdict(run) | {"rate": run.rate}
            results.profile_top = profile_table(stats, 15)
        return runs, fixture, results
    finally:
        with contextlib.suppress(Exception):
            delete_topics(bootstrap_servers, [topic, dead_letter])


# --- output ----------------------------------------------------------------------------------


def _verdict(value: float, target: float) -> str:
    return "[green]PASS[/green]" if value >= target else "[red]MISS[/red]"


def print_results(console: Console, runs: dict[str, list[Run]], results: Results) -> None:
    medians, ratios, options = results.medians, results.ratios, results.options
    table = Table(
        title=f"{options['events']:,} events ({results.mean_value_bytes:.0f} B),"
        f" {options['partitions']} partitions, median of {options['repeat']}"
    )
    table.add_column("path")
    table.add_column("what is timed")
    table.add_column("events/s", justify="right")
    table.add_column("each run", justify="right")
    rows = [
        ("bare", "aiokafka getmany, count only: first batch -> last record", "bare"),
        ("worker", "RawTopicService: start() -> markers count every record", "worker"),
        ("worker", "same runs: first fetched batch -> every record committed", "steady"),
        ("naive", "faust agent per event: first event -> its Parquet written", "naive"),
    ]
    if "worker_gc" in runs:
        rows.insert(3, ("worker+gc", "experiment: same, after gc.freeze()", "worker_gc"))
    if "workers" in runs:
        count = options["workers"]
        rows.insert(
            3, (f"{count} workers", f"{count} processes, one group: all assigned -> all", "workers")
        )
    for name, what, key in rows:
        if key == "steady":
            rates = [from_first_batch_rate(run) for run in runs["worker"]]
            median = medians["worker_from_first_batch"]
        else:
            rates = [run.rate for run in runs[key]]
            median = medians[key]
        table.add_row(name, what, f"{median:,.0f}", " ".join(f"{r:,.0f}" for r in rates))
    console.print(table)

    ratio_table = Table(title="ratios (targets from the issue)")
    for column in ("ratio", "value", "target", ""):
        ratio_table.add_column(column, justify="left" if column == "ratio" else "right")
    for label, key, target, unit in (
        ("worker / bare", "worker_over_bare", TARGET_OF_BARE, ""),
        ("worker from first batch / bare", "worker_from_first_batch_over_bare", TARGET_OF_BARE, ""),
        ("worker / naive", "worker_over_naive", TARGET_OVER_NAIVE, "x"),
    ):
        value = ratios[key]
        shown = f"{value:.1f}x" if unit else f"{value:.2f}"
        wanted = f">= {target:.0f}x" if unit else f">= {target:.2f}"
        ratio_table.add_row(label, shown, wanted, _verdict(value, target))
    if "workers_over_bare" in ratios:
        ratio_table.add_row(
            f"{options['workers']} workers / bare", f"{ratios['workers_over_bare']:.2f}", "", "info"
        )
    console.print(ratio_table)

    worker = median_run(runs["worker"])
    d = worker.detail
    console.print(
        f"worker, median run ({worker.seconds:.2f} s): partitions assigned and recovered at"
        f" {d['assigned_s']:.2f} s, first batch at {d['first_batch_s']:.2f} s;"
        f" {d['process_s']:.2f} s in pipeline.process ({int(d['batches'])} batches),"
        f" {d['commit_s']:.2f} s in RangeWriter.stage ({int(d['ranges'])} ranges,"
        f" {d['bytes_written'] / 1e6:.1f} MB), {d['gc_s']:.2f} s in the garbage collector"
        f" ({int(d['gc_collections'])} collections); last commit {d['tail_s']:.2f} s after the"
        " last batch was processed (first batch -> last batch processed:"
        f" {worker.events / (d['from_first_batch_s'] - d['tail_s']):,.0f} events/s)"
    )
    bare = median_run(runs["bare"])
    cpu_runs = [("bare", bare), ("worker", worker)]
    if "workers" in runs:
        cpu_runs.append((f"{options['workers']} workers", median_run(runs["workers"])))
    if "cpu_us_per_event" in d:
        console.print(
            "CPU per event, median runs (this process, all threads; the broker process): "
            + "; ".join(_cpu_words(name, run) for name, run in cpu_runs)
        )
    naive = median_run(runs["naive"])
    nd = naive.detail
    console.print(
        f"naive, median run: {'capped, ' if nd['capped'] else ''}{naive.events:,} events in"
        f" {nd['processing_s']:.1f} s + {nd['write_s']:.2f} s writing Parquet"
    )
    if results.profile_top:
        run = results.profile_run
        profile = Table(
            title=f"worker profile: one extra run under cProfile ({run['rate']:,.0f} events/s),"
            " event-loop thread + pipeline calls in threads (not the writer), waiting excluded"
        )
        for column in ("function", "own s", "cumulative s", "calls"):
            profile.add_column(column, justify="left" if column == "function" else "right")
        for label, own, cumulative, calls in results.profile_top:
            profile.add_row(label, f"{own:.2f}", f"{cumulative:.2f}", f"{calls:,}")
        console.print(profile)
    machine = results.machine
    console.print(
        f"machine: {machine['nproc']} cores, Python {machine['python']}; load average"
        f" {machine['load_before']} before, {machine['load_after']} after"
    )


def _cpu_words(label: str, run: Run) -> str:
    detail = run.detail
    own = detail["cpu_us_per_event"]
    words = f"{label} {own:.1f} us ({own * run.rate / 1e6:.2f} cores busy)"
    if "broker_cpu_us_per_event" in detail:
        words += f" + broker {detail['broker_cpu_us_per_event']:.1f} us"
    return words


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@click.command()
@click.option("--events", default=300_000, show_default=True, help="Records in the raw topic.")
@click.option("--partitions", default=3, show_default=True, help="Partitions of the raw topic.")
@click.option("--repeat", default=3, show_default=True, help="Runs of each path (median).")
@click.option(
    "--naive-seconds",
    default=60.0,
    show_default=True,
    help="Processing time cap of the naive faust agent (rate over what it processed).",
)
@click.option(
    "--roll-interval",
    default=2.0,
    show_default=True,
    help="The worker's roll interval (SIEVE_ROLL_INTERVAL_SECONDS) in seconds.",
)
@click.option(
    "--compression",
    type=click.Choice(["none", "gzip"]),
    default="none",
    show_default=True,
    help="Compression of the produced batches (the SDK uses gzip).",
)
@click.option("--seed", default=1, show_default=True, help="Traffic model seed.")
@click.option(
    "--days",
    default=1.0,
    show_default=True,
    help="Event-time span of the traffic. 1: a live stream (a range touches one or two"
    " dates); 30: a month's backfill (a range fans out over many date partitions).",
)
@click.option(
    "--bootstrap",
    help="Use this broker instead of starting one (its topics are created, then deleted).",
)
@click.option(
    "--gc-experiment",
    is_flag=True,
    help="Also run the worker after gc.freeze() (a proposed change, not what `sieve worker`"
    " does today); not used in the ratios.",
)
@click.option(
    "--profile/--no-profile",
    default=False,
    show_default=True,
    help="Profile one extra worker run with cProfile and print the top costs.",
)
@click.option(
    "--profile-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also save that profile (pstats) to this file.",
)
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every run and the medians as JSON to this file.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Also time this many workers in one group, one process each (informative: the"
    " targets are about one worker).",
)
@click.option("--verbose", is_flag=True, help="Show the clients' and faust's log warnings.")
def main(
    events: int,
    partitions: int,
    repeat: int,
    naive_seconds: float,
    roll_interval: float,
    compression: str,
    seed: int,
    days: float,
    bootstrap: str | None,
    gc_experiment: bool,
    profile: bool,
    profile_out: Path | None,
    json_out: Path | None,
    workers: int,
    verbose: bool,
) -> None:
    """Worker throughput against the bare consume rate and a naive faust agent, one run."""
    # Transient group-coordinator errors on a fresh broker are retried by the clients; a
    # real failure surfaces as an exception or a timeout here.
    logging.basicConfig(level=logging.WARNING if verbose else logging.CRITICAL)
    # A SIGTERM unwinds like Ctrl-C, so the broker we started is stopped, not orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    console = Console()
    load_before = _load()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sieve-bench-")))
        broker_pid = None
        if bootstrap is None:
            with console.status("starting a local Kafka broker"):
                broker = stack.enter_context(local_broker(work / "broker"))
            bootstrap = broker.bootstrap_servers
            broker_pid = broker.running_pid()
            console.print(f"broker: Kafka {broker.version()} at {bootstrap}, started for this run")
        runs, _fixture, results = asyncio.run(
            run_benchmark(
                console=console,
                bootstrap_servers=bootstrap,
                work=work,
                events=events,
                partitions=partitions,
                repeat=repeat,
                naive_seconds=naive_seconds,
                roll_interval_s=roll_interval,
                compression=None if compression == "none" else compression,
                seed=seed,
                days=days,
                gc_experiment=gc_experiment,
                profile=profile,
                profile_out=profile_out,
                broker_pid=broker_pid,
                workers=workers,
            )
        )
    results.command = " ".join(["python -m bench.worker_throughput", *sys.argv[1:]])
    results.machine = {
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_before": load_before,
        "load_after": _load(),
    }
    print_results(console, runs, results)
    if json_out is not None:
        json_out.write_text(json.dumps(asdict(results), indent=2) + "\n")


if __name__ == "__main__":
    main()
