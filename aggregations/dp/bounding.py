"""Contribution bounding and the exact aggregates of each batch, in DuckDB.

The privacy unit is one person's day. In the facts a person is a ``subject_key`` (an HMAC of
account and user under a per-day key, so one unit per person and day and key); an event
that names no user (server-to-server API calls, payments, account lifecycle) belongs to its
*account's* unit of the day: everything the account did without a user, together. With
``userless_unit="session"`` (``SIEVE_DP_USERLESS_UNIT``) it belongs to the facts'
``unit_key`` instead (the session, else the IP address; equal to ``subject_key`` for events
with a user): a weaker unit for anonymous visitors, documented in the README.

Bounds (what :mod:`aggregations.dp.mechanisms` assumes, exactly):

- **Events**: each unit keeps at most ``events_per_unit`` events of the batch (the first by
  ``event_key``, an HMAC: a fixed pseudo-random order, the same on every run). Every event
  histogram (the day total, the 24 hours, each dimension's values) counts only kept events,
  so one unit changes any one of them by an L2 norm of at most ``events_per_unit`` (a vector
  of non-negative counts summing to at most C has an L2 norm of at most C).
- **People**: per dimension each unit counts once in at most ``values_per_unit`` values
  (those with most of its events, ties by value): L2 at most sqrt(values_per_unit). The
  default is 1: a person counts under the value they used most that day (nine in ten
  person-days of the generated traffic have one country, device and OS; measured with
  bench/dp_utility.py, 1 instead of 2 published 71 % of the big country cells instead of
  29 %, the noise being sqrt(2) smaller). The day's people total counts each unit once.

A key rotation within a day gives one person a subject key per pseudonymization key: the
batch reports ``keys_per_person`` (the number of key ids among its facts naming a user) and
every bound above is multiplied by it, as OpenDP does for several identifiers per privacy
unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

import duckdb
import pyarrow as pa

from aggregations.dp.domains import Domain
from aggregations.engine import connect

HOURS = 24
# Ranks a unit's values by events then index as one number (_histograms): above any domain's size.
_RANK = 1 << 20


@dataclass(frozen=True)
class Bounds:
    """Contribution bounds of one privacy unit (see the module docstring)."""

    events_per_unit: int
    values_per_unit: int = 1
    # Who stands for a person when an event names no user: the account (one unit for all
    # its user-less events of the day) or the facts' unit_key (the session, else the IP).
    userless_unit: Literal["account", "session"] = "account"

    def __post_init__(self) -> None:
        if min(self.events_per_unit, self.values_per_unit) < 1:
            raise ValueError("contribution bounds must be at least 1")
        if self.userless_unit not in ("account", "session"):
            raise ValueError(f"unknown unit for user-less events: {self.userless_unit!r}")

    @property
    def unit_expression(self) -> str:
        """SQL naming a fact's unit; null means the account's user-less unit.

        ``unit_key`` equals ``subject_key`` for events with a user (facts version 2), and
        facts written before it have ``subject_key`` alone: either way a person with a user
        id is the same unit under both choices."""
        if self.userless_unit == "account":
            return "subject_key"
        return "coalesce(unit_key, subject_key)"


@dataclass(frozen=True)
class BoundedBatch:
    """Exact aggregates of one batch after bounding; the input of every mechanism.

    Histograms are aligned with the domains (and hours 0..23), zeros included.
    """

    day: date
    facts: int  # rows of the batch before bounding (not released)
    units: int  # distinct privacy units (people total)
    events_total: int
    events_by_hour: tuple[int, ...]
    events_by_value: dict[str, tuple[int, ...]]
    people_by_value: dict[str, tuple[int, ...]]
    keys_per_person: int


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


def bound_days(
    connection: duckdb.DuckDBPyConnection,
    source: str,
    days: Sequence[date],
    domains: Mapping[str, Domain],
    bounds: Bounds,
) -> dict[date, BoundedBatch]:
    """The bounded aggregates of each of ``days`` (one batch per day) over the FACTS rows of
    the view or table ``source`` (rows of other days are ignored), in one set of queries.

    Units with at most ``events_per_unit`` events keep them all; only the others are ranked
    by ``event_key`` (a sort of the heavy units' events, not of the whole batch). A kept
    event names its unit by a number (one per day and unit): every histogram groups by unit,
    and a number groups several times faster than a key of 64 characters.
    """
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
        """,  # noqa: S608 - the source and dimensions are constants of the caller
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
        events, people = _histograms(connection, dimension, domain, bounds, list(totals))
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


def _histograms(
    connection: duckdb.DuckDBPyConnection,
    dimension: str,
    domain: Domain,
    bounds: Bounds,
    days: Sequence[date],
) -> tuple[dict[date, tuple[int, ...]], dict[date, tuple[int, ...]]]:
    """Events and people per value of one dimension, per day (kept events only)."""
    table = _register_domain(connection, domain)
    fallback = domain.values.index(domain.fallback)
    # Each fact in exactly one domain value: its own, or the fallback. Grouped before the
    # join, so the join sees each unit's values once.
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE unit_values AS
        SELECT u.day, u.unit, coalesce(d.idx, {fallback}) AS idx, sum(u.c) AS c
        FROM (SELECT day, unit, "{dimension}" AS value, count(*) AS c FROM kept GROUP BY ALL) u
        LEFT JOIN {table} d ON u.value = d.value
        GROUP BY ALL
        """  # noqa: S608 - dimension and table are constants, fallback an int
    )
    size = len(domain.values)
    events = {day: [0] * size for day in days}
    for day, idx, count in connection.execute(
        "SELECT day, idx, sum(c) FROM unit_values GROUP BY ALL"
    ).fetchall():
        events[day][idx] = int(count)
    people = {day: [0] * size for day in days}
    # A unit counts under its values_per_unit values with most events (ties: the first).
    if bounds.values_per_unit == 1:
        # Its top value by one aggregate, not a sort of every unit's values: c * _RANK - idx
        # orders by events, then by index (a domain has fewer than _RANK values).
        if size >= _RANK:
            raise ValueError(f"{dimension}: a domain too large to rank its values")
        top = f"""
            SELECT day, arg_max(idx, c * {_RANK} - idx) AS idx FROM unit_values
            GROUP BY day, unit
        """  # noqa: S608 - an int constant
        params: list[int] = []
    else:
        top = """
            SELECT day, idx FROM unit_values
            QUALIFY row_number() OVER (PARTITION BY day, unit ORDER BY c DESC, idx) <= ?
        """
        params = [bounds.values_per_unit]
    for day, idx, count in connection.execute(
        f"SELECT day, idx, count(*) FROM ({top}) GROUP BY ALL",  # noqa: S608 - constants
        params,
    ).fetchall():
        people[day][idx] = int(count)
    return (
        {day: tuple(values) for day, values in events.items()},
        {day: tuple(values) for day, values in people.items()},
    )


def bound_batch(
    facts: pa.Table, day: date, domains: Mapping[str, Domain], bounds: Bounds
) -> BoundedBatch:
    """The bounded aggregates of ``facts`` (FACTS rows, all of UTC day ``day``)."""
    connection = connect()
    connection.register("batch_facts", facts)
    return bound_days(connection, "batch_facts", [day], domains, bounds).get(day) or empty_batch(
        day, domains
    )


def empty_batch(day: date, domains: Mapping[str, Domain]) -> BoundedBatch:
    """The aggregates of a batch with no facts (a late batch released with none)."""
    return BoundedBatch(
        day=day,
        facts=0,
        units=0,
        events_total=0,
        events_by_hour=(0,) * HOURS,
        events_by_value={d: (0,) * len(domain.values) for d, domain in domains.items()},
        people_by_value={d: (0,) * len(domain.values) for d, domain in domains.items()},
        keys_per_person=1,
    )
