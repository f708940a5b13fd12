"""Utility of the differentially private analytics: how far the published counts are from
the truth, on a month of generated traffic.

    python -m bench.dp_utility [--count 100000] [--accounts 200] [--days 30] [--repeat 3]
                               [--epsilon 1.0] [--events-per-person-day 32]

Facts come from the traffic model (``streams.generate``, seed ``--seed``) through the
worker's own pure pipeline (``PartitionPipeline.process``: decode, dedup, consent, user
agents, geo, split), with no broker. Each UTC day is then released as its first analytics
batch (``aggregations.dp.release.release_batch``, the settings' default budget: slot 0 gets
``1 - SIEVE_DP_LATE_SHARE`` of the day's epsilon), ``--repeat`` times with fresh noise.

Reported per dimension, over the (day, value) cells with at least ``--min-events`` true
events (the issue's target: a median relative error of at most 5 % at the default epsilon):

- the median relative error of the published events count; a cell that is not published
  (its noisy people count under the threshold) counts as an error of 100 %;
- the same without noise (bounding alone, exact otherwise): the bias that the bound on
  events per person-day costs; it is the baseline of this run: error / bias shows what the
  noise adds;
- how many of those cells were published.

Then the floor: if a day's *whole* budget went to one dimension's event counts (nothing else
released, every value published), the median relative error with the best bound among
8..128 events per person-day, per dimension. No release set that includes that dimension
can do better at that epsilon: it is the measured argument when the target is missed.

Also: what one person's day contributes (the quantiles that chose the default bounds), the
daily-active-people error, and the release time per day
against an exact GROUP BY of the same facts (the baseline for speed).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Final

import click
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from aggregations.dp.bounding import Bounds, bound_batch
from aggregations.dp.budget import Budget
from aggregations.dp.domains import domains
from aggregations.dp.mechanisms import opendp_library
from aggregations.dp.release import Release, release_batch
from aggregations.engine import connect
from aggregations.schemas import DIMENSIONS
from streams.generate import TrafficConfig, TrafficModel, load_user_agents
from streams.privacy.keyring import Keyring
from streams.settings import Settings
from streams.worker.pipeline import PartitionPipeline, PipelineContext, RawRecord
from streams.worker.state.folder import StateFolder

END: Final = datetime(2026, 11, 1, tzinfo=UTC)
BATCH: Final = 10_000


def generate_facts(count: int, accounts: int, days: int, seed: int) -> pa.Table:
    """The facts a worker would commit for the model's traffic (one partition, no broker)."""
    config = TrafficConfig(
        count=count,
        start=END - timedelta(days=days),
        end=END,
        user_agents=load_user_agents(),
        seed=seed,
        accounts=accounts,
    )
    # Arrival just after the month: every event inside the worker's arrival window.
    arrival_ms = int(config.end.timestamp() * 1000) + 3_600_000
    records = [
        RawRecord(offset, arrival_ms, record.value)
        for offset, record in enumerate(TrafficModel(config))
    ]
    context = PipelineContext.from_settings(
        Settings.model_construct(), Keyring.generate(), worker_version="bench", state=StateFolder()
    )
    pipeline = PartitionPipeline("bench.raw", 0, context)
    for first in range(0, len(records), BATCH):
        pipeline.process(records[first : first + BATCH])
    pending = pipeline.take_range()
    assert pending is not None
    return pending.tables["facts"]


def by_day(facts: pa.Table) -> dict[date, pa.Table]:
    days = pc.cast(facts["occurred_hour"], pa.date32())
    return {
        day: facts.filter(pc.equal(days, pa.scalar(day, pa.date32())))
        for day in sorted(set(days.to_pylist()))
    }


