"""Where one worker's CPU goes, stage by stage, without Kafka.

    python -m bench.pipeline_stages [--events 100000] [--batch 10000] [--repeat 3]

Generates traffic like ``bench.worker_throughput`` (one day, the model's default shares of
duplicates, late and malformed records), then feeds it to one ``PartitionPipeline`` in
batches and writes the range with the worker's ``RangeWriter`` (encrypted identifiable
files, facts, marker) into a temporary folder. Each stage of ``pipeline.process`` is timed
by wrapping the function the pipeline calls; the best of ``--repeat`` passes is printed in
microseconds per raw event.

The baseline measured in the same run is the typed decode alone (``msgspec`` with the
contract's checks, one call per value): the cheapest any worker doing this contract's
validation can be per event. Each stage is printed as a multiple of it. The worker calls
``gc.freeze()`` at start; so does this benchmark, after building everything.
"""

from __future__ import annotations

import dataclasses
import gc
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

import streams.worker.pipeline as pipeline_module
from bench.worker_throughput import PERIOD_END, generate
from schemas.events import Event
from streams.encryption import ParquetEncryption
from streams.enrich.geo import make_geolocator
from streams.enrich.useragent import UserAgentParser
from streams.privacy.keyring import Keyring
from streams.privacy.retention import load_policy
from streams.worker.dedup import Deduplicator
from streams.worker.pipeline import PartitionPipeline, PipelineContext, RawRecord
from streams.worker.sink import RangeWriter, open_data_root
from streams.worker.state.consent import ConsentTracker
from streams.worker.state.folder import StateFolder

# The functions pipeline.process calls, by the name it imports them under.
STAGES = (
    "decode_batch",
    "event_keys",
    "batch_consent_keys",
    "decide",
    "resolve_countries",
    "split",
)
# The state methods it calls: (class, method, stage name).
STATE_STAGES = (
    (Deduplicator, "check", "dedup check (filters, exact lookups)"),
    (Deduplicator, "record", "dedup record (filters, overlay)"),
    (ConsentTracker, "state_for", "consent state for the batch"),
)


@contextmanager
def timed_stages(seconds: defaultdict[str, float]) -> Iterator[None]:
    """Wrap each stage function as the pipeline module sees it; restore on exit."""
    originals = {name: getattr(pipeline_module, name) for name in STAGES}
    methods = [(owner, name, label, getattr(owner, name)) for owner, name, label in STATE_STAGES]

    def wrapper(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - started

        return timed

    for name, function in originals.items():
        setattr(pipeline_module, name, wrapper(name, function))
    for owner, name, label, function in methods:
        setattr(owner, name, wrapper(label, function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(pipeline_module, name, function)
        for owner, name, _, function in methods:
            setattr(owner, name, function)


def one_pass(
    context: PipelineContext, keyring: Keyring, records: list[RawRecord], batch: int
) -> dict[str, float]:
    """Seconds per stage for one pipeline over every record, plus the range's write and the
    state store's write of its keys (both on the worker's writer thread)."""
    seconds: defaultdict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory(prefix="sieve-stages-") as folder:
        filesystem, root = open_data_root(folder)
        # A fresh state store each pass, as a worker's first start has.
        context = dataclasses.replace(context, state=StateFolder())
        pipeline = PartitionPipeline("raw", 0, context)
        pipeline.restore(filesystem, root, [])
        with timed_stages(seconds):
            started = time.perf_counter()
            for start in range(0, len(records), batch):
                pipeline.process(records[start : start + batch])
            seconds["process (all of it)"] = time.perf_counter() - started
        pending = pipeline.take_range()
        assert pending is not None
        writer = RangeWriter(filesystem, root, ParquetEncryption(*keyring.encryption_keys()), "b")
        started = time.perf_counter()
        marker = writer.commit_range("raw", 0, pending)
        seconds["RangeWriter.commit"] = time.perf_counter() - started
        started = time.perf_counter()
        pipeline.range_committed(pending, marker)
        seconds["state store write (writer thread)"] = time.perf_counter() - started
        context.state.close()
    return seconds


def typed_decode_seconds(values: list[bytes]) -> float:
    decode = msgspec.json.Decoder(Event).decode
    started = time.perf_counter()
    for value in values:
        try:  # noqa: SIM105 - contextlib.suppress per value would cost more than the decode
            decode(value)
        except msgspec.DecodeError:
            pass
    return time.perf_counter() - started


@click.command()
@click.option("--events", default=100_000, show_default=True, help="Raw records to process.")
@click.option("--batch", default=10_000, show_default=True, help="Records per process() call.")
@click.option("--repeat", default=3, show_default=True, help="Passes; the best is shown.")
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
    context = PipelineContext(
        keyring=keyring,
        policy=load_policy(None),
        user_agents=UserAgentParser(),
        geolocator=make_geolocator(None),
        honour_dnt=True,
        honour_gpc=True,
        dedup_horizon_seconds=24 * 3600,
        worker_version="bench",
    )
    gc.collect()
    gc.freeze()
    best: dict[str, float] = {}
    baseline = min(typed_decode_seconds(values) for _ in range(repeat))
    for _ in range(repeat):
        # A fresh parser cache each pass, as a restarted worker has.
        context = dataclasses.replace(context, user_agents=UserAgentParser())
        for name, value in one_pass(context, keyring, records, batch).items():
            best[name] = min(best.get(name, value), value)
    table = Table(title=f"{events:,} events in batches of {batch:,}, best of {repeat}")
    table.add_column("stage")
    table.add_column("us/event", justify="right")
    table.add_column("x typed decode", justify="right")
    rows = [("typed decode alone (baseline)", baseline), *sorted(best.items(), key=_order)]
    for name, value in rows:
        table.add_row(name, f"{value / events * 1e6:.2f}", f"{value / baseline:.2f}")
    console.print(table)


def _order(item: tuple[str, float]) -> tuple[int, float]:
    name, value = item
    last = name in (
        "process (all of it)",
        "RangeWriter.commit",
        "state store write (writer thread)",
    )
    return (1 if last else 0, -value)


if __name__ == "__main__":
    main()
