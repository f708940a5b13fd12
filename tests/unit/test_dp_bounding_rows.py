"""Contribution bounding in numpy (``bounding.bound_rows``, issue 10) against the DuckDB
queries it replaced, kept here as the reference: on any facts (units with and without a
user, a user id equal to an account's user-less key, heavy units cut by ``event_key``, values
outside a domain or null, several days and key ids), every bounded aggregate is the same.
Which events a unit keeps is its privacy bound: a difference here is a privacy change."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregations.dp.bounding import HOURS, BoundedBatch, Bounds, bound_days
from aggregations.dp.domains import Domain
from aggregations.engine import connect

START = datetime(2026, 11, 1, tzinfo=UTC)
DOMAINS = {
    "country": Domain("country", ("DE", "FR", "US", "ZZ"), "ZZ"),
    "browser_family": Domain("browser_family", ("Chrome", "Firefox", "Other", "Safari"), "Other"),
    "device_class": Domain("device_class", ("desktop", "mobile", "unknown"), "unknown"),
}


# --- the reference: aggregations/dp/bounding.py before issue 10's numpy rewrite -------------

_RANK = 1 << 20


def _register_domain(connection: duckdb.DuckDBPyConnection, domain: Domain) -> str:
    name = f"domain_{domain.dimension}"
    table = pa.table(
        {
            "value": pa.array(domain.values, pa.string()),
            "idx": pa.array(range(len(domain.values)), pa.int32()),
        }
    )
    connection.register(name, table)
    return name


def reference_bound_days(
    connection: duckdb.DuckDBPyConnection,
    source: str,
    days: Sequence[date],
    domains: Mapping[str, Domain],
    bounds: Bounds,
) -> dict[date, BoundedBatch]:
    connection.register("bound_days", pa.table({"day": pa.array(sorted(days), pa.date32())}))
    dimensions = ", ".join(f'"{d}"' for d in domains)
    unit = bounds.unit_expression
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE unit_facts AS
        SELECT CAST(occurred_hour AS DATE) AS day,
               coalesce({unit}, 'account:' || account_id) AS unit,
               event_key, hour(occurred_hour) AS h, key_id, {unit} IS NOT NULL AS named,
               {dimensions}
        FROM {source} WHERE CAST(occurred_hour AS DATE) IN (SELECT day FROM bound_days);
        CREATE OR REPLACE TEMP TABLE unit_sizes AS
        SELECT day, unit, count(*) AS n, row_number() OVER () AS id FROM unit_facts GROUP BY ALL;
        CREATE OR REPLACE TEMP TABLE kept AS
        SELECT * EXCLUDE (event_key, unit, id), id AS unit FROM unit_facts
        JOIN (SELECT day, unit, id FROM unit_sizes WHERE n <= $cap) USING (day, unit)
        UNION ALL BY NAME
        SELECT * EXCLUDE (event_key, unit, id), id AS unit FROM (
            SELECT * FROM unit_facts
            JOIN (SELECT day, unit, id FROM unit_sizes WHERE n > $cap) USING (day, unit))
        QUALIFY row_number() OVER (PARTITION BY day, unit ORDER BY event_key) <= $cap;
        """,
        {"cap": bounds.events_per_unit},
    )
    totals = {
        day: (int(facts), int(units))
        for day, facts, units in connection.execute(
            "SELECT day, sum(n), count(*) FROM unit_sizes GROUP BY day"
        ).fetchall()
    }
    kept = {
        day: (int(events), int(keys))
        for day, events, keys in connection.execute(
            """
            SELECT day, count(*), count(DISTINCT key_id) FILTER (WHERE named)
            FROM kept GROUP BY day
            """
        ).fetchall()
    }
    hours: dict[date, list[int]] = {day: [0] * HOURS for day in totals}
    for day, hour, events in connection.execute(
        "SELECT day, h, count(*) FROM kept GROUP BY ALL"
    ).fetchall():
        hours[day][hour] = int(events)
    events_by: dict[date, dict[str, tuple[int, ...]]] = {day: {} for day in totals}
    people_by: dict[date, dict[str, tuple[int, ...]]] = {day: {} for day in totals}
    for dimension, domain in domains.items():
        events, people = _reference_histograms(connection, dimension, domain, bounds, list(totals))
        for day in totals:
            events_by[day][dimension] = events[day]
            people_by[day][dimension] = people[day]
    for name in ("unit_facts", "unit_sizes", "kept", "unit_values"):
        connection.execute(f"DROP TABLE IF EXISTS {name}")
    return {
        day: BoundedBatch(
            day=day,
            facts=facts,
            units=units,
            events_total=kept[day][0],
            events_by_hour=tuple(hours[day]),
            events_by_value=events_by[day],
            people_by_value=people_by[day],
            keys_per_person=max(1, kept[day][1]),
        )
        for day, (facts, units) in sorted(totals.items())
    }


