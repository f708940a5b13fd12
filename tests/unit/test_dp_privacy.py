"""Empirical differential privacy: two neighbouring days, with and without one person's
day, give release distributions within the e^epsilon bound (plus delta).

What is sampled is the real thing: the facts are bounded by ``bound_batch`` and the noise
comes from the very OpenDP measurements ``build_mechanism`` composes (each part reads its
histogram from the batch, so a batch whose histogram holds one count N times yields N
independent draws in one call).

OpenDP draws from the operating system's CSPRNG and cannot be seeded, so instead of a seed
the test bounds its own error. For a fixed set S, the frequency of S over N independent
draws is within t of its probability except with probability 2 exp(-2 N t^2) (Hoeffding).
The test sets t for 1e-11 per frequency (t = 0.016 at N = 50,000 draws); this file
compares a few hundred, so a spurious failure has a probability below 1e-8: it does not
flake. The sets
are the tails {x >= a} and {x <= a} at thresholds a every half standard deviation, where a
privacy loss shows. A negative control runs the same check on the unbounded counts (the
heavy person's 400 events instead of the 32 the bound keeps) and must fail: the check has
teeth.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

import numpy as np
import pytest

from aggregations.dp.bounding import BoundedBatch, Bounds, bound_batch
from aggregations.dp.budget import Budget
from aggregations.dp.domains import domains
from aggregations.dp.mechanisms import (
    EVENTS_TOTAL,
    PEOPLE_TOTAL,
    build_mechanism,
    epsilon_of,
    events_of,
    people_of,
)
from aggregations.schemas import DIMENSIONS
from tests.fixtures.facts import fact, facts_table

DAY = datetime(2026, 11, 1, tzinfo=UTC)
# Draws per distribution: OpenDP's exact sampler takes ~70 us a draw (~300 us a call), so
# the counts keep this file near 20 s.
DRAWS = {"events": 50_000, "people": 50_000}
SCALAR_DRAWS = 4_000
BUDGET = Budget(epsilon=1.0, delta=1e-6)
BOUNDS = Bounds(events_per_unit=32)
HEAVY_EVENTS = 400


def _day(with_target: bool) -> list[dict[str, Any]]:
    """60 ordinary people (seeded), and the target: one heavy person's day in LU."""
    rng = Random(8)
    rows = []
    for person in range(60):
        country = rng.choice(["FR", "DE", "IT"])
        for n in range(rng.randint(1, 40)):
            rows.append(
                fact(
                    DAY + timedelta(hours=rng.randrange(24)),
                    subject_key=f"p{person}",
                    country=country,
                    type=rng.choice(["request", "page_view", "upload"]),
                    event_key=f"p{person}-{n}",
                )
            )
    if with_target:
        rows += [
            fact(
                DAY + timedelta(hours=n % 24),
                subject_key="target",
                country="LU",
                device_class="tablet",
                event_key=f"t-{n}",
            )
            for n in range(HEAVY_EVENTS)
        ]
    return rows


def _bounded(with_target: bool) -> BoundedBatch:
    return bound_batch(facts_table(_day(with_target)), DAY.date(), domains(), BOUNDS)


@pytest.fixture(scope="module")
def neighbours() -> tuple[BoundedBatch, BoundedBatch]:
    return _bounded(True), _bounded(False)


@pytest.fixture(scope="module")
def mechanism() -> Any:
    return build_mechanism(BOUNDS, 1, BUDGET.rho * BUDGET.share(0), list(DIMENSIONS))


def _lu() -> int:
    return domains()["country"].values.index("LU")


def _bulk(part: Any, batch: BoundedBatch, field: str, value: int, n: int) -> list[float]:
    """``n`` independent outputs of a dimension's release for one count, in one call of the
    real measurement: the batch's histogram holds that count ``n`` times."""
    dimension, kind = field.split(":")
    histogram = (value,) * n
    if kind == "events":
        replica = dataclasses.replace(
            batch, events_by_value={**batch.events_by_value, dimension: histogram}
        )
    else:
        replica = dataclasses.replace(
            batch, people_by_value={**batch.people_by_value, dimension: histogram}
        )
    return [float(x) for x in part(replica)]


def _scalar_draws(part: Any, batch: BoundedBatch, draws: int) -> list[float]:
    """A one-entry release (a day total): one call per draw."""
    return [float(part(batch)[0]) for _ in range(draws)]


