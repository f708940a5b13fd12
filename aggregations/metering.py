"""Exact per-account usage per UTC hour and per UTC day (pure: Arrow in, Arrow out).

What each metric counts, from the FACTS rows of the window:

- ``requests``, ``page_views``, ``uploads``, ``downloads``: events of that type.
- ``upload_bytes``, ``download_bytes``: sum of ``bytes`` over upload / download events.
- ``sessions``: login events. A session is counted in the window it *starts* in.
- ``session_seconds``: sum of ``session_seconds`` over logout events, so session time is
  counted in the window the session *ends* in (the logout carries the duration). Summed as
  a decimal rounded to the millisecond, so the sum is exact and independent of the order
  DuckDB adds in (a float sum is not, and would publish spurious corrections).
- ``active_users``: distinct non-null ``subject_key``. The daily value is a distinct count
  over the day's facts, never a sum of hours (a person active in two hours counts once).

No noise and no suppression: an invoice must be exact. Accounts with facts in a window but
none of these events get a row of zeros.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Final

import pyarrow as pa

from aggregations.engine import connect
from aggregations.schemas import METRICS

# The metric columns of one group of facts (the bench prices straight from facts with it).
METRIC_SQL: Final = """
    count(*) FILTER (WHERE type = 'request') AS requests,
    count(*) FILTER (WHERE type = 'page_view') AS page_views,
    count(*) FILTER (WHERE type = 'login') AS sessions,
    CAST(coalesce(sum(CAST(session_seconds AS DECIMAL(18, 3))) FILTER (WHERE type = 'logout'), 0)
         AS DECIMAL(18, 3)) AS session_seconds,
    count(*) FILTER (WHERE type = 'upload') AS uploads,
    CAST(coalesce(sum(bytes) FILTER (WHERE type = 'upload'), 0) AS BIGINT) AS upload_bytes,
    count(*) FILTER (WHERE type = 'download') AS downloads,
    CAST(coalesce(sum(bytes) FILTER (WHERE type = 'download'), 0) AS BIGINT) AS download_bytes,
    count(DISTINCT subject_key) AS active_users
"""


def hourly_usage(facts: pa.Table, last_hour: datetime) -> pa.Table:
    """Usage per (hour, account_id) for every hour ``<= last_hour`` (the closed ones)."""
    connection = connect()
    connection.register("facts", facts)
    return connection.sql(
        f"""
        SELECT occurred_hour AS hour, account_id, {METRIC_SQL}
        FROM facts WHERE occurred_hour <= ?
        GROUP BY ALL ORDER BY hour, account_id
        """,  # noqa: S608 - constant SQL text, the bound is a parameter
        params=[last_hour],
    ).to_arrow_table()


def daily_usage(facts: pa.Table, last_day: date) -> pa.Table:
    """Usage per (date, account_id) for every UTC day ``<= last_day`` (the closed ones)."""
    connection = connect()
    connection.register("facts", facts)
    return connection.sql(
        f"""
        SELECT CAST(occurred_hour AS DATE) AS date, account_id, {METRIC_SQL}
        FROM facts WHERE CAST(occurred_hour AS DATE) <= ?
        GROUP BY ALL ORDER BY date, account_id
        """,  # noqa: S608 - constant SQL text, the bound is a parameter
        params=[last_day],
    ).to_arrow_table()


def changes(recomputed: pa.Table, published: pa.Table, window: str) -> tuple[pa.Table, pa.Table]:
    """What to publish so that published sums equal ``recomputed``: ``(base, corrections)``.

    ``window`` is the window column ("hour" or "date"). ``published`` holds every row
    published so far (base and corrections). A window never published gets a base row with
    its value; a published window whose sum differs gets one correction row carrying
    ``recomputed - published`` per metric. Windows whose sum already matches produce
    nothing, which makes publishing idempotent. A published window with no facts left at
    all (facts files removed by retention) is left as published: deleting old inputs must
    not rewrite what was billed.
    """
    _check_window(window)
    connection = connect()
    connection.register("recomputed", recomputed)
    connection.register("published", published)
    metric_sums = ", ".join(f"CAST(sum({m}) AS {_sql_type(m)}) AS {m}" for m in METRICS)
    deltas = ", ".join(
        f"CAST(coalesce(r.{m}, 0) - coalesce(p.{m}, 0) AS {_sql_type(m)}) AS {m}" for m in METRICS
    )
    any_delta = " OR ".join(f"coalesce(r.{m}, 0) <> coalesce(p.{m}, 0)" for m in METRICS)
    keys = f"{window}, account_id"
    connection.execute(
        f"CREATE TEMP TABLE p AS SELECT {keys}, {metric_sums} FROM published GROUP BY ALL"  # noqa: S608
    )
    base = connection.sql(
        f"""
        SELECT r.* FROM recomputed r ANTI JOIN p USING ({keys}) ORDER BY {keys}
        """  # noqa: S608 - window is one of two constants (checked)
    ).to_arrow_table()
    corrections = connection.sql(
        f"""
        SELECT {keys}, {deltas}
        FROM recomputed r JOIN p USING ({keys})
        WHERE {any_delta}
        ORDER BY {keys}
        """  # noqa: S608
    ).to_arrow_table()
    return base, corrections


def _check_window(window: str) -> None:
    if window not in ("hour", "date"):
        raise ValueError(f"window column must be 'hour' or 'date', not {window!r}")


def _sql_type(metric: str) -> str:
    return "DECIMAL(18, 3)" if metric == "session_seconds" else "BIGINT"
