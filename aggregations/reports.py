"""Ready-made analytics reports: constant SQL over the catalog views, with parameters.

Every report reads only published data. Suppressed cells do not exist in the views: a day
or value that shows no row had fewer than k people (or was pooled into "other"). Summing
``people`` over several days counts person-days (subject keys change every day, so nobody
can be followed from one day to the next, and distinct people over a range are unknowable).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Final

import duckdb
import pyarrow as pa


@dataclass(frozen=True)
class Report:
    name: str
    description: str
    sql: str  # parameters: since, until (inclusive dates), limit


_RANGE = "date BETWEEN ? AND ?"
_OTHER = "coalesce(value, '(other)')"

REPORTS: Final = {
    report.name: report
    for report in (
        Report(
            "daily-active-people",
            "Distinct people and events per day (days with fewer than k people are absent).",
            f"""
            SELECT date, people AS active_people, events FROM analytics_daily
            WHERE dimension = 'total' AND {_RANGE} ORDER BY date LIMIT ?
            """,  # noqa: S608 - constant fragments only
        ),
        Report(
            "sessions",
            "Sessions started per day (exact, from metering) and the median session length"
            " of the sessions ended that day (published only with >= k people).",
            f"""
            WITH m AS (
                SELECT date, CAST(sum(sessions) AS BIGINT) AS sessions,
                       sum(session_seconds) AS session_seconds
                FROM metering_daily WHERE {_RANGE} GROUP BY date
            ), a AS (
                SELECT date, median_session_seconds FROM analytics_daily
                WHERE dimension = 'type' AND cell = 'value' AND value = 'logout'
            )
            SELECT m.date, m.sessions, round(a.median_session_seconds, 1)
                   AS median_session_seconds
            FROM m LEFT JOIN a USING (date) ORDER BY m.date LIMIT ?
            """,  # noqa: S608 - constant fragments only
        ),
        Report(
            "top-countries",
            "Countries by events over the range; person-days summed over days.",
            f"""
            SELECT {_OTHER} AS country, CAST(sum(events) AS BIGINT) AS events,
                   CAST(sum(people) AS BIGINT) AS person_days
            FROM analytics_daily WHERE dimension = 'country' AND {_RANGE}
            GROUP BY ALL ORDER BY events DESC, country LIMIT ?
            """,  # noqa: S608 - constant fragments only
        ),
        Report(
            "devices",
            "Device class and browser family mix: events and share of events over the range.",
            f"""
            SELECT dimension, {_OTHER} AS value, CAST(sum(events) AS BIGINT) AS events,
                   round(100.0 * sum(events) / sum(sum(events)) OVER (PARTITION BY dimension),
                         1) AS percent
            FROM analytics_daily
            WHERE dimension IN ('device_class', 'browser_family') AND {_RANGE}
            GROUP BY 1, 2 ORDER BY dimension, events DESC, value LIMIT ?
            """,  # noqa: S608 - constant fragments only
        ),
        Report(
            "volume",
            "Uploads and downloads per day over all accounts (exact, from metering).",
            f"""
            SELECT date, CAST(sum(uploads) AS BIGINT) AS uploads,
                   CAST(sum(upload_bytes) AS BIGINT) AS upload_bytes,
                   CAST(sum(downloads) AS BIGINT) AS downloads,
                   CAST(sum(download_bytes) AS BIGINT) AS download_bytes
            FROM metering_daily WHERE {_RANGE} GROUP BY date ORDER BY date LIMIT ?
            """,  # noqa: S608 - constant fragments only
        ),
    )
}


def run_report(
    connection: duckdb.DuckDBPyConnection, name: str, since: date, until: date, limit: int
) -> pa.Table:
    """Run report ``name`` for days ``since..until`` (inclusive), at most ``limit`` rows."""
    report = REPORTS[name]
    return connection.sql(report.sql, params=[since, until, limit]).to_arrow_table()
