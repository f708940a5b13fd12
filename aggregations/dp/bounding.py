"""Contribution bounding and the exact aggregates of one batch, in DuckDB.

The privacy unit is one person's day. In the facts a person is a ``subject_key`` (an HMAC of
account and user under a per-day key, so one unit per person and day and key); an event
that names no user (server-to-server API calls, payments, account lifecycle) belongs to its
*account's* unit of the day: everything the account did without a user, together.

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

from dataclasses import dataclass
from datetime import date

import pyarrow as pa

from aggregations.dp.domains import Domain
from aggregations.engine import connect

HOURS = 24


@dataclass(frozen=True)
class Bounds:
    """Contribution bounds of one privacy unit (see the module docstring)."""

    events_per_unit: int
    values_per_unit: int = 1

    def __post_init__(self) -> None:
        if min(self.events_per_unit, self.values_per_unit) < 1:
            raise ValueError("contribution bounds must be at least 1")


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


def _register_domain(connection: object, domain: Domain) -> str:
    name = f"domain_{domain.dimension}"
    table = pa.table(
        {
            "value": pa.array(domain.values, pa.string()),
            "idx": pa.array(range(len(domain.values)), pa.int32()),
        }
    )
    connection.register(name, table)  # type: ignore[attr-defined]
    return name


def bound_batch(
    facts: pa.Table, day: date, domains: dict[str, Domain], bounds: Bounds
) -> BoundedBatch:
    """The bounded aggregates of ``facts`` (FACTS rows, all of UTC day ``day``)."""
    connection = connect()
    connection.register("facts", facts)
    connection.execute(
        """
        CREATE TEMP TABLE unit_facts AS
        SELECT *, coalesce(subject_key, 'account:' || account_id) AS unit,
               row_number() OVER (
                   PARTITION BY coalesce(subject_key, 'account:' || account_id)
                   ORDER BY event_key) AS rank_in_unit
        FROM facts
        """
    )
    (total_facts, units, keys, kept_total), *_ = connection.execute(
        """
        SELECT count(*), count(DISTINCT unit),
               count(DISTINCT key_id) FILTER (WHERE subject_key IS NOT NULL),
               count(*) FILTER (WHERE rank_in_unit <= ?)
        FROM unit_facts
        """,
        [bounds.events_per_unit],
    ).fetchall()
    hours = [0] * HOURS
    for hour, events in connection.execute(
        "SELECT hour(occurred_hour), count(*) FROM unit_facts WHERE rank_in_unit <= ? GROUP BY 1",
        [bounds.events_per_unit],
    ).fetchall():
        hours[hour] = events
    events_by_value: dict[str, tuple[int, ...]] = {}
    people_by_value: dict[str, tuple[int, ...]] = {}
    for dimension, domain in domains.items():
        table = _register_domain(connection, domain)
        fallback = domain.values.index(domain.fallback)
        # Each fact in exactly one domain value: its own, or the fallback.
        mapped = f"""
            SELECT f.unit, f.rank_in_unit, coalesce(d.idx, {fallback}) AS idx
            FROM unit_facts f LEFT JOIN {table} d ON f.{dimension} = d.value
        """  # noqa: S608 - dimension and table are constants, fallback an int
        events = [0] * len(domain.values)
        for idx, count in connection.execute(
            f"SELECT idx, count(*) FROM ({mapped}) WHERE rank_in_unit <= ? GROUP BY idx",  # noqa: S608
            [bounds.events_per_unit],
        ).fetchall():
            events[idx] = count
        people = [0] * len(domain.values)
        for idx, count in connection.execute(
            f"""
            SELECT idx, count(*) FROM (
                SELECT unit, idx, row_number() OVER (
                    PARTITION BY unit ORDER BY count(*) DESC, idx) AS value_rank
                FROM ({mapped}) GROUP BY unit, idx
            ) WHERE value_rank <= ? GROUP BY idx
            """,  # noqa: S608
            [bounds.values_per_unit],
        ).fetchall():
            people[idx] = count
        events_by_value[dimension] = tuple(events)
        people_by_value[dimension] = tuple(people)
    return BoundedBatch(
        day=day,
        facts=int(total_facts),
        units=int(units),
        events_total=int(kept_total),
        events_by_hour=tuple(hours),
        events_by_value=events_by_value,
        people_by_value=people_by_value,
        keys_per_person=max(1, int(keys)),
    )