def _tolerance(draws: int) -> float:
    # The same 1e-11 per frequency: t = sqrt(ln(2 / 1e-11) / (2 N)).
    return math.sqrt(math.log(2 / 1e-11) / (2 * draws))


def worst_violation(
    with_target: Sequence[float], without: Sequence[float], epsilon: float, sd: float
) -> float:
    """How far beyond e^epsilon P' + delta (plus the sampling tolerance) any tail set goes,
    both ways round; <= 0 means no tail shows more privacy loss than epsilon allows."""
    t = _tolerance(len(with_target))
    present, absent = np.sort(with_target), np.sort(without)
    centre = (present.mean() + absent.mean()) / 2
    thresholds = centre + np.arange(-12, 13) * sd / 2
    bound = math.exp(epsilon)
    worst = -math.inf
    for draws_one, draws_other in ((present, absent), (absent, present)):
        n_one, n_other = len(draws_one), len(draws_other)
        at_least = [
            1 - np.searchsorted(draws_one, thresholds, "left") / n_one,
            1 - np.searchsorted(draws_other, thresholds, "left") / n_other,
        ]
        at_most = [
            np.searchsorted(draws_one, thresholds, "right") / n_one,
            np.searchsorted(draws_other, thresholds, "right") / n_other,
        ]
        for p, q in (at_least, at_most):
            excess = p - (bound * q + BUDGET.delta + t * (1 + bound))
            worst = max(worst, float(excess.max()))
    return worst


def _epsilon(mechanism: Any, name: str, sensitivity: float) -> float:
    """The epsilon (at the day's delta) of one release alone: its own share of rho."""
    sigma = mechanism.scales[name]
    return epsilon_of((sensitivity / sigma) ** 2 / 2, BUDGET.delta)


@pytest.mark.parametrize("dimension_field", ["country:events", "country:people"])
def test_a_persons_day_moves_its_value_within_the_bound(
    neighbours: tuple[BoundedBatch, BoundedBatch], mechanism: Any, dimension_field: str
) -> None:
    present, absent = neighbours
    dimension, kind = dimension_field.split(":")
    name = events_of(dimension) if kind == "events" else people_of(dimension)
    histogram = present.events_by_value if kind == "events" else present.people_by_value
    other = absent.events_by_value if kind == "events" else absent.people_by_value
    a, b = histogram[dimension][_lu()], other[dimension][_lu()]
    # The bound is what the noise is calibrated to: 32 events, 1 person.
    assert (a - b) == (BOUNDS.events_per_unit if kind == "events" else 1)
    part = mechanism.parts[name]
    sensitivity = BOUNDS.events_per_unit if kind == "events" else BOUNDS.values_per_unit
    epsilon = _epsilon(mechanism, name, sensitivity)
    assert epsilon < BUDGET.epsilon  # one release's share of the day
    draws_present = _bulk(part, present, dimension_field, a, DRAWS[kind])
    draws_absent = _bulk(part, absent, dimension_field, b, DRAWS[kind])
    sd = mechanism.scales[name]
    assert worst_violation(draws_present, draws_absent, epsilon, sd) <= 0
    if kind == "events":
        # Negative control: the unbounded count (all 400 of the person's events) under the
        # same noise is a privacy loss far over epsilon, and the same check sees it.
        unbounded = _bulk(part, present, dimension_field, b + HEAVY_EVENTS, DRAWS[kind])
        assert worst_violation(unbounded, draws_absent, epsilon, sd) > 0


def test_the_day_totals_move_within_the_bound(
    neighbours: tuple[BoundedBatch, BoundedBatch], mechanism: Any
) -> None:
    present, absent = neighbours
    assert present.events_total - absent.events_total == BOUNDS.events_per_unit
    assert present.units - absent.units == 1
    for name, _field, sensitivity in (
        (EVENTS_TOTAL, "events_total", BOUNDS.events_per_unit),
        (PEOPLE_TOTAL, "units", 1),
    ):
        part = mechanism.parts[name]
        # One call per draw: fewer draws, and the tolerance widens to keep 1e-11 per set.
        with_target = _scalar_draws(part, present, SCALAR_DRAWS)
        without = _scalar_draws(part, absent, SCALAR_DRAWS)
        epsilon = _epsilon(mechanism, name, sensitivity)
        assert worst_violation(with_target, without, epsilon, mechanism.scales[name]) <= 0
