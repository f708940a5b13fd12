"""Exact per-account usage per UTC hour and per UTC day, for any declared meter, in DuckDB.

The queries run over a ``facts`` view (committed facts files, :func:`aggregations.storage.
register_facts`) and write temporary tables, so nothing is materialized in Python: what the
meters count is :mod:`aggregations.meters`; this module groups by window and account (and by
each meter's breakdown columns), and compares with what is published.

Rows are *long*: (grain, date, hour, account_id, meter, dimension, dimension_value, value),
``dimension`` null on a meter's total. A zero is not a row, except one per account and window
whose every meter is zero: an account with facts in a window always has its row of zeros.
No noise and no suppression: an invoice must be exact.

Corrections (:func:`changes`): a key never published gets a base row with its value; a
published key whose sum of rows differs gets one correction row with the difference. Keys
whose sum already matches produce nothing, which makes publishing idempotent. An account and
window with no facts left at all (facts removed by retention) is left as published: deleting
old inputs must not rewrite what was billed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import duckdb
import pyarrow as pa

from aggregations.engine import connect
from aggregations.meters import MAX_DECIMALS, Meter
from aggregations.schemas import METERING_VALUE_TYPE

_ANY = "__any_usage"
# The key of a row; `hour` is null on day rows and `dimension` on totals, hence the
# null-safe comparisons below.
KEY = ("grain", "date", "hour", "account_id", "meter", "dimension", "dimension_value")
WINDOW = ("grain", "date", "hour", "account_id")
_HOURS = ("grain", "date", "hour")  # a window of every account (hour null: a day)


def _same(left: str, right: str, columns: Sequence[str]) -> str:
    return " AND ".join(f"{left}.{c} IS NOT DISTINCT FROM {right}.{c}" for c in columns)


def _tables(part: int, meters: Sequence[Meter], dimension: str | None) -> list[str]:
    """The statements of one part's pass over ``metered_facts``: ``hourly_<part>``, every
    additive meter (count, sum, max) per hour and account (and ``dimension``: column
    ``__dimension``), and per unique_count meter ``i`` the distinct values it counts per hour
    and account, ``distinct_<part>_<i>``.

    A count distinct inside the one GROUP BY makes DuckDB copy the facts and group them
    twice more (per hour, then per day); the distinct values per hour are one grouping, and
    both a day's values and the additive day totals come from these smaller tables."""
    dim = [f'"{dimension}" AS __dimension'] if dimension is not None else []
    additive = [
        f"count(*) FILTER (WHERE {m.filter_sql()}) AS __p{i}"
        if m.aggregation == "count"
        else f"{m.aggregation}({m.operand_sql()}) FILTER (WHERE {m.filter_sql()}) AS __p{i}"
        for i, m in enumerate(meters)
        if m.aggregation != "unique_count"
    ]
    statements = [
        f"""CREATE OR REPLACE TEMP TABLE hourly_{part} AS
            SELECT occurred_hour, account_id, {", ".join([*dim, *additive, "count(*) AS __rows"])}
            FROM metered_facts GROUP BY ALL"""  # noqa: S608 - checked identifiers, constants
    ]
    for i, m in enumerate(meters):
        if m.aggregation == "unique_count":
            statements.append(
                f"""CREATE OR REPLACE TEMP TABLE distinct_{part}_{i} AS
                    SELECT DISTINCT occurred_hour, account_id, {"".join(d + ", " for d in dim)}
                           {m.column_sql()} AS __value
                    FROM metered_facts
                    WHERE ({m.filter_sql()}) AND {m.column_sql()} IS NOT NULL"""  # noqa: S608
            )
    return statements