def contributions(facts: pa.Table) -> list[tuple[str, str]]:
    """Quantiles of what one person-day (privacy unit) contributes."""
    connection = connect()
    connection.register("facts", facts)
    unit = "coalesce(subject_key, 'account:' || account_id)"
    day = "CAST(occurred_hour AS DATE)"
    out = []
    for label, sql in (
        ("events per person-day", f"SELECT count(*) AS x FROM facts GROUP BY {day}, {unit}"),
        (
            "events per person-day (no user: the account)",
            f"SELECT count(*) AS x FROM facts WHERE subject_key IS NULL GROUP BY {day}, {unit}",
        ),
        *(
            (
                f"{d} values per person-day",
                f"SELECT count(DISTINCT {d}) AS x FROM facts GROUP BY {day}, {unit}",
            )
            for d in DIMENSIONS
        ),
        (
            "logouts per person-day",
            f"SELECT count(*) AS x FROM facts WHERE type = 'logout' GROUP BY {day}, {unit}",
        ),
        ("people per day", f"SELECT count(DISTINCT {unit}) AS x FROM facts GROUP BY {day}"),
    ):
        ((q50, q90, q99, top),) = connection.execute(
            f"SELECT quantile_disc(x, 0.5), quantile_disc(x, 0.9), quantile_disc(x, 0.99),"
            f" max(x) FROM ({sql})"
        ).fetchall()
        out.append((label, f"{q50} / {q90} / {q99} / {top}"))
    return out


def exact_cells(facts: pa.Table) -> dict[tuple[str, str], int]:
    connection = connect()
    connection.register("facts", facts)
    cells = {}
    for dimension in DIMENSIONS:
        rows = connection.execute(f"SELECT {dimension}, count(*) FROM facts GROUP BY 1").fetchall()
        cells.update({(dimension, str(value)): int(n) for value, n in rows})
    return cells


def published(release: Release) -> dict[tuple[str, str], int]:
    return {
        (c.dimension, c.value): c.events
        for c in release.cells
        if c.grain == "day" and c.cell == "value" and c.value is not None
    }


FLOOR_BOUNDS: Final = (8, 16, 32, 64, 128)


