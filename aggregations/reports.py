"""Ready-made analytics reports: constant SQL over the analyst role's views, with parameters.

Every report reads only the differentially private analytics (never metering), and every
count comes with its 95 % interval (``*_low`` .. ``*_high``: the count +- 1.96 noise sd,
the low end clipped at 0). A value absent on a day had a noisy people count under the
threshold that day; its events are in that dimension's "(other)". Summing ``people`` over
days counts person-days (subject keys change every day, so nobody can be followed across
days, and distinct people over a range are unknowable); the noise variances of a sum add.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Final

import duckdb
import pyarrow as pa

from aggregations.catalog import Z95


@dataclass(frozen=True)
class Report:
    name: str
    description: str
    sql: str  # parameters: since, until (inclusive dates), limit


_RANGE = "date BETWEEN ? AND ?"
_OTHER = "coalesce(value, '(other)')"


def _summed(count: str, alias: str) -> str:
    """A count summed over rows with its 95 % interval (noise variances add)."""
    sd = f"sqrt(sum({count}_sd * {count}_sd))"
    return (
        f"CAST(sum({count}) AS BIGINT) AS {alias}, "
        f"CAST(greatest(0, round(sum({count}) - {Z95} * {sd})) AS BIGINT) AS {alias}_low, "
        f"CAST(round(sum({count}) + {Z95} * {sd}) AS BIGINT) AS {alias}_high"
    )


def _types_per_day(types: tuple[str, ...]) -> str:
    columns = ", ".join(f"{_summed_filtered('events', t)}" for t in types)
    return f"""
    SELECT date, {columns}
    FROM analytics_daily WHERE dimension = 'type' AND cell = 'value' AND {_RANGE}
    GROUP BY date ORDER BY date LIMIT ?
    """  # noqa: S608 - constant fragments only


def _summed_filtered(count: str, value: str) -> str:
    where = f"FILTER (WHERE value = '{value}')"
    sd = f"sqrt(sum({count}_sd * {count}_sd) {where})"
    total = f"sum({count}) {where}"
    return (
        f"CAST({total} AS BIGINT) AS {value}s, "
        f"CAST(greatest(0, round({total} - {Z95} * {sd})) AS BIGINT) AS {value}s_low, "
        f"CAST(round({total} + {Z95} * {sd}) AS BIGINT) AS {value}s_high"
    )


REPORTS: Final = {
    report.name: report
    for report in (
        Report(
            "daily-active-people",
            "Distinct people and events per day, with 95 % intervals.",
            f"""
            SELECT date, people AS active_people, people_low AS active_people_low,
                   people_high AS active_people_high, events, events_low, events_high
            FROM analytics_daily WHERE dimension = 'total' AND {_RANGE} ORDER BY date LIMIT ?
            """,  # noqa: S608 - constant fragments only
        ),
        Report(
            "sessions",
            "Logins and logouts per day (events of those types), with 95 % intervals.",
            _types_per_day(("login", "logout")),
        ),
        Report(
            "top-countries",
            "Countries by events over the range; person-days summed over days.",
            f"""
            SELECT {_OTHER} AS country, {_summed("events", "events")},
                   {_summed("people", "person_days")}
            FROM analytics_daily WHERE dimension = 'country' AND {_RANGE}
            GROUP BY ALL ORDER BY events DESC, country LIMIT ?
            """,  # noqa: S608 - constant fragments only
        ),
        Report(
            "devices",
            "Device class and browser family mix: events and share of events over the range.",
            f"""
            SELECT dimension, {_OTHER} AS value, {_summed("events", "events")},
                   round(100.0 * sum(events) / sum(sum(events)) OVER (PARTITION BY dimension),
                         1) AS percent
            FROM analytics_daily
            WHERE dimension IN ('device_class', 'browser_family') AND {_RANGE}
            GROUP BY 1, 2 ORDER BY dimension, events DESC, value LIMIT ?
            """,  # noqa: S608 - constant fragments only
        ),
        Report(
            "volume",
            "Uploads and downloads per day (events of those types), with 95 % intervals.",
            _types_per_day(("upload", "download")),
        ),
    )
}


def run_report(
    connection: duckdb.DuckDBPyConnection, name: str, since: date, until: date, limit: int
) -> pa.Table:
    """Run report ``name`` for days ``since..until`` (inclusive), at most ``limit`` rows."""
    report = REPORTS[name]
    return connection.sql(report.sql, params=[since, until, limit]).to_arrow_table()
