"""A differencing attack on the batches whose noise is drawn together in threads
(``aggregations.analytics.draw_noise``): their releases must differ like independent draws.

An attacker who sees two releases of the same true counts learns the difference of their
noises. Were threads to share or reuse a sampler's state, that difference would be 0, or
smaller than two independent draws allow. Here one bounded batch is released in groups of
:data:`GROUP`: one ``draw_noise`` call of 8 identical batches (the threaded path), or 8
calls of one batch (the one-by-one path, the reference). The cells looked at are those that
are one OpenDP draw each, published as drawn: the day's people total and the events and
people of every event type (a whole domain, always published; every true count is 16
standard deviations above zero: a draw clipped at zero has a probability below 1e-50). The
noise of such a cell is the discrete Gaussian of its measurement's scale
(``build_mechanism``), whose probabilities are computed exactly here. Per path, over every
group and cell:

- **equal pairs**: how many of the 28 pairs of a group publish the same number, against
  the probability that two independent draws are equal (sum of p(k)^2);
- **differences**: the squares of the pairs' differences over 2 sigma^2 (the variance of
  the difference of two independent draws), too small or too large;
- **each release**: its noise (published minus true count) over sigma, and its square:
  the releases of the threaded path are distributed like the one-by-one path's because
  both are checked against the same exact distribution.

OpenDP cannot be seeded, so each check bounds its own error. A statistic is a sum over
independent (group, cell) parts; a part averages over the 28 pairs of a group, which are
not independent, but by Hoeffding (1963, section 5) the moment generating function of an
average over all pairs is at most that of an average over 4 disjoint pairs (Jensen's
inequality over the ways to split the group into disjoint pairs). So Chernoff's bound
P(T >= t) <= exp(-s t) E[exp(s T)], with the exact distribution of one draw, bounds the
probability of a false failure of each check by :data:`ALPHA` (1e-8); the file runs 14
checks on real draws (7 a path: equal pairs too many; each other statistic too small or
too large): a false failure has a probability below 1.4e-7. With 16 groups of 8, a check
fails when the variance of the differences is below 78 % or above 125 % of 2 sigma^2, or
equal pairs are 1.57 times too many. A negative control reuses one draw for every batch of
a call and must fail.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations

import numpy as np
import pytest

import aggregations.analytics
from aggregations.analytics import draw_noise
from aggregations.dp.bounding import BoundedBatch, Bounds, bound_batch
from aggregations.dp.domains import domains
from aggregations.dp.mechanisms import PEOPLE_TOTAL, build_mechanism, events_of, people_of
from aggregations.dp.release import Release
from schemas.events import EVENT_TYPES
from tests.fixtures.facts import fact, facts_table

DAY = datetime(2026, 11, 1, tzinfo=UTC)
BOUNDS = Bounds(events_per_unit=2)
RHO = 1.0  # sigma 2.45 for people, 4.9 for events: small, so that equal draws are common
GROUP = 8  # releases of the same counts compared with each other
GROUPS = 16  # ~100 ms a release: 128 releases a path
ALPHA = 1e-8  # the largest probability of a false failure, per check


def _batch() -> BoundedBatch:
    """40 people per event type, 2 events each (the bound): every count is exact."""
    rows = [
        fact(DAY, subject_key=f"{kind}-{person}", type=kind, event_key=f"{kind}-{person}-{n}")
        for kind in EVENT_TYPES
        for person in range(40)
        for n in range(2)
    ]
    return bound_batch(facts_table(rows), DAY.date(), domains(), BOUNDS)


def _noise(release: Release, batch: BoundedBatch) -> dict[str, int]:
    """Published minus true count of each one-draw cell of a release, by cell."""
    types = domains()["type"].values
    noise = {}
    for cell in release.cells:
        if cell.grain == "day" and cell.dimension == "total":
            assert cell.people is not None
            noise[PEOPLE_TOTAL] = cell.people - batch.units
        elif cell.dimension == "type":
            assert cell.value is not None and cell.people is not None
            i = types.index(cell.value)
            noise[events_of(cell.value)] = cell.events - batch.events_by_value["type"][i]
            noise[people_of(cell.value)] = cell.people - batch.people_by_value["type"][i]
    assert len(noise) == 1 + 2 * len(types)
    return noise


def _scales(batch: BoundedBatch) -> dict[str, float]:
    """The sigma of each cell of :func:`_noise`, from the batch's own measurement."""
    scales = build_mechanism(BOUNDS, batch.keys_per_person, RHO, list(domains())).scales
    by_cell = {PEOPLE_TOTAL: scales[PEOPLE_TOTAL]}
    for value in domains()["type"].values:
        by_cell[events_of(value)] = scales[events_of("type")]
        by_cell[people_of(value)] = scales[people_of("type")]
    return by_cell


@dataclass(frozen=True, eq=False)
class Law:
    """A finite distribution: values and their probabilities (none zero)."""

    values: np.ndarray
    probabilities: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, probabilities: np.ndarray) -> Law:
        """Values whose probability a float holds (the far tails underflow to 0)."""
        kept = probabilities > 0
        return cls(values[kept].astype(float), probabilities[kept])

    def log_mgf(self, u: float) -> float:
        """log E[exp(u X)], in log space (the squares' tails are far beyond a float)."""
        exponents = np.log(self.probabilities) + u * self.values
        top = float(exponents.max())
        return top + math.log(float(np.exp(exponents - top).sum()))

    def mean(self) -> float:
        return float((self.values * self.probabilities).sum())