def _grouped(part: int, meters: Sequence[Meter], dimension: str | None) -> str:
    """Hour and day rows of ``meters`` from the tables of :func:`_tables`, grouped by window
    and account (and ``dimension``), in the wide shape (one column per meter)."""
    usage = " OR ".join(f"{m.name} <> 0" for m in meters)
    keys = ["account_id"] + (["__dimension"] if dimension is not None else [])
    if dimension is None:
        name, value = "CAST(NULL AS VARCHAR)", "CAST(NULL AS VARCHAR)"
    else:
        name, value = f"'{dimension}'", "CAST(w.__dimension AS VARCHAR)"

    def rows(window: str, windows: str, distinct: str) -> str:
        values, joins = [], []
        for i, m in enumerate(meters):
            if m.aggregation == "unique_count":
                values.append(f"coalesce(d{i}.__count, 0)")
                on = _same("w", f"d{i}", [window, *keys])
                joins.append(f"LEFT JOIN ({distinct.format(i=i)}) d{i} ON {on}")
            else:
                values.append(f"coalesce(w.__p{i}, 0)")
        columns = ", ".join(
            f"CAST({v} AS DECIMAL(38, {MAX_DECIMALS})) AS {m.name}"
            for v, m in zip(values, meters, strict=True)
        )
        return f"""
            SELECT w.account_id, {name} AS dimension, {value} AS dimension_value, w.{window},
                   {columns}
            FROM ({windows}) w {" ".join(joins)}
        """  # noqa: S608 - checked identifiers, constants

    group = ", ".join(keys)
    hours = rows(
        "occurred_hour",
        f"SELECT * FROM hourly_{part} WHERE occurred_hour <= $last_hour",  # noqa: S608
        f"""SELECT occurred_hour, {group}, count(*) AS __count FROM distinct_{part}_{{i}}
            WHERE occurred_hour <= $last_hour GROUP BY ALL""",  # noqa: S608
    )
    day_totals = ", ".join(
        f"{'max' if m.aggregation == 'max' else 'sum'}(__p{i}) AS __p{i}"
        for i, m in enumerate(meters)
        if m.aggregation != "unique_count"
    )
    days = rows(
        "day",
        f"""SELECT CAST(occurred_hour AS DATE) AS day, {group}, {day_totals}
            FROM hourly_{part} WHERE CAST(occurred_hour AS DATE) <= $last_day
            GROUP BY ALL""",  # noqa: S608
        f"""SELECT day, {group}, count(*) AS __count FROM (
                SELECT DISTINCT CAST(occurred_hour AS DATE) AS day, {group}, __value
                FROM distinct_{part}_{{i}} WHERE CAST(occurred_hour AS DATE) <= $last_day)
            GROUP BY ALL""",  # noqa: S608
    )
    labels = "account_id, dimension, dimension_value"
    others = ", ".join(m.name for m in meters)
    return f"""
        SELECT *, ({usage}) AS {_ANY} FROM (
            SELECT 'hour' AS grain, CAST(occurred_hour AS DATE) AS date,
                   occurred_hour AS hour, {labels}, {others} FROM ({hours})
            UNION ALL
            SELECT 'day' AS grain, day AS date, CAST(NULL AS TIMESTAMPTZ) AS hour, {labels},
                   {others} FROM ({days})
        )
    """  # noqa: S608


def _long(part: int, meters: Sequence[Meter], dimension: str | None) -> str:
    names = ", ".join(m.name for m in meters)
    # Totals keep one zero row per account-window with no usage at all (its row of zeros).
    presence = f" OR (meter = '{meters[0].name}' AND NOT {_ANY})" if dimension is None else ""
    return f"""
        SELECT {", ".join(KEY)}, CAST(value AS {_decimal()}) AS value
        FROM (UNPIVOT ({_grouped(part, meters, dimension)}) ON {names}
              INTO NAME meter VALUE value)
        WHERE value <> 0{presence}
    """  # noqa: S608


def _decimal() -> str:
    return f"DECIMAL({METERING_VALUE_TYPE.precision}, {METERING_VALUE_TYPE.scale})"


def recompute(
    connection: duckdb.DuckDBPyConnection,
    meters: Sequence[Meter],
    days: Sequence[date],
    last_hour: datetime,
    last_day: date,
) -> None:
    """Temp table ``recomputed``: the long rows of every closed window (hours ``<=
    last_hour``, days ``<= last_day``) of ``days``, from the ``facts`` view."""
    connection.register("recompute_days", pa.table({"day": pa.array(sorted(days), pa.date32())}))
    connection.execute(
        """
        CREATE OR REPLACE TEMP VIEW metered_facts AS
        SELECT * FROM facts
        WHERE CAST(occurred_hour AS DATE) IN (SELECT day FROM recompute_days)
        """
    )
    groupings: list[tuple[str | None, list[Meter]]] = [(None, list(meters))]
    for breakdown in sorted({d for m in meters for d in m.group_by}):
        groupings.append((breakdown, [m for m in meters if breakdown in m.group_by]))
    temporary = []
    for part, (dimension, of_part) in enumerate(groupings):
        for statement in _tables(part, of_part, dimension):
            connection.execute(statement)
        temporary.append(f"hourly_{part}")
        temporary += [f"distinct_{part}_{i}" for i, m in enumerate(of_part)
                      if m.aggregation == "unique_count"]  # fmt: skip
    parts = [_long(part, of_part, dimension) for part, (dimension, of_part) in enumerate(groupings)]
    connection.execute(
        f"CREATE OR REPLACE TEMP TABLE recomputed AS {' UNION ALL '.join(parts)}",
        {"last_hour": last_hour, "last_day": last_day},
    )
    for name in temporary:
        connection.execute(f"DROP TABLE {name}")


@dataclass(frozen=True)
class Changes:
    """Account-windows newly published and corrected by one :func:`changes` call."""

    hourly_base: int = 0
    hourly_corrections: int = 0
    daily_base: int = 0
    daily_corrections: int = 0


