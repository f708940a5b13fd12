"""What the worker's metrics cost, against the pipeline they measure.

    python -m bench.metrics_cost [--events 200000] [--batch 10000] [--range 200000] [--repeat 3]

Generates traffic like ``bench.pipeline_stages`` and wraps each value in an aiokafka
``ConsumerRecord`` (what the service hands the pipeline and the metrics: reading their
timestamps is the per-record part of the cost). Then, best of ``--repeat``:

baseline
    ``PartitionPipeline.process`` over every record in batches of ``--batch`` (the worker's
    CPU per event without Kafka or the write: the part the metrics sit beside).
metrics
    what the worker's hot path adds: ``WorkerMetrics.batch_processed`` per batch (one
    histogram observation, the records' arrivals kept), ``range_committed`` per range of
    ``--range`` records (the counters and every record's end-to-end lag bucketed), and one
    ``render`` (a Prometheus scrape) per range.

Printed: microseconds per event of each, and the metrics as a share of the baseline. The
worker's throughput cannot drop by more than that share (the metrics run on the same loop,
between batches); the target is well under 1 %.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from datetime import timedelta

import click
from aiokafka.structs import ConsumerRecord
from rich.console import Console
from rich.table import Table

from bench.worker_throughput import PERIOD_END, generate
from schemas.commits import RangeCounts
from streams.enrich.useragent import UserAgentParser
from streams.privacy.keyring import Keyring
from streams.settings import Settings
from streams.worker.metrics import WorkerMetrics
from streams.worker.pipeline import PartitionPipeline, PipelineContext
from streams.worker.state.folder import StateFolder

NO_COUNTS = RangeCounts(raw=0, accepted=0, duplicates=0, dead_lettered={})


def pipeline_seconds(context: PipelineContext, records: list[ConsumerRecord], batch: int) -> float:
    pipeline = PartitionPipeline("raw", 0, context)
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        pipeline.process(records[start : start + batch])
    return time.perf_counter() - started


def metrics_seconds(records: list[ConsumerRecord], batch: int, range_records: int) -> float:
    metrics = WorkerMetrics()
    now = time.time()
    started = time.perf_counter()
    first = 0
    for start in range(0, len(records), batch):
        metrics.batch_processed(0, records[start : start + batch], 0.1)
        last = min(start + batch, len(records)) - 1
        if last - first + 1 >= range_records or last == len(records) - 1:
            metrics.range_committed(0, first, last, NO_COUNTS, now=now, write_seconds=1.0)
            metrics.render()
            first = last + 1
    elapsed = time.perf_counter() - started
    assert metrics.end_to_end_lag.count == len(records)  # every record observed once
    return elapsed


@click.command()
@click.option("--events", default=200_000, show_default=True, help="Raw records.")
@click.option("--batch", default=10_000, show_default=True, help="Records per batch.")
@click.option("--range", "range_records", default=200_000, show_default=True, help="Per range.")
@click.option("--repeat", default=3, show_default=True, help="Passes; the best is shown.")
@click.option("--seed", default=1, show_default=True, help="Traffic model seed.")
def main(events: int, batch: int, range_records: int, repeat: int, seed: int) -> None:
    """The worker's metrics per event, as a share of the pipeline's own cost."""
    console = Console()
    with console.status(f"generating {events:,} events"):
        pairs, _truth = generate(events, seed, days=1)
    arrival_ms = int((PERIOD_END + timedelta(hours=1)).timestamp() * 1000)
    records = [
        ConsumerRecord("raw", 0, offset, arrival_ms, 0, key, value, None, 0, len(value), [])
        for offset, (key, value) in enumerate(pairs)
    ]
    keyring = Keyring.generate()
    context = PipelineContext.from_settings(
        Settings.model_construct(), keyring, worker_version="bench", state=StateFolder()
    )
    gc.collect()
    gc.freeze()  # as the worker does at start
    baseline = measured = float("inf")
    for _ in range(repeat):
        context = dataclasses.replace(context, user_agents=UserAgentParser())
        baseline = min(baseline, pipeline_seconds(context, records, batch))
        measured = min(measured, metrics_seconds(records, batch, range_records))
    table = Table(title=f"{events:,} events, batches of {batch:,}, ranges of {range_records:,}")
    table.add_column("path")
    table.add_column("us/event", justify="right")
    table.add_column("share of baseline", justify="right")
    table.add_row("pipeline.process (baseline)", f"{baseline / events * 1e6:.3f}", "100 %")
    table.add_row(
        "metrics (batch, range, scrape)",
        f"{measured / events * 1e6:.3f}",
        f"{measured / baseline * 100:.2f} %",
    )
    console.print(table)


if __name__ == "__main__":
    main()