def _discrete_gaussian(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenDP's integer noise: p(k) proportional to exp(-k^2 / (2 sigma^2)), on |k| <= 40
    sigma (the rest weighs below e^-800: nothing a float holds)."""
    reach = math.ceil(40 * sigma)
    support = np.arange(-reach, reach + 1)
    weights = np.exp(-(support.astype(float) ** 2) / (2 * sigma**2))
    return support, weights / weights.sum()


def _laws(sigma: float) -> dict[str, Law]:
    """The exact law of each statistic's part, for a cell of scale ``sigma``."""
    support, p = _discrete_gaussian(sigma)
    difference = np.convolve(p, p)  # X - X' of two independent draws, on -2 reach..2 reach
    spread = np.arange(-2 * support[-1], 2 * support[-1] + 1)
    equal = float(difference[spread == 0][0])
    return {
        "equal": Law.of(np.array([0.0, 1.0]), np.array([1 - equal, equal])),
        "difference": Law.of(spread**2 / (2 * sigma**2), difference),
        "noise": Law.of(support / sigma, p),
        "square": Law.of(support**2 / sigma**2, p),
    }


# For each statistic: the parts' variables and the number of independent copies an average
# of a part is at least as concentrated as (4 disjoint pairs of 8, or 8 releases), and how
# far the Chernoff parameter may go per copy (the squares' mgf ends at 1/2 of a unit).
_COPIES = {"equal": GROUP // 2, "difference": GROUP // 2, "noise": GROUP, "square": GROUP}
_REACH = {"equal": (0.0, 40.0), "difference": (60.0, 0.4), "noise": (8.0, 8.0)}
_REACH["square"] = _REACH["difference"]


def _part(statistic: str, noises: Sequence[int], sigma: float) -> float:
    """One (group, cell) part: an average over the group's pairs, or over its releases."""
    pairs = list(combinations(noises, 2))
    if statistic == "equal":
        return sum(a == b for a, b in pairs) / len(pairs)
    if statistic == "difference":
        return sum((a - b) ** 2 for a, b in pairs) / len(pairs) / (2 * sigma**2)
    if statistic == "noise":
        return sum(noises) / len(noises) / sigma
    return sum(x * x for x in noises) / len(noises) / sigma**2


def _tail(statistic: str, observed: float, laws: Sequence[Law], upper: bool) -> float:
    """Chernoff's bound on P(T >= observed) (``upper``) or P(T <= observed), for T the sum
    of parts each as concentrated as an average of ``_COPIES`` draws of its law."""
    copies = _COPIES[statistic]
    reach = _REACH[statistic][1 if upper else 0]
    if reach == 0:
        return 1.0
    sign = 1.0 if upper else -1.0
    counts = Counter(laws)
    best = 0.0  # log of the bound: s = 0 gives 1
    for u in np.geomspace(1e-4, reach, 400):
        log_bound = -sign * copies * u * observed
        log_bound += copies * sum(n * law.log_mgf(sign * u) for law, n in counts.items())
        best = min(best, log_bound)
    return math.exp(best)


def verdicts(groups: Sequence[Sequence[Release]], batch: BoundedBatch) -> dict[str, str]:
    """The checks that fail, each with what it saw: empty when the releases differ like
    independent draws of their measurements' noise."""
    scales = _scales(batch)
    laws = {sigma: _laws(sigma) for sigma in set(scales.values())}
    noises = [[_noise(release, batch) for release in group] for group in groups]
    failed = {}
    for statistic in ("equal", "difference", "noise", "square"):
        observed, parts = 0.0, []
        for group in noises:
            for cell, sigma in scales.items():
                observed += _part(statistic, [n[cell] for n in group], sigma)
                parts.append(laws[sigma][statistic])
        expected = sum(law.mean() for law in parts)
        for upper in (False, True):
            bound = _tail(statistic, observed, parts, upper)
            if bound < ALPHA:
                side = "above" if upper else "below"
                failed[f"{statistic} {side}"] = (
                    f"{observed:.1f} against {expected:.1f} expected: P <= {bound:.1e}"
                )
    return failed


def _threaded(batch: BoundedBatch) -> list[Release]:
    return draw_noise([(batch, RHO)] * GROUP, BOUNDS)


def _one_by_one(batch: BoundedBatch) -> list[Release]:
    return [draw_noise([(batch, RHO)], BOUNDS)[0] for _ in range(GROUP)]


def _watch_threads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names of the threads that release a batch, from now on."""
    names: set[str] = set()
    release = aggregations.analytics.release_bounded

    def watched(*args: object, **kwargs: object) -> Release:
        names.add(threading.current_thread().name)
        return release(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(aggregations.analytics, "release_bounded", watched)
    return names


@pytest.mark.parametrize(
    ("draw", "thread_prefix"), [(_threaded, "sieve-dp"), (_one_by_one, "MainThread")]
)
def test_releases_of_the_same_counts_differ_like_independent_draws(
    monkeypatch: pytest.MonkeyPatch,
    draw: Callable[[BoundedBatch], list[Release]],
    thread_prefix: str,
) -> None:
    batch = _batch()
    threads = _watch_threads(monkeypatch)
    groups = [draw(batch) for _ in range(GROUPS)]
    assert threads and all(name.startswith(thread_prefix) for name in threads)
    assert verdicts(groups, batch) == {}


def test_a_release_that_reuses_one_draw_for_every_batch_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Negative control: the checks see threads that hand every batch the same draw."""
    batch = _batch()
    release = aggregations.analytics.release_bounded
    first: list[Release] = []
    lock = threading.Lock()

    def reused(*args: object, **kwargs: object) -> Release:
        with lock:
            if not first:
                first.append(release(*args, **kwargs))  # type: ignore[arg-type]
            return first[0]

    monkeypatch.setattr(aggregations.analytics, "release_bounded", reused)
    failed = verdicts([_threaded(batch) for _ in range(3)], batch)
    assert {"equal above", "difference below"} <= set(failed)
