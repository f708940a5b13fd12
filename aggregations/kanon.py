"""k-anonymous suppression of one day's analytics (pure, no I/O).

The published cells of one day and one dimension form a *tree* (a laminar family of event
sets: any two cells are nested or disjoint):

    total (every event of the day)
      +- day cell of each value with >= k people, and "other" = every remaining value together
           +- hour cell of that day cell for each hour with >= k people, and
              "rest" (hour null) = every remaining hour of that day cell together

At each level the cells not published on their own are pooled into one remainder cell
(other / rest). A remainder is published only with >= k people; while it has fewer, the
smallest published sibling (fewest people, then fewest events, then by key) joins it. The
parent has >= k people, so this stops at the latest when the remainder is the whole parent.
If the day's total has fewer than k people nothing at all is published.

Why nothing under k can be isolated: every published number is the sum of a tree cell's
events, and a parent's events are exactly the sum of its published children (remainder
included). So each published number is a sum of *atoms* (a cell minus its published
children), each atom is a published cell or a remainder of >= k people, and any sum or
difference of published numbers is a signed sum of atoms: it can never equal the events of
a group that is not a union of atoms. Distinct people are not additive at all (one person
can be in several cells), so subtracting people counts yields no group's count.

Hour totals across values are deliberately *not* published: an hour total cuts across the
day cells, and "hour total - published hour cells" would isolate the suppressed hour cells
of several values at once; "day cell - published hours" would isolate a single small hour
(the differencing attack that per-window suppression, hour and day independently, allows).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

K = TypeVar("K", bound=Hashable)

CellKind = Literal["total", "value", "other"]
Grain = Literal["day", "hour"]


@dataclass(frozen=True)
class FineCell:
    """The finest input: the events of one dimension value in one hour of the day."""

    value: str
    hour: datetime
    events: int
    # Dense ids of the distinct people (subject keys) among the events; may be empty.
    people: frozenset[int]


@dataclass(frozen=True)
class Group:
    events: int
    people: frozenset[int]


@dataclass(frozen=True)
class ProtectedCell:
    """One published cell. ``hour`` is None on day cells and on rest-of-day hour rows."""

    grain: Grain
    dimension: str
    cell: CellKind
    value: str | None
    hour: datetime | None
    events: int
    people: int


def merge(groups: Sequence[Group]) -> Group:
    people: set[int] = set()
    for group in groups:
        people |= group.people
    return Group(sum(g.events for g in groups), frozenset(people))


def rollup(groups: Mapping[K, Group], k: int) -> tuple[list[K], list[K]]:
    """Split ``groups`` into (published, pooled): every published group has >= k people and
    the pool is empty or has >= k distinct people together.

    Requires the union of all groups to have >= k people (then it always succeeds).
    """
    published = sorted(
        (key for key, group in groups.items() if len(group.people) >= k),
        key=lambda key: (len(groups[key].people), groups[key].events, repr(key)),
    )
    pooled = [key for key, group in groups.items() if len(group.people) < k]
    pool_people: set[int] = set()
    for key in pooled:
        pool_people |= groups[key].people
    # A non-empty pool under k would be a small group recoverable as parent - published:
    # grow it with the smallest published groups until it reaches k.
    while pooled and len(pool_people) < k:
        if not published:
            raise ValueError("rollup needs the groups together to have at least k people")
        smallest = published.pop(0)
        pooled.append(smallest)
        pool_people |= groups[smallest].people
    return sorted(published, key=repr), sorted(pooled, key=repr)


def _hour_cells(
    dimension: str, cell: CellKind, value: str | None, cells: Sequence[FineCell], k: int
) -> list[ProtectedCell]:
    """The hour cells (and rest-of-day cell) of one published day cell."""
    by_hour: dict[datetime, list[Group]] = {}
    for fine in cells:
        by_hour.setdefault(fine.hour, []).append(Group(fine.events, fine.people))
    hours = {hour: merge(groups) for hour, groups in by_hour.items()}
    published, pooled = rollup(hours, k)
    out = [
        ProtectedCell(
            "hour", dimension, cell, value, hour, hours[hour].events, len(hours[hour].people)
        )
        for hour in published
    ]
    if pooled:
        rest = merge([hours[hour] for hour in pooled])
        out.append(
            ProtectedCell("hour", dimension, cell, value, None, rest.events, len(rest.people))
        )
    return out


def protect_dimension(dimension: str, cells: Sequence[FineCell], k: int) -> list[ProtectedCell]:
    """The published day and hour cells of one dimension (the total row excluded)."""
    by_value: dict[str, list[FineCell]] = {}
    for fine in cells:
        by_value.setdefault(fine.value, []).append(fine)
    values = {
        value: merge([Group(f.events, f.people) for f in fines])
        for value, fines in by_value.items()
    }
    if len(merge(list(values.values())).people) < k:
        return []
    published, pooled = rollup(values, k)
    out: list[ProtectedCell] = []
    for value in published:
        group = values[value]
        out.append(
            ProtectedCell("day", dimension, "value", value, None, group.events, len(group.people))
        )
        out.extend(_hour_cells(dimension, "value", value, by_value[value], k))
    if pooled:
        other = merge([values[value] for value in pooled])
        out.append(
            ProtectedCell("day", dimension, "other", None, None, other.events, len(other.people))
        )
        pooled_cells = [fine for value in pooled for fine in by_value[value]]
        out.extend(_hour_cells(dimension, "other", None, pooled_cells, k))
    return out


def protect_day(cells: Mapping[str, Sequence[FineCell]], k: int) -> list[ProtectedCell]:
    """Every published cell of one day's batch of facts, given its fine cells per dimension.

    Every dimension partitions the same events, so the day total is one row (dimension
    "total"), published only when the day has >= k people; otherwise the result is empty.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    any_cells = next((list(c) for c in cells.values() if c), [])
    total = merge([Group(f.events, f.people) for f in any_cells])
    if len(total.people) < k:
        return []
    out = [ProtectedCell("day", "total", "total", None, None, total.events, len(total.people))]
    for dimension in sorted(cells):
        out.extend(protect_dimension(dimension, cells[dimension], k))
    return out