def floor_errors(
    days: dict[date, pa.Table], rho: float, min_events: int
) -> dict[str, tuple[float, int]]:
    """Per dimension: (median relative error, best bound) with the whole day's rho on that
    dimension's event counts alone (OpenDP's Gaussian, every value published)."""
    dp = opendp_library()
    dims = domains()
    space = (dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l2_distance(T=dp.i64))
    errors: dict[tuple[str, int], list[float]] = defaultdict(list)
    for day, of_day in days.items():
        truth = {cell: n for cell, n in exact_cells(of_day).items() if n >= min_events}
        for bound in FLOOR_BOUNDS:
            bounded = bound_batch(of_day, day, dims, Bounds(bound))
            noise = dp.m.make_gaussian(*space, scale=bound / math.sqrt(2 * rho))
            for dimension in DIMENSIONS:
                cells = [(v, n) for (d, v), n in truth.items() if d == dimension]
                if not cells:
                    continue
                counts = [
                    bounded.events_by_value[dimension][dims[dimension].values.index(v)]
                    for v, _ in cells
                ]
                for (_, n), noisy in zip(cells, noise(counts), strict=True):
                    errors[(dimension, bound)].append(abs(max(noisy, 0) - n) / n)
    best: dict[str, tuple[float, int]] = {}
    for (dimension, bound), values in errors.items():
        error = _median(values)
        if dimension not in best or error < best[dimension][0]:
            best[dimension] = (error, bound)
    return best


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@click.command()
@click.option("--count", default=100_000, show_default=True, help="Generated records.")
@click.option("--accounts", default=200, show_default=True)
@click.option("--days", default=30, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--repeat", default=3, show_default=True, help="Releases per day (fresh noise).")
@click.option("--epsilon", type=float, default=None, help="Default: SIEVE_DP_EPSILON.")
@click.option("--events-per-person-day", type=int, default=None, help="Default: the setting.")
@click.option("--min-events", default=1_000, show_default=True)
def main(
    count: int,
    accounts: int,
    days: int,
    seed: int,
    repeat: int,
    epsilon: float | None,
    events_per_person_day: int | None,
    min_events: int,
) -> None:
    """Median relative error of the DP analytics against the truth, per dimension."""
    console = Console()
    settings = Settings()
    budget = Budget(
        epsilon if epsilon is not None else settings.dp_epsilon,
        settings.dp_delta,
        settings.dp_late_batches,
        settings.dp_late_share,
        settings.dp_late_interval,
    )
    bounds = Bounds(events_per_person_day or settings.dp_max_events_per_person_day)
    with console.status(f"generating {count:,} records and running the pipeline"):
        started = time.perf_counter()
        facts = generate_facts(count, accounts, days, seed)
        generated = time.perf_counter() - started
    console.print(
        f"{facts.num_rows:,} facts, {accounts} accounts, {days} days ({generated:.1f} s);"
        f" epsilon {budget.epsilon:g}, delta {budget.delta:g} per person-day; slot 0 spends"
        f" {budget.share(0):.0%}; at most {bounds.events_per_unit} events per person-day"
    )
    table = Table(title="What one person-day contributes: median / 90 % / 99 % / max")
    table.add_column("quantity")
    table.add_column("quantiles", justify="right")
    for row in contributions(facts):
        table.add_row(*row)
    console.print(table)

    dims = domains()
    errors: dict[str, list[float]] = defaultdict(list)
    bias: dict[str, list[float]] = defaultdict(list)
    shown: dict[str, list[int]] = defaultdict(list)
    people_errors: list[float] = []
    release_seconds: list[float] = []
    exact_seconds: list[float] = []
    rho = budget.rho * budget.share(0)
    with console.status("releasing every day"):
        for day, of_day in by_day(facts).items():
            started = time.perf_counter()
            truth = exact_cells(of_day)
            exact_seconds.append(time.perf_counter() - started)
            bounded = bound_batch(of_day, day, dims, bounds)
            big = {cell: n for cell, n in truth.items() if n >= min_events}
            for (dimension, value), n in big.items():
                index = dims[dimension].values.index(value)
                bias[dimension].append(abs(bounded.events_by_value[dimension][index] - n) / n)
            for _ in range(repeat):
                started = time.perf_counter()
                release = release_batch(of_day, day, rho, bounds, dims)
                release_seconds.append(time.perf_counter() - started)
                out = published(release)
                for cell, n in big.items():
                    errors[cell[0]].append(abs(out.get(cell, 0) - n) / n)
                    shown[cell[0]].append(cell in out)
                total = next(
                    c for c in release.cells if c.dimension == "total" and c.grain == "day"
                )
                if total.people is not None and bounded.units:
                    people_errors.append(abs(total.people - bounded.units) / bounded.units)
    table = Table(
        title=f"Daily events per dimension value, cells with >= {min_events:,} events"
        f" (epsilon {budget.epsilon:g} per person-day)"
    )
    for column in ("dimension", "cells", "published", "median rel. error", "bias alone", "ratio"):
        table.add_column(column, justify="left" if column == "dimension" else "right")
    everything: list[float] = []
    for dimension in DIMENSIONS:
        errs, biases = errors[dimension], bias[dimension]
        everything += errs
        cells = len(biases)
        if not cells:
            table.add_row(dimension, "0", "-", "-", "-", "-")
            continue
        err, b = _median(errs), _median(biases)
        table.add_row(
            dimension,
            f"{cells}",
            f"{sum(shown[dimension]) / len(shown[dimension]):.0%}",
            f"{err:.1%}",
            f"{b:.1%}",
            f"{err / b:.1f}x" if b else "-",
        )
    cells = sum(len(v) for v in bias.values())
    table.add_row("all", f"{cells}", "", f"{_median(everything):.1%}", "", "")
    console.print(table)
    console.print(f"daily active people: median relative error {_median(people_errors):.1%}")
    with console.status("the floor: the whole budget on one dimension"):
        floor = floor_errors(by_day(facts), budget.rho, min_events)
    console.print(
        "floor (the day's whole epsilon on one dimension's events, best bound): "
        + ", ".join(
            f"{d} {floor[d][0]:.1%} (bound {floor[d][1]})" for d in DIMENSIONS if d in floor
        )
    )
    release_median, exact_median = _median(release_seconds), _median(exact_seconds)
    console.print(
        f"speed: {release_median * 1000:.0f} ms per day released vs {exact_median * 1000:.0f} ms"
        f" for the exact GROUP BY of the same facts ({release_median / exact_median:.1f}x)"
    )


if __name__ == "__main__":
    main()
