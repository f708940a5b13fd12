"""One batch released: bound, add noise (OpenDP), then post-process (no privacy cost).

Post-processing reads only noisy numbers and public facts (domains, noise scales), so it
spends nothing (the post-processing property of differential privacy):

- **Consistency.** The day total and the 24 hour totals estimate the same bounded events:
  they are combined by generalized least squares (each weighted by the inverse of its noise
  variance), so the hours add up to the total and both are more accurate than either alone.
- **Which values are published.** Every value of a dimension's public domain got noise;
  a value is published only when its noisy people count passes a threshold of ``z``
  standard deviations of that noise, ``z`` chosen per domain size so that a batch publishes
  on average at most :data:`FALSE_VALUES` values per dimension that nobody had (hundreds of
  noisy zeros would flood the tables otherwise). Event types, a small domain of the
  contract, are always published. An ``other`` row per dimension carries the total minus
  the published values.
- **Integers, not negative, adding up.** The day total is rounded and clipped at zero; its
  children (the 24 hours; a dimension's published values and its ``other``) are then the
  non-negative numbers closest to their noisy values (least squares) that add up to it,
  rounded by largest remainder so that the integers still add up exactly. Event types (a
  whole domain, no ``other``) are rounded and clipped only: see :func:`post_process`.

Every count row carries the standard deviation of its noise (``events_sd``/``people_sd``):
a 95 % interval for the bounded count is the count +- 1.96 sd.

**Drawing only what is published.** The batch spends what OpenDP's map of the composed
measurement says, over every histogram whole. Of a thresholded dimension's event counts,
only the values whose noisy people count passes are ever used (the ``other`` row is the
total minus them), so :func:`release_bounded` draws the people counts and totals first,
then the event counts of the published values alone, each with the noise its whole-vector
part would have given it (:meth:`~aggregations.dp.mechanisms.BatchMechanism.sample_entries`).
Every published number then has exactly the distribution it has when every count is drawn
and the unused ones are dropped: the release is a post-processing of the composed
measurement, and the guarantee is unchanged. It draws about half as much noise: OpenDP's
exact sampler costs 15-30 us a draw, and a day has ~1,400 country and browser values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from statistics import NormalDist
from typing import Any, Final

import pyarrow as pa

from aggregations.dp.bounding import BoundedBatch, Bounds, bound_batch
from aggregations.dp.domains import Domain
from aggregations.dp.mechanisms import (
    EVENTS_BY_HOUR,
    EVENTS_TOTAL,
    PEOPLE_TOTAL,
    build_mechanism,
    events_of,
    people_of,
)

# Expected values published per dimension and batch although nobody had them (pure noise).
FALSE_VALUES: Final = 0.05
# Dimensions whose whole (small) domain is published, whatever the noisy people count.
ALWAYS_PUBLISHED: Final = frozenset({"type"})


@dataclass(frozen=True)
class Cell:
    """One published number set: a day or hour total, a dimension value, or an ``other``."""

    grain: str  # "day" | "hour"
    hour: datetime | None
    dimension: str  # "total" or a dimension
    cell: str  # "total" | "value" | "other"
    value: str | None
    events: int
    events_sd: float
    people: int | None = None
    people_sd: float | None = None


@dataclass(frozen=True)
class Release:
    """A batch's published cells and what it spent (rho of zCDP, OpenDP's map)."""

    day: date
    cells: tuple[Cell, ...]
    rho: float
    keys_per_person: int
    facts: int


def threshold_sds(domain_size: int) -> float:
    """How many noise standard deviations a value's people count needs to be published."""
    return NormalDist().inv_cdf(1 - FALSE_VALUES / domain_size)


def _count(x: float) -> int:
    return max(0, round(x))


def fit_to_total(values: Sequence[float], total: int) -> list[int]:
    """The non-negative integers closest to ``values`` (least squares, then largest
    remainder) that add up to ``total`` (>= 0): the Euclidean projection onto the simplex
    scaled to ``total``, ``max(v - tau, 0)`` with ``tau`` set by the sum."""
    if total < 0:
        raise ValueError("a total of counts is not negative")
    if total == 0 or not values:
        return [0] * len(values)
    ordered = sorted(values, reverse=True)
    tau, running = 0.0, 0.0
    for k, value in enumerate(ordered, start=1):
        running += value
        candidate = (running - total) / k
        if value - candidate > 0:
            tau = candidate
    shares = [max(v - tau, 0.0) for v in values]
    floors = [math.floor(x) for x in shares]
    missing = total - sum(floors)
    # Largest fractional parts first (ties by position): the rounded parts keep the sum.
    order = sorted(range(len(shares)), key=lambda i: (floors[i] - shares[i], i))
    for i in order[: max(0, missing)]:
        floors[i] += 1
    return floors


def _combine(
    total: float, total_sd: float, hours: Sequence[float], hour_sd: float
) -> tuple[float, float, list[float], float]:
    """GLS of a total and its parts: (total, its sd, parts adding up to it, a part's sd)."""
    parts = len(hours)
    w_total = 1 / total_sd**2
    w_sum = 1 / (parts * hour_sd**2)
    a = w_total / (w_total + w_sum)  # weight of the direct total
    summed = sum(hours)
    combined = a * total + (1 - a) * summed
    shift = (combined - summed) / parts
    # Each part becomes h_i + a (T - S) / n: its variance, from the independent noises.
    part_var = (
        hour_sd**2 * (1 - a / parts) ** 2
        + (parts - 1) * hour_sd**2 * (a / parts) ** 2
        + (a / parts) ** 2 * total_sd**2
    )
    return (
        combined,
        math.sqrt(1 / (w_total + w_sum)),
        [h + shift for h in hours],
        math.sqrt(part_var),
    )


