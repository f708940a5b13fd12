"""Analytics cells of one day's batch of facts: fine cells from DuckDB, suppression by kanon.

A batch is the set of facts of one UTC day that a publish run adds: batch 0 is everything
committed when the day closed, batch n > 0 the late facts committed since batch n-1 (see
aggregations/publish.py). Each batch is protected on its own, so a late batch never changes
a number already published: comparing two versions of a table cannot isolate the late
events (republishing a whole day would let "new - old" reveal a handful of late people).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import pyarrow as pa

from aggregations.engine import connect
from aggregations.kanon import FineCell, ProtectedCell, protect_day
from aggregations.schemas import ANALYTICS, DIMENSIONS


@dataclass(frozen=True)
class ProtectedBatch:
    """The published cells of one batch and the median of its sessions (when publishable)."""

    cells: tuple[ProtectedCell, ...]
    median_session_seconds: float | None


def fine_cells(facts: pa.Table) -> dict[str, list[FineCell]]:
    """Per dimension: events and distinct people per (value, hour) of the given facts."""
    connection = connect()
    connection.register("facts", facts)
    # Dense integer ids make the set unions of kanon cheap; they mean nothing outside a call.
    connection.execute(
        """
        CREATE TEMP TABLE f AS
        SELECT *, CASE WHEN subject_key IS NULL THEN NULL
                       ELSE dense_rank() OVER (ORDER BY subject_key) END AS sid
        FROM facts
        """
    )
    cells: dict[str, list[FineCell]] = {}
    for dimension in DIMENSIONS:
        rows = connection.execute(
            f"""
            SELECT {dimension} AS value, occurred_hour AS hour, count(*) AS events,
                   list(DISTINCT sid) FILTER (WHERE sid IS NOT NULL) AS people
            FROM f GROUP BY ALL
            """  # noqa: S608 - dimension is one of the constant DIMENSIONS
        ).fetchall()
        cells[dimension] = [
            FineCell(value, hour, events, frozenset(people or ()))
            for value, hour, events, people in rows
        ]
    return cells


def median_session_seconds(facts: pa.Table) -> float | None:
    """Median ``session_seconds`` over the logout events (sessions ending in the batch)."""
    connection = connect()
    connection.register("facts", facts)
    row = connection.execute(
        "SELECT median(session_seconds) FROM facts WHERE type = 'logout'"
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def protect_batch(facts: pa.Table, k: int) -> ProtectedBatch:
    """The k-anonymous cells of one day's batch. The session median is published only with
    the day cell (type = logout), i.e. only when the sessions ending that day come from
    >= k distinct people."""
    cells = protect_day(fine_cells(facts), k)
    logout_published = any(
        c.grain == "day" and c.dimension == "type" and c.cell == "value" and c.value == "logout"
        for c in cells
    )
    median = median_session_seconds(facts) if logout_published else None
    return ProtectedBatch(tuple(cells), median)


def batch_table(
    batch: ProtectedBatch, day: date, number: int, run: str, published_at: datetime
) -> pa.Table:
    """The batch as rows of the ANALYTICS schema, in a deterministic order."""
    ordered = sorted(
        batch.cells,
        key=lambda c: (
            c.grain,
            c.dimension,
            c.cell,
            c.value or "",
            c.hour is None,
            c.hour or published_at,
        ),
    )
    rows = [
        {
            "grain": c.grain,
            "date": day,
            "hour": c.hour,
            "batch": number,
            "dimension": c.dimension,
            "value": c.value,
            "cell": c.cell,
            "events": c.events,
            "people": c.people,
            "median_session_seconds": (
                batch.median_session_seconds
                if c.grain == "day" and c.dimension == "type" and c.value == "logout"
                else None
            ),
            "publish_run": run,
            "published_at": published_at,
        }
        for c in ordered
    ]
    return pa.Table.from_pylist(rows, schema=ANALYTICS)
