"""Soak: does one worker's memory stay flat while dedup holds a horizon of keys? (issue 9)

    python -m bench.dedup_soak --events 10000000 --horizon 20 --horizons 4   # full size
    python -m bench.dedup_soak --events 300000 --pool 25000 --horizon 5      # a quick look

Not a test: a measurement, printed with its verdict, for a quiet machine.

1. A broker of its own (or ``--bootstrap``), a raw topic as Sieve creates it (broker
   timestamps, LogAppendTime) and a dead-letter topic.
2. The raw topic is filled with ``--events`` records spread over ``--horizons`` horizons of
   arrival time: chunks of a generated pool (the traffic model's 1 % duplicates, 0.5 %
   malformed), each chunk with fresh event ids, produced on a schedule so the broker's
   timestamps span at least that many horizons. The horizon is shrunk for the run
   (``SIEVE_DEDUP_HORIZON``) so the span is minutes, not days.
3. One ``sieve worker`` process drains it. Its RSS is read from /proc every second with its
   committed count (``/metrics``). Verdict: the peak RSS in the last third of the run must
   stay within 10 % of the peak RSS while it processed the first horizon of arrival.
4. The same topic is consumed bare (aiokafka ``getmany``, the worker's fetch sizes): the
   worker's rate is printed as a ratio to that, measured in the same run.
5. After the worker stopped, its state stores are opened and their keys counted: the RSS
   the worker grew by, per million keys held. The RSS curve is written as a PNG.

Counts are checked against the pool's ground truth times the chunks (a wrong count fails
the run, whatever the memory does).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.worker_throughput import (
    BATCH_RECORDS,
    FETCH_SIZES,
    create_bench_topics,
    fill_topic,
    generate,
    local_broker,
)
from streams.broker.control import free_ports
from streams.privacy.keyring import write_new_keyring
from streams.storage import open_data_root
from streams.worker.commands import committed_totals
from streams.worker.state.folder import StateFolder

REPO = Path(__file__).resolve().parent.parent
RSS_TOLERANCE = 0.10
_EVENT_ID = re.compile(rb'"event_id":"([^"]{12,})"')
# prometheus_client writes counters as floats ("1e+07" once they reach ten million).
_RAW_TOTAL = re.compile(r"^sieve_raw_records_total ([0-9.e+]+)$", re.MULTILINE)


@dataclass
class Sample:
    seconds: float  # since the worker started
    rss_bytes: int
    committed: int  # raw records committed (the worker's counter)


@dataclass
class Fill:
    """What was produced: records, and the arrival position of each chunk."""

    records: int = 0
    started: float = 0.0
    chunk_ends: list[tuple[float, int]] = field(default_factory=list)  # (wall time, records)

    def records_before(self, moment: float) -> int:
        """Records whose chunk finished before ``moment`` (arrival order = offset order)."""
        done = [count for end, count in self.chunk_ends if end <= moment]
        return done[-1] if done else 0


def with_fresh_ids(records: list[tuple[bytes, bytes]], chunk: int) -> list[tuple[bytes, bytes]]:
    """The pool with every event id's last 12 characters replaced by the chunk number: new
    events for dedup, the pool's own duplicates still duplicates of each other."""
    tail = b"%012x" % chunk
    out = []
    for key, value in records:
        match = _EVENT_ID.search(value)
        if match is not None:
            end = match.end(1)
            value = value[: end - 12] + tail + value[end:]
        out.append((key, value))
    return out


def fill(
    bootstrap: str,
    topic: str,
    partitions: int,
    pool: list[tuple[bytes, bytes]],
    chunks: int,
    span_s: float,
) -> Fill:
    """Produce ``chunks`` chunks of the pool, chunk i starting no earlier than i/chunks of the
    way through ``span_s``: the broker's timestamps then cover the span."""
    done = Fill(started=time.time())
    for chunk in range(chunks):
        slot = done.started + span_s * chunk / chunks
        time.sleep(max(0.0, slot - time.time()))  # pacing the arrival clock, on purpose
        records = with_fresh_ids(pool, chunk)
        asyncio.run(fill_topic(bootstrap, topic, partitions, records, None))
        done.records += len(records)
        done.chunk_ends.append((time.time(), done.records))
    time.sleep(max(0.0, done.started + span_s - time.time()))
    return done


