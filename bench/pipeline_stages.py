"""Where one worker's CPU goes, stage by stage, and the stages against the code before them.

    python -m bench.pipeline_stages [--events 100000] [--batch 10000] [--repeat 3]

Generates traffic like ``bench.worker_throughput`` (one day, the model's default shares of
duplicates, late and malformed records), then feeds it to one ``PartitionPipeline`` in
batches and writes the range with the worker's ``RangeWriter`` (encrypted identifiable
files, facts, marker) into a temporary folder. Each declared stage
(``streams.worker.stages``) is timed by wrapping it where the pipeline reads the
declaration; the median of ``--repeat`` passes is printed in microseconds of CPU (process
time, not wall time: the machine may be shared) per raw event.

Two baselines measured in the same run, passes interleaved:

* the typed decode alone (``msgspec`` with the contract's checks, one call per value): the
  cheapest any worker doing this contract's validation can be per event;
* the pipeline as it was before the stages (``bench.legacy_pipeline``) on the same
  records: the last lines print both ``process`` costs and how much less the stages take.

The worker calls ``gc.freeze()`` at start; so does this benchmark, after building everything.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import click
import msgspec
from rich.console import Console
from rich.table import Table

import streams.worker.pipeline as pipeline_module
from bench.legacy_pipeline import LegacyPartitionPipeline
from bench.worker_throughput import PERIOD_END, generate
from schemas.events import Event
from streams.encryption import ParquetEncryption
from streams.enrich.geo import make_geolocator
from streams.enrich.referrer import ReferrerClassifier
from streams.enrich.useragent import UserAgentParser
from streams.privacy.keyring import Keyring
from streams.settings import Settings
from streams.storage import open_data_root
from streams.worker.dedup import Deduplicator
from streams.worker.pipeline import PartitionPipeline, PipelineContext, RawRecord
from streams.worker.sink import RangeWriter
from streams.worker.stages import DECODE
from streams.worker.state.consent import ConsentTracker
from streams.worker.state.folder import StateFolder

F = TypeVar("F", bound=Callable[..., Any])

# The state methods the stages call: (class, method, row name).
STATE_STAGES = (
    (Deduplicator, "check", "  dedup check (filters, exact lookups)"),
    (Deduplicator, "record", "dedup record (filters, overlay)"),
    (ConsentTracker, "state_for", "  consent state for the batch"),
)
PROCESS = "process (all of it)"
LEGACY_PROCESS = "process before the stages (baseline)"


def _timed(seconds: defaultdict[str, float], name: str, function: F) -> F:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] += time.process_time() - started

    return timed  # type: ignore[return-value]


@contextmanager
def timed_stages(seconds: defaultdict[str, float]) -> Iterator[None]:
    """Wrap each declared stage where the pipeline module reads it; restore on exit."""
    declared, decode = pipeline_module.STAGES, pipeline_module.decode
    methods = [(owner, name, label, getattr(owner, name)) for owner, name, label in STATE_STAGES]
    pipeline_module.decode = _timed(seconds, f"stage {DECODE}", decode)
    pipeline_module.STAGES = tuple(  # type: ignore[misc]
        (name, _timed(seconds, f"stage {name}", run)) for name, run in declared
    )
    for owner, name, label, function in methods:
        setattr(owner, name, _timed(seconds, label, function))
    try:
        yield
    finally:
        pipeline_module.decode = decode
        pipeline_module.STAGES = declared  # type: ignore[misc]
        for owner, name, _, function in methods:
            setattr(owner, name, function)


def one_pass(
    context: PipelineContext,
    keyring: Keyring,
    records: list[RawRecord],
    batch: int,
    pipeline_class: type[PartitionPipeline] = PartitionPipeline,
) -> dict[str, float]:
    """CPU seconds per stage for one pipeline over every record, plus the range's write and
    the state store's write of its keys (both on the worker's writer thread)."""
    seconds: defaultdict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory(prefix="sieve-stages-") as folder:
        opened = open_data_root(folder, create=True)
        filesystem, root = opened.fs, opened.path
        # A fresh state store each pass, as a worker's first start has.
        context = dataclasses.replace(context, state=StateFolder())
        pipeline = pipeline_class("raw", 0, context)
        pipeline.restore(filesystem, root, [])
        with timed_stages(seconds):
            started = time.process_time()
            for start in range(0, len(records), batch):
                pipeline.process(records[start : start + batch])
            seconds[PROCESS] = time.process_time() - started
        pending = pipeline.take_range()
        assert pending is not None
        writer = RangeWriter(filesystem, root, ParquetEncryption(*keyring.encryption_keys()), "b")
        started = time.process_time()
        marker = writer.commit_range("raw", 0, pending)
        seconds["RangeWriter.commit"] = time.process_time() - started
        started = time.process_time()
        pipeline.range_committed(pending, marker)
        seconds["state store write (writer thread)"] = time.process_time() - started
        context.state.close()
    return seconds


def typed_decode_seconds(values: list[bytes]) -> float:
    decode = msgspec.json.Decoder(Event).decode
    started = time.process_time()
    for value in values:
        try:  # noqa: SIM105 - contextlib.suppress per value would cost more than the decode
            decode(value)
        except msgspec.DecodeError:
            pass
    return time.process_time() - started


@click.command()
@click.option("--events", default=100_000, show_default=True, help="Raw records to process.")
@click.option("--batch", default=10_000, show_default=True, help="Records per process() call.")
@click.option("--repeat", default=3, show_default=True, help="Passes; the median is shown.")
@click.option("--seed", default=1, show_default=True, help="Traffic model seed.")
def main(events: int, batch: int, repeat: int, seed: int) -> None:
    """CPU per event of each worker stage, against the bare typed decode."""
    console = Console()
    with console.status(f"generating {events:,} events"):
        pairs, _truth = generate(events, seed, days=1)
    values = [value for _key, value in pairs]
    # Arrival an hour after the traffic's period: every event inside the arrival window.
    arrival_ms = int((PERIOD_END + timedelta(hours=1)).timestamp() * 1000)
    records = [RawRecord(offset, arrival_ms, v) for offset, v in enumerate(values)]
    keyring = Keyring.generate()
    context = PipelineContext.from_settings(
        Settings.model_construct(), keyring, worker_version="bench", state=StateFolder()
    )
    gc.collect()
    gc.freeze()
    passes: defaultdict[str, list[float]] = defaultdict(list)
    for _ in range(repeat):
        passes["typed decode alone (baseline)"].append(typed_decode_seconds(values))
        # Fresh parsers and caches each pass, as a restarted worker has; the two pipelines
        # alternate, so a noisy neighbour weighs on both alike.
        for pipeline_class in (LegacyPartitionPipeline, PartitionPipeline):
            fresh = dataclasses.replace(
                context,
                user_agents=UserAgentParser(),
                geolocator=make_geolocator(None),
                referrers=ReferrerClassifier(),
            )
            seconds = one_pass(fresh, keyring, records, batch, pipeline_class)
            if pipeline_class is LegacyPartitionPipeline:
                passes[LEGACY_PROCESS].append(seconds[PROCESS])
                continue
            for name, value in seconds.items():
                passes[name].append(value)
    median = {name: statistics.median(values) for name, values in passes.items()}
    baseline = median["typed decode alone (baseline)"]
    table = Table(title=f"{events:,} events in batches of {batch:,}, CPU, median of {repeat}")
    table.add_column("stage")
    table.add_column("us/event", justify="right")
    table.add_column("x typed decode", justify="right")
    for name, value in sorted(median.items(), key=_order):
        table.add_row(name, f"{value / events * 1e6:.2f}", f"{value / baseline:.2f}")
    console.print(table)
    old, new = median[LEGACY_PROCESS], median[PROCESS]
    console.print(
        f"process: {new / events * 1e6:.2f} us/event with the stages, "
        f"{old / events * 1e6:.2f} before them: {100 * (1 - new / old):.1f} % less CPU "
        f"(passes: before {_micros(passes[LEGACY_PROCESS], events)}, "
        f"stages {_micros(passes[PROCESS], events)})"
    )


def _micros(values: list[float], events: int) -> str:
    return " ".join(f"{value / events * 1e6:.2f}" for value in values)


def _order(item: tuple[str, float]) -> tuple[int, str]:
    name, _ = item
    last = (
        "typed decode alone (baseline)",
        LEGACY_PROCESS,
        PROCESS,
        "RangeWriter.commit",
        "state store write (writer thread)",
        "dedup record (filters, overlay)",
    )
    return (last.index(name) if name in last else -1, "" if name in last else name)


if __name__ == "__main__":
    main()