def changes(
    connection: duckdb.DuckDBPyConnection,
    meters: Sequence[Meter],
    new_meters: Sequence[str],
) -> Changes:
    """Temp table ``changes`` (long rows and ``is_correction``): what to publish so that the
    published sums equal ``recomputed``, given ``published`` (every row published so far for
    the same days, any meter). ``new_meters`` are meters no earlier run published: their
    first values are base rows even in windows published before."""
    connection.register(
        "current_meters", pa.table({"meter": pa.array([m.name for m in meters], pa.string())})
    )
    connection.register("new_meters", pa.table({"meter": pa.array(list(new_meters), pa.string())}))
    keys = ", ".join(KEY)
    window = ", ".join(WINDOW)
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE current AS
        SELECT {keys}, sum(value) AS value FROM published
        WHERE meter IN (SELECT meter FROM current_meters) GROUP BY ALL;
        CREATE OR REPLACE TEMP TABLE published_windows AS SELECT DISTINCT {window} FROM published;
        CREATE OR REPLACE TEMP TABLE published_hours AS
        SELECT DISTINCT grain, date, hour FROM published_windows;
        CREATE OR REPLACE TEMP TABLE compared AS
        SELECT * FROM recomputed r SEMI JOIN published_hours p ON {_same("r", "p", _HOURS)};
        CREATE OR REPLACE TEMP TABLE recomputed_windows AS SELECT DISTINCT {window} FROM compared;
        CREATE OR REPLACE TEMP TABLE changes AS
        WITH joined AS (
            SELECT {", ".join(f"coalesce(r.{c}, c.{c}) AS {c}" for c in KEY)},
                   r.value AS recomputed, c.value AS published
            FROM compared r
            FULL JOIN current c ON {_same("r", "c", KEY)}
        ), marked AS (
            SELECT j.*, p.grain IS NOT NULL AS window_published,
                   w.grain IS NOT NULL AS window_has_facts
            FROM joined j
            LEFT JOIN published_windows p ON {_same("j", "p", WINDOW)}
            LEFT JOIN recomputed_windows w ON {_same("j", "w", WINDOW)}
        )
        SELECT {keys},
               CAST(coalesce(recomputed, 0) - coalesce(published, 0) AS {_decimal()}) AS value,
               window_published AND meter NOT IN (SELECT meter FROM new_meters) AS is_correction,
               window_published
        FROM marked
        WHERE window_has_facts AND (
            coalesce(recomputed, 0) <> coalesce(published, 0)
            OR (published IS NULL AND NOT window_published))
        UNION ALL
        -- A window (grain, date and hour) with nothing published for any account: every
        -- date of a first publish, and a day's hours that closed since the last run. Each
        -- row is a base row as it is, no join needed (what the query above gives it).
        SELECT {keys}, value, false, false FROM recomputed r
        ANTI JOIN published_hours p ON {_same("r", "p", _HOURS)}
        """  # noqa: S608 - constant fragments and checked identifiers
    )
    counts = {
        grain: (int(new), int(fixed))
        for grain, new, fixed in connection.execute(
            """
            SELECT grain, count(*) FILTER (WHERE NOT window_published),
                   count(*) FILTER (WHERE is_correction)
            FROM (SELECT DISTINCT grain, date, hour, account_id, window_published, is_correction
                  FROM changes)
            GROUP BY grain
            """  # a window is one row, or two when it corrects some meters and not new ones
        ).fetchall()
    }
    hours, days = counts.get("hour", (0, 0)), counts.get("day", (0, 0))
    return Changes(hours[0], hours[1], days[0], days[1])


# --- for tests and one-off use: Arrow in, Arrow out ----------------------------------------


def usage(
    facts: pa.Table, meters: Sequence[Meter], last_hour: datetime, last_day: date
) -> pa.Table:
    """The long rows of every closed window of ``facts`` (pure: Arrow in, Arrow out)."""
    connection = connect()
    connection.register("facts", facts)
    days = connection.execute("SELECT DISTINCT CAST(occurred_hour AS DATE) FROM facts").fetchall()
    recompute(connection, meters, [d for (d,) in days], last_hour, last_day)
    return connection.sql(
        f"SELECT * FROM recomputed ORDER BY {', '.join(KEY)}"  # noqa: S608
    ).to_arrow_table()


def wide(long: pa.Table, meters: Sequence[Meter], grain: str) -> list[dict[str, Any]]:
    """Long rows as one dict per window and account with a value per meter (totals only)."""
    window = "hour" if grain == "hour" else "date"
    rows: dict[tuple[object, str], dict[str, Any]] = {}
    for row in long.to_pylist():
        if row["grain"] != grain or row["dimension"] is not None:
            continue
        key = (row[window], row["account_id"])
        out = rows.setdefault(
            key, {window: key[0], "account_id": key[1], **{m.name: 0 for m in meters}}
        )
        out[row["meter"]] = out[row["meter"]] + row["value"]
    return [rows[key] for key in sorted(rows, key=lambda k: (str(k[0]), k[1]))]