class RssSampler:
    """Every second: the worker's RSS (/proc) and its committed count (/metrics)."""

    def __init__(self, pid: int, metrics_port: int) -> None:
        self.pid = pid
        self.port = metrics_port
        self.samples: list[Sample] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            rss = _rss_bytes(self.pid)
            if rss is None:
                return
            self.samples.append(Sample(time.monotonic() - self._started, rss, self._committed()))

    def _committed(self) -> int:
        last = self.samples[-1].committed if self.samples else 0
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1) as r:
                found = _RAW_TOTAL.search(r.read().decode())
        except OSError:
            return last
        return int(float(found.group(1))) if found else last


def _rss_bytes(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


@contextlib.contextmanager
def worker_process(
    env: dict[str, str], log: Path, probe: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    # The probe runs the same command in its own process, sampling what memory is made of.
    module = ["streams.cli"] if probe is None else ["bench.memory_probe", str(probe)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *module, "worker", "--loglevel", "warning"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


async def bare_rate(bootstrap: str, topic: str, events: int) -> float:
    """Events per second of a bare ``getmany`` consumer, first batch to last record."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"soak-bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **FETCH_SIZES,
    )
    await consumer.start()
    try:
        seen = first_batch = 0
        first = None
        while seen < events:
            batches = await consumer.getmany(timeout_ms=500, max_records=BATCH_RECORDS)
            got = sum(len(messages) for messages in batches.values())
            if got and first is None:
                first, first_batch = time.perf_counter(), got
            seen += got
        return (seen - first_batch) / (time.perf_counter() - (first or 0.0))
    finally:
        await consumer.stop()


async def records_in_first_horizon(
    bootstrap: str, topic: str, partitions: int, horizon_s: int
) -> int:
    """Records the broker stamped within ``horizon_s`` of the topic's first record.

    From the log's own timestamps (LogAppendTime), not from when the producer finished its
    chunks: on a busy machine a chunk can take longer than a horizon to produce, and a
    count from chunk ends then leaves the first horizon empty (its window one sample).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        firsts = []
        for tp in tps:
            batch = await consumer.getmany(tp, timeout_ms=10_000, max_records=1)
            firsts += [record.timestamp for record in batch.get(tp, [])]
        cut = min(firsts) + horizon_s * 1000
        found = await consumer.offsets_for_times(dict.fromkeys(tps, cut))
        ends = await consumer.end_offsets(tps)
        return sum(ends[tp] if found[tp] is None else found[tp].offset for tp in tps)
    finally:
        await consumer.stop()


def keys_held(state_dir: Path, data_root: Path, topic: str, partitions: int, horizon: int) -> int:
    """Event keys in the worker's stores after it stopped (its dedup state, counted)."""
    folder = StateFolder(state_dir)
    opened = open_data_root(str(data_root), create=True)
    filesystem, root = opened.fs, opened.path
    # The identity the worker opened them with (PartitionPipeline.restore): anything else
    # would make the store reset itself.
    identity = f"{type(filesystem).__name__}:{root}"
    total = 0
    try:
        for partition in range(partitions):
            if (state_dir / topic / str(partition)).exists():
                store = folder.open(topic, partition, identity, horizon * 1000)
                total += sum(
                    len(chunk) // 16 for g in store.generations for chunk in store.event_keys(g)
                )
    finally:
        folder.close()
    return total


def chart(samples: list[Sample], first_horizon_end: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    seconds = [s.seconds for s in samples]
    axis.plot(seconds, [s.rss_bytes / 2**20 for s in samples], color="tab:blue", label="RSS")
    axis.set_xlabel("seconds since the worker started")
    axis.set_ylabel("RSS (MiB)")
    axis.axvspan(0, first_horizon_end, color="tab:green", alpha=0.12, label="first horizon")
    third = seconds[-1] - (seconds[-1] - seconds[0]) / 3
    axis.axvspan(third, seconds[-1], color="tab:orange", alpha=0.12, label="last third")
    committed = axis.twinx()
    committed.plot(seconds, [s.committed / 1e6 for s in samples], color="tab:gray", ls="--")
    committed.set_ylabel("records committed (millions)")
    axis.legend(loc="lower right")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


@click.command()
@click.option("--events", default=10_000_000, show_default=True, help="Records to produce.")
@click.option("--pool", default=500_000, show_default=True, help="Generated records per chunk.")
@click.option("--horizon", default=20, show_default=True, help="Dedup horizon (seconds).")
@click.option("--horizons", default=4, show_default=True, help="Arrival span, in horizons.")
@click.option("--partitions", default=3, show_default=True, help="Partitions of the raw topic.")
@click.option("--seed", default=1, show_default=True, help="Traffic model seed.")
@click.option("--bootstrap", default=None, help="An existing broker (default: start one).")
@click.option(
    "--png",
    type=click.Path(path_type=Path),
    default=REPO / "bench" / "dedup_soak_rss.png",
    show_default=True,
    help="Where the RSS chart goes.",
)
@click.option(
    "--probe",
    type=click.Path(path_type=Path),
    default=None,
    help="Sample what the worker's memory is made of into this file (bench.memory_probe).",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="A SIEVE_* setting for the worker (repeatable), e.g. SIEVE_ROLL_MAX_BYTES=33554432.",
)
def main(
    events: int,
    pool: int,
    horizon: int,
    horizons: int,
    partitions: int,
    seed: int,
    bootstrap: str | None,
    png: Path,
    probe: Path | None,
    settings: tuple[str, ...],
) -> None:
    """Worker RSS over several dedup horizons, and throughput against bare consumption."""
    if horizons < 3:
        raise click.UsageError("--horizons must be at least 3 (the issue asks for 3)")
    with tempfile.TemporaryDirectory(prefix="sieve-soak-") as folder:
        work = Path(folder)
        with contextlib.ExitStack() as stack:
            if bootstrap is None:
                bootstrap = stack.enter_context(local_broker(work / "broker")).bootstrap_servers
            extra = dict(setting.split("=", 1) for setting in settings)
            run(
                work,
                bootstrap,
                events,
                pool,
                horizon,
                horizons,
                partitions,
                seed,
                png,
                probe,
                extra,
            )


def run(
    work: Path,
    bootstrap: str,
    events: int,
    pool_size: int,
    horizon: int,
    horizons: int,
    partitions: int,
    seed: int,
    png: Path,
    probe: Path | None = None,
    extra: dict[str, str] | None = None,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    raw, dead = f"soak.raw.{suffix}", f"soak.dead.{suffix}"
    create_bench_topics(bootstrap, raw, dead, partitions)
    chunks = max(horizons, math.ceil(events / pool_size))
    pool_size = math.ceil(events / chunks)
    click.echo(f"generating a pool of {pool_size:,} records (seed {seed})")
    pool, truth = generate(pool_size, seed, days=1)
    span = horizon * horizons
    click.echo(f"producing {chunks} chunks over {span} s of arrival ({horizons} horizons)")
    filled = fill(bootstrap, raw, partitions, pool, chunks, span)
    total = filled.records
    first_horizon_records = asyncio.run(
        records_in_first_horizon(bootstrap, raw, partitions, horizon)
    )
    click.echo(
        f"first horizon of arrival: {first_horizon_records:,} records (broker timestamps;"
        f" {filled.records_before(filled.started + horizon):,} in the chunks produced by then)"
    )

    keyring = work / "keyring.json"
    write_new_keyring(keyring)
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIEVE_")}
    env.update(
        SIEVE_BOOTSTRAP_SERVERS=bootstrap,
        SIEVE_RAW_TOPIC=raw,
        SIEVE_DEAD_LETTER_TOPIC=dead,
        SIEVE_CONSUMER_GROUP=f"soak-{suffix}",
        SIEVE_DATA_ROOT=str(work / "data"),
        SIEVE_WORK_DIR=str(work / "worker"),
        SIEVE_KEYRING_FILE=str(keyring),
        SIEVE_METRICS_PORT=str(port),
        SIEVE_DEDUP_HORIZON=f"PT{horizon}S",
        SIEVE_SESSION_TIMEOUT_SECONDS="10",
    )
    env.update(extra or {})
    if extra:
        click.echo(f"worker settings: {extra}")
    click.echo(f"draining {total:,} records with one worker")
    started = time.monotonic()
    with (
        worker_process(env, work / "worker.log", probe) as process,
        RssSampler(process.pid, port) as sampler,
    ):
        while True:
            if process.poll() is not None:
                raise click.ClickException(f"the worker exited; see {work / 'worker.log'}")
            if sampler.samples and sampler.samples[-1].committed >= total:
                break
            time.sleep(0.5)
        worker_seconds = time.monotonic() - started
    samples = sampler.samples
    if probe is not None:
        rows = [f"{s.seconds:.1f},{s.rss_bytes},{s.committed}" for s in samples]
        probe.with_suffix(".soak.csv").write_text("\n".join(["seconds,rss,committed", *rows]))

    counts, dead_letters, _, _ = committed_totals(str(work / "data"), raw)
    expected = (truth.by_kind["event"], truth.by_kind["duplicate"], truth.by_kind["malformed"])
    got = (counts["accepted"], counts["duplicates"], sum(dead_letters.values()))
    if counts["raw"] != total or got != tuple(chunks * n for n in expected):
        raise click.ClickException(f"counts {got} (raw {counts['raw']}) != truth x {chunks}")

    bare = asyncio.run(bare_rate(bootstrap, raw, total))
    held = keys_held(work / "worker" / "state", work / "data", raw, partitions, horizon)
    report(samples, first_horizon_records, total, worker_seconds, bare, held, png, horizon)


def report(
    samples: list[Sample],
    first_horizon_records: int,
    total: int,
    worker_seconds: float,
    bare: float,
    held: int,
    png: Path,
    horizon: int,
) -> None:
    working = [s for s in samples if s.committed > 0]
    first = [s for s in working if s.committed <= first_horizon_records] or working[:1]
    end = samples[-1].seconds
    last_third = [s for s in samples if s.seconds >= end - (end - working[0].seconds) / 3]
    first_peak = max(s.rss_bytes for s in first)
    last_peak = max(s.rss_bytes for s in last_third)
    verdict = "PASS" if last_peak <= first_peak * (1 + RSS_TOLERANCE) else "FAIL"
    grown = samples[-1].rss_bytes - working[0].rss_bytes
    rate = total / worker_seconds
    # From the first sample with a commit: the process start and group join left out.
    steady = (total - working[0].committed) / max(samples[-1].seconds - working[0].seconds, 1e-9)
    mib = 2**20
    click.echo(f"worker: {total:,} records in {worker_seconds:.1f} s = {rate:,.0f}/s")
    click.echo(f"bare getmany: {bare:,.0f}/s; worker / bare = {rate / bare:.3f}")
    click.echo(f"worker from its first commit: {steady:,.0f}/s; / bare = {steady / bare:.3f}")
    click.echo(
        f"RSS peak while the first horizon was processed: {first_peak / mib:,.0f} MiB;"
        f" in the last third: {last_peak / mib:,.0f} MiB"
        f" ({last_peak / first_peak - 1:+.1%}, tolerance +{RSS_TOLERANCE:.0%}): {verdict}"
    )
    millions = max(held / 1e6, 1e-9)
    final = samples[-1].rss_bytes
    click.echo(
        f"keys held at the end: {held:,}; RSS {final / mib:,.0f} MiB ="
        f" {final / mib / millions:,.1f} MiB per million keys held; grown since the first"
        f" commit: {grown / mib:+,.0f} MiB = {grown / mib / millions:+,.1f} MiB per million"
    )
    first_end = first[-1].seconds
    title = f"{total:,} records, horizon {horizon} s: {verdict}"
    chart(samples, first_end, png, title)
    click.echo(f"RSS chart: {png}")


if __name__ == "__main__":
    main()
