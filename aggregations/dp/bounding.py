"""Contribution bounding and the exact aggregates of each batch (DuckDB reads, numpy counts).

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
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggregations.dp.domains import Domain
from aggregations.engine import connect

HOURS = 24


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


def bound_days(
    connection: duckdb.DuckDBPyConnection,
    source: str,
    days: Sequence[date],
    domains: Mapping[str, Domain],
    bounds: Bounds,
) -> dict[date, BoundedBatch]:
    """The bounded aggregates of each of ``days`` (one batch per day) over the FACTS rows of
    the view or table ``source`` (rows of other days are ignored): DuckDB reads the columns
    bounding needs, :func:`bound_rows` bounds and counts them."""
    connection.register("bound_days", pa.table({"day": pa.array(sorted(days), pa.date32())}))
    dimensions = "".join(f', "{d}"' for d in domains)
    unit = bounds.unit_expression
    rows = connection.sql(
        f"""
        SELECT CAST(occurred_hour AS DATE) AS day,
               coalesce({unit}, 'account:' || account_id) AS unit,
               event_key, hour(occurred_hour) AS h, key_id, {unit} IS NOT NULL AS named
               {dimensions}
        FROM {source} WHERE CAST(occurred_hour AS DATE) IN (SELECT day FROM bound_days)
        """  # noqa: S608 - the source and dimensions are constants of the caller
    ).to_arrow_table()
    connection.unregister("bound_days")
    return bound_rows(rows, domains, bounds)


def bound_rows(
    rows: pa.Table, domains: Mapping[str, Domain], bounds: Bounds
) -> dict[date, BoundedBatch]:
    """The bounded aggregates of each day of ``rows`` (columns ``day``, ``unit``,
    ``event_key``, ``h``, ``key_id``, ``named`` and one per dimension of ``domains``).

    Written with numpy rather than in SQL: every step is a sort or a count over integer
    codes (a unit, a day, a domain index), which numpy does in one pass where DuckDB grouped
    by 64-character keys and joined them back (most of a first publish's bounding time).
    Units with at most ``events_per_unit`` events keep them all; only the others' events are
    ranked by ``event_key``.
    """
    if rows.num_rows == 0:
        return {}
    day_of_row, day_values = _codes(rows["day"])
    unit_of_row, unit_values = _codes(rows["unit"])
    # One unit per day and unit key (a user-less account's key repeats across days).
    pairs = day_of_row.astype(np.int64) * len(unit_values) + unit_of_row
    _, first_row, unit_of_row, unit_sizes = np.unique(
        pairs, return_index=True, return_inverse=True, return_counts=True
    )
    day_of_unit = day_of_row[first_row]
    kept = _kept(rows["event_key"], unit_of_row, unit_sizes, bounds.events_per_unit)
    ndays = len(day_values)
    kept_day, kept_unit = day_of_row[kept], unit_of_row[kept]
    facts = np.bincount(day_of_row, minlength=ndays)
    units = np.bincount(day_of_unit, minlength=ndays)
    events = np.bincount(kept_day, minlength=ndays)
    hours = _per_day(kept_day, rows["h"].to_numpy()[kept], HOURS, ndays)
    keys = _keys_per_day(rows, kept, kept_day, ndays)
    events_by: dict[str, np.ndarray] = {}
    people_by: dict[str, np.ndarray] = {}
    for dimension, domain in domains.items():
        value = _domain_indices(rows[dimension], domain)[kept]
        size = len(domain.values)
        events_by[dimension] = _per_day(kept_day, value, size, ndays)
        people_by[dimension] = _people(kept_unit, value, size, day_of_unit, ndays, bounds)
    batches = {}
    for index, day in enumerate(day_values.to_pylist()):
        batches[day] = BoundedBatch(
            day=day,
            facts=int(facts[index]),
            units=int(units[index]),
            events_total=int(events[index]),
            events_by_hour=tuple(hours[index].tolist()),
            events_by_value={d: tuple(h[index].tolist()) for d, h in events_by.items()},
            people_by_value={d: tuple(h[index].tolist()) for d, h in people_by.items()},
            keys_per_person=max(1, int(keys[index])),
        )
    return dict(sorted(batches.items()))


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Each row's index in the column's distinct values (null one of them), and the values."""
    encoded = pc.dictionary_encode(column.combine_chunks(), null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary


def _segment_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Where each run of equal keys begins (``sorted_keys`` sorted, not empty)."""
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def _segment_positions(sorted_keys: np.ndarray) -> np.ndarray:
    """Each element's position among the equal keys before it (``sorted_keys`` sorted)."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64)
    starts = _segment_starts(sorted_keys)
    lengths = np.diff(np.r_[starts, len(sorted_keys)])
    return np.arange(len(sorted_keys)) - np.repeat(starts, lengths)


def _kept(
    event_keys: pa.ChunkedArray, unit_of_row: np.ndarray, unit_sizes: np.ndarray, cap: int
) -> np.ndarray:
    """The rows kept: every event of a unit with at most ``cap``, else its first ``cap`` by
    ``event_key`` (byte order, as SQL's ORDER BY on text), in row order."""
    keep = unit_sizes[unit_of_row] <= cap
    heavy = np.flatnonzero(~keep)
    if len(heavy):
        rank = pc.rank(event_keys.take(pa.array(heavy)), sort_keys="ascending")
        order = np.lexsort((rank.to_numpy(), unit_of_row[heavy]))
        first = _segment_positions(unit_of_row[heavy][order]) < cap
        keep[heavy[order[first]]] = True
    return np.flatnonzero(keep)


def _per_day(day: np.ndarray, index: np.ndarray, size: int, ndays: int) -> np.ndarray:
    """Rows counted per day and ``index`` (0 <= index < size): an array (ndays, size)."""
    counts = np.bincount(day.astype(np.int64) * size + index, minlength=ndays * size)
    return counts.reshape(ndays, size)


def _keys_per_day(rows: pa.Table, kept: np.ndarray, kept_day: np.ndarray, ndays: int) -> np.ndarray:
    """Distinct ``key_id`` per day among the kept events that name a user."""
    key_of_row, key_values = _codes(rows["key_id"])
    named = rows["named"].to_numpy(zero_copy_only=False)[kept]
    key = key_of_row[kept][named]
    # count(DISTINCT key_id) skips a null key id.
    not_null = key_values.is_valid().to_numpy(zero_copy_only=False)[key]
    distinct = np.unique(
        kept_day[named][not_null].astype(np.int64) * len(key_values) + key[not_null]
    )
    return np.bincount(distinct // len(key_values), minlength=ndays)


def _domain_indices(column: pa.ChunkedArray, domain: Domain) -> np.ndarray:
    """Each row's index in ``domain``: its value's, or the fallback's (null, unknown)."""
    value_of_row, values = _codes(column)
    position = {value: index for index, value in enumerate(domain.values)}
    fallback = position[domain.fallback]
    lookup = np.array([position.get(v, fallback) for v in values.to_pylist()], np.int64)
    return lookup[value_of_row]


def _people(
    unit: np.ndarray,
    value: np.ndarray,
    size: int,
    day_of_unit: np.ndarray,
    ndays: int,
    bounds: Bounds,
) -> np.ndarray:
    """Units per day and value, each under its ``values_per_unit`` values with most kept
    events (ties: the lower index): an array (ndays, size)."""
    pairs, events = np.unique(unit.astype(np.int64) * size + value, return_counts=True)
    of_unit, of_value = pairs // size, pairs % size
    if len(pairs) and bounds.values_per_unit == 1:
        # The pairs are sorted by unit: a unit's top value is its segment's maximum of one
        # score, by events then by the lower index (no sort of the pairs).
        starts = _segment_starts(of_unit)
        best = np.maximum.reduceat(events * size + (size - 1 - of_value), starts)
        return _per_day(day_of_unit[of_unit[starts]], size - 1 - best % size, size, ndays)
    order = np.lexsort((of_value, -events, of_unit))
    top = order[_segment_positions(of_unit[order]) < bounds.values_per_unit]
    return _per_day(day_of_unit[of_unit[top]], of_value[top], size, ndays)


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