def _reference_histograms(
    connection: duckdb.DuckDBPyConnection,
    dimension: str,
    domain: Domain,
    bounds: Bounds,
    days: Sequence[date],
) -> tuple[dict[date, tuple[int, ...]], dict[date, tuple[int, ...]]]:
    table = _register_domain(connection, domain)
    fallback = domain.values.index(domain.fallback)
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE unit_values AS
        SELECT u.day, u.unit, coalesce(d.idx, {fallback}) AS idx, sum(u.c) AS c
        FROM (SELECT day, unit, "{dimension}" AS value, count(*) AS c FROM kept GROUP BY ALL) u
        LEFT JOIN {table} d ON u.value = d.value
        GROUP BY ALL
        """
    )
    size = len(domain.values)
    events = {day: [0] * size for day in days}
    for day, idx, count in connection.execute(
        "SELECT day, idx, sum(c) FROM unit_values GROUP BY ALL"
    ).fetchall():
        events[day][idx] = int(count)
    people = {day: [0] * size for day in days}
    if bounds.values_per_unit == 1:
        top = f"""
            SELECT day, arg_max(idx, c * {_RANK} - idx) AS idx FROM unit_values
            GROUP BY day, unit
        """
        params: list[int] = []
    else:
        top = """
            SELECT day, idx FROM unit_values
            QUALIFY row_number() OVER (PARTITION BY day, unit ORDER BY c DESC, idx) <= ?
        """
        params = [bounds.values_per_unit]
    for day, idx, count in connection.execute(
        f"SELECT day, idx, count(*) FROM ({top}) GROUP BY ALL",
        params,
    ).fetchall():
        people[day][idx] = int(count)
    return (
        {day: tuple(values) for day, values in events.items()},
        {day: tuple(values) for day, values in people.items()},
    )


# --- the comparison ----------------------------------------------------------------------------


def _values(domain: Domain) -> st.SearchStrategy[str | None]:
    return st.sampled_from([*domain.values, "not in the domain", None])


_row = st.fixed_dictionaries(
    {
        "day": st.integers(0, 2),
        "hour": st.integers(0, HOURS - 1),
        "account_id": st.sampled_from(["a", "b", "c"]),
        # "account:a" is the text of account a's user-less unit: the same unit to both.
        "subject_key": st.sampled_from([None, "p1", "p2", "p3", "account:a"]),
        "unit_key": st.sampled_from([None, "s1", "s2", "p1"]),
        "key_id": st.sampled_from(["k1", "k2", "k3"]),
        **{name: _values(domain) for name, domain in DOMAINS.items()},
    }
)


def _facts(rows: list[dict[str, Any]], event_keys: list[str]) -> pa.Table:
    """The columns bounding reads; dimensions nullable, whatever the FACTS schema says, so
    that a null is compared too."""
    return pa.table(
        {
            "occurred_hour": pa.array(
                [START + timedelta(days=r["day"], hours=r["hour"]) for r in rows],
                pa.timestamp("s", tz="UTC"),
            ),
            "event_key": pa.array(event_keys, pa.string()),
            **{
                name: pa.array([r[name] for r in rows], pa.string())
                for name in ("account_id", "subject_key", "unit_key", "key_id", *DOMAINS)
            },
        }
    )


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(_row, min_size=0, max_size=60),
    keys=st.lists(st.text("0aZ9f", min_size=1, max_size=4), min_size=60, max_size=60, unique=True),
    events_per_unit=st.integers(1, 5),
    values_per_unit=st.integers(1, 3),
    userless_unit=st.sampled_from(["account", "session"]),
    asked=st.sets(st.integers(0, 3), min_size=1),
)
def test_bounded_aggregates_are_the_reference_queries(
    rows: list[dict[str, Any]],
    keys: list[str],
    events_per_unit: int,
    values_per_unit: int,
    userless_unit: str,
    asked: set[int],
) -> None:
    # Event keys are unique (HMACs of event ids, deduplicated): with two equal keys in one
    # unit, which of them the reference keeps is up to DuckDB's sort, so is not a contract.
    facts = _facts(rows, keys[: len(rows)])
    bounds = Bounds(events_per_unit, values_per_unit, userless_unit)  # type: ignore[arg-type]
    days = [START.date() + timedelta(days=d) for d in sorted(asked)]
    connection = connect()
    connection.register("facts", facts)
    try:
        expected = reference_bound_days(connection, "facts", days, DOMAINS, bounds)
        assert bound_days(connection, "facts", days, DOMAINS, bounds) == expected
    finally:
        connection.close()