def chosen_values(
    outputs: Mapping[str, Any], scales: Mapping[str, float], domains: Mapping[str, Domain]
) -> dict[str, list[int]]:
    """Per dimension, the indices of the values published: those whose noisy people count
    passes the threshold (every value of an always-published dimension)."""
    chosen = {}
    for dimension, domain in domains.items():
        people = outputs[people_of(dimension)]
        threshold = threshold_sds(len(domain.values)) * scales[people_of(dimension)]
        chosen[dimension] = [
            i
            for i in range(len(domain.values))
            if dimension in ALWAYS_PUBLISHED or people[i] >= threshold
        ]
    return chosen


def post_process(
    batch: BoundedBatch,
    outputs: Mapping[str, Any],
    scales: Mapping[str, float],
    domains: Mapping[str, Domain],
) -> list[Cell]:
    """The published cells from the noisy outputs (no access to exact values but ``day``).

    ``outputs[events_of(d)]`` is indexed by value index: a whole vector, or a mapping that
    holds at least the published values."""
    total, total_sd, hours, hour_sd = _combine(
        float(outputs[EVENTS_TOTAL][0]),
        scales[EVENTS_TOTAL],
        [float(h) for h in outputs[EVENTS_BY_HOUR]],
        scales[EVENTS_BY_HOUR],
    )
    day_start = datetime.combine(batch.day, time(0), tzinfo=UTC)
    day_events = _count(total)
    cells = [
        Cell(
            "day",
            None,
            "total",
            "total",
            None,
            day_events,
            total_sd,
            _count(float(outputs[PEOPLE_TOTAL][0])),
            scales[PEOPLE_TOTAL],
        )
    ]
    cells += [
        Cell("hour", day_start + timedelta(hours=h), "total", "total", None, x, hour_sd)
        for h, x in enumerate(fit_to_total(hours, day_events))
    ]
    chosen = chosen_values(outputs, scales, domains)
    for dimension, domain in domains.items():
        events = outputs[events_of(dimension)]
        people = outputs[people_of(dimension)]
        events_sd, people_sd = scales[events_of(dimension)], scales[people_of(dimension)]
        published = chosen[dimension]
        has_other = len(published) < len(domain.values)
        noisy = [float(events[i]) for i in published]
        if has_other:
            noisy.append(total - sum(noisy))
        # With an "other" row as slack the published values move only when they must (below
        # zero, or more than the total together). A whole domain (event types) has no slack:
        # forcing its nine noisy values to the total pulls the large ones down by the noise
        # of the small ones (measured with bench/dp_utility.py: median error 28 % -> 39 %),
        # so its values are only rounded and clipped, and do not add up to the total exactly.
        fitted = fit_to_total(noisy, day_events) if has_other else [_count(x) for x in noisy]
        for i, count in zip(published, fitted, strict=False):
            cells.append(
                Cell(
                    "day",
                    None,
                    dimension,
                    "value",
                    domain.values[i],
                    count,
                    events_sd,
                    _count(float(people[i])),
                    people_sd,
                )
            )
        if has_other:
            rest_sd = math.sqrt(total_sd**2 + len(published) * events_sd**2)
            cells.append(Cell("day", None, dimension, "other", None, fitted[-1], rest_sd))
    return cells


def release_batch(
    facts: pa.Table,
    day: date,
    rho: float,
    bounds: Bounds,
    domains: Mapping[str, Domain],
) -> Release:
    """Bound ``facts`` (one UTC day's batch), add noise for ``rho`` (zCDP), post-process."""
    return release_bounded(bound_batch(facts, day, dict(domains), bounds), rho, bounds, domains)


def release_bounded(
    bounded: BoundedBatch, rho: float, bounds: Bounds, domains: Mapping[str, Domain]
) -> Release:
    """Add noise for ``rho`` (zCDP) to a bounded batch and post-process (module docstring:
    the event counts of unpublished values are never drawn)."""
    mechanism = build_mechanism(bounds, bounded.keys_per_person, rho, list(domains))
    whole = [EVENTS_TOTAL, EVENTS_BY_HOUR, PEOPLE_TOTAL]
    whole += [people_of(d) for d in domains]
    whole += [events_of(d) for d in domains if d in ALWAYS_PUBLISHED]
    outputs = mechanism.sample(bounded, whole)
    for dimension, indices in chosen_values(outputs, mechanism.scales, domains).items():
        if dimension not in ALWAYS_PUBLISHED:
            drawn = mechanism.sample_entries(bounded, dimension, indices)
            outputs[events_of(dimension)] = dict(zip(indices, drawn, strict=True))
    cells = post_process(bounded, outputs, mechanism.scales, domains)
    return Release(bounded.day, tuple(cells), mechanism.rho, bounded.keys_per_person, bounded.facts)
