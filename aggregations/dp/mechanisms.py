"""The noise of one batch's release, built with OpenDP (https://opendp.org).

Every released number comes from an OpenDP measurement: the discrete Gaussian mechanism on
integer histograms (events, people), or the Gaussian mechanism on real-valued ones when a
people bound of several values per person makes the L2 bound irrational.

No session-length statistic is released. OpenDP's private quantile (an exponential
mechanism over public candidates) was tried for the median: with the share of a day's
budget it could have (about 4 %) and the ~200 sessions a day of the generated traffic, its
10-90 % range over 50 draws was 31 s to 781 s around a true median of 148 s. A DP mean of
clamped lengths is worse (its sensitivity is the clamp). The issue allows "none".
Each measurement is chained after a transformation that reads one aggregate of the
:class:`~aggregations.dp.bounding.BoundedBatch`; the transformation's stability map states
the bound that :mod:`aggregations.dp.bounding` enforced in DuckDB (OpenDP's user
transformations, feature "honest-but-curious": the library trusts that map, and the bounding
tests check it). All of a batch's measurements are then joined by OpenDP's composition, and
the composed measurement's privacy map, not arithmetic of ours, gives what the batch spends:
rho of zero-concentrated DP for ``d_in`` = the privacy units one person can be (the keys per
person). :func:`epsilon_of` converts rho to (epsilon, delta) with OpenDP's conversion.

OpenDP draws its noise from the operating system's CSPRNG: it cannot be seeded, and that is
the point (a seed would be a secret that undoes the noise).
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aggregations.dp.bounding import BoundedBatch, Bounds

EVENTS_TOTAL: Final = "events_total"
EVENTS_BY_HOUR: Final = "events_by_hour"
PEOPLE_TOTAL: Final = "people_total"


def events_of(dimension: str) -> str:
    return f"events:{dimension}"


def people_of(dimension: str) -> str:
    return f"people:{dimension}"


def release_weights(dimensions: Sequence[str]) -> dict[str, float]:
    """Relative weight of each release in a batch's budget.

    People per value get as much as events per value: their noisy count decides which
    values are published at all, and they are the more robust statistic (one person moves
    a people count by 1, an events count by up to the events bound). Measured on a month of
    generated traffic (bench/dp_utility.py, two values per person then): events 3 : people 1
    published 7 % of the country cells with >= 1,000 events, 2 : 2 published 18 % (and 89 %
    of the device cells).
    Hours get little: at a few hundred people a day they are mostly noise whatever they get.
    """
    weights = {EVENTS_TOTAL: 1.0, EVENTS_BY_HOUR: 1.0, PEOPLE_TOTAL: 2.0}
    for dimension in dimensions:
        weights[events_of(dimension)] = 2.0
        weights[people_of(dimension)] = 2.0
    return weights


# Scales are computed from rho and then widened by this factor, so that the library's
# privacy map (which rounds conservatively) never reports a hair more than was planned.
_SAFETY: Final = 1 + 1e-9


@functools.cache
def opendp_library() -> Any:
    """The parts of OpenDP used here, under the names ``opendp.prelude`` gives them (``dp.t``,
    ``dp.m``, ``dp.c``, the domains, metrics, measures and types).

    Not ``opendp.prelude`` itself: it also imports the extras (scikit-learn, NumPy, Polars
    and context helpers), about a tenth of a second of every publish process for nothing
    used here."""
    import opendp.combinators
    import opendp.domains
    import opendp.measurements
    import opendp.measures
    import opendp.metrics
    import opendp.mod
    import opendp.transformations
    import opendp.typing

    # contrib: the Gaussian mechanisms and composition; honest-but-curious: user
    # transformations (our stability maps) and the measurement behind epsilon_of.
    opendp.mod.enable_features("contrib", "honest-but-curious")
    names: dict[str, Any] = {}
    for module in (opendp.domains, opendp.metrics, opendp.measures):
        names |= {name: getattr(module, name) for name in module.__all__}
    return types.SimpleNamespace(
        **names,
        i64=opendp.typing.i64,
        t=opendp.transformations,
        m=opendp.measurements,
        c=opendp.combinators,
        enable_features=opendp.mod.enable_features,
    )


@dataclass(frozen=True)
class BatchMechanism:
    """The composed measurement of one batch and the noise scale of each release."""

    measurement: Any  # opendp Measurement: BoundedBatch -> list of outputs, in `names` order
    names: tuple[str, ...]
    # The composed parts, each BoundedBatch -> one release (sampled one by one, see sample()).
    parts: dict[str, Any]
    # Standard deviation of the noise of each release (histograms: of each entry).
    scales: dict[str, float]
    keys_per_person: int
    # The per-unit L2 bound of each release, as its transformation's stability map states it.
    per_unit: dict[str, float]

    @property
    def rho(self) -> float:
        """What the batch spends, by OpenDP's privacy map of the composition."""
        return float(self.measurement.map(self.keys_per_person))

    def invoke(self, batch: BoundedBatch) -> dict[str, Any]:
        """Every release of the batch, drawn at once."""
        return dict(zip(self.names, self.measurement(batch), strict=True))

    def sample(self, batch: BoundedBatch, names: Sequence[str]) -> dict[str, Any]:
        """The releases ``names`` of the batch (each part of the composition, invoked)."""
        return {name: self.parts[name](batch) for name in names}

    def sample_entries(
        self, batch: BoundedBatch, dimension: str, indices: Sequence[int]
    ) -> list[int]:
        """Events of the given values of ``dimension``, drawn with the very noise (scale)
        of its ``events_of(dimension)`` part, from an OpenDP measurement of the sub-vector.

        Its transformation keeps the part's stability map: a sub-vector of a histogram has
        an L2 norm no larger than the histogram's. Drawing only the entries that will be
        published gives them exactly the distribution they have when the whole vector is
        drawn and the rest dropped, so what is published is a post-processing of the
        composed measurement, whose map is what the batch spends (aggregations/dp/
        release.py, "Drawing only what is published").
        """
        if not indices:
            return []
        dp = opendp_library()
        name = events_of(dimension)
        space = (dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l2_distance(T=dp.i64))
        chosen = tuple(indices)
        read = dp.t.make_user_transformation(
            *_batch_space(),
            *space,
            function=lambda b: [b.events_by_value[dimension][i] for i in chosen],
            stability_map=lambda d_in, s=int(self.per_unit[name]): s * d_in,
        )
        measurement = read >> dp.m.then_gaussian(scale=self.scales[name])
        return [int(x) for x in measurement(batch)]


def _batch_space() -> tuple[Any, Any]:
    dp = opendp_library()
    return (
        dp.user_domain("SieveBoundedBatch", lambda x: isinstance(x, BoundedBatch)),
        dp.symmetric_distance(),
    )


def build_mechanism(
    bounds: Bounds, keys_per_person: int, rho: float, dimensions: Sequence[str]
) -> BatchMechanism:
    """The measurement releasing every number of a batch for a total of ``rho`` (zCDP).

    Built once per (bounds, keys per person, rho, dimensions) and reused: the measurements
    hold no data, and building one costs several milliseconds (a batch of every day of a
    year reuses the same one)."""
    return _build(bounds, keys_per_person, rho, tuple(dimensions))


@functools.lru_cache(maxsize=32)
def _build(
    bounds: Bounds, keys_per_person: int, rho: float, dimensions: tuple[str, ...]
) -> BatchMechanism:
    if rho <= 0:
        raise ValueError("a batch needs a positive budget")
    dp = opendp_library()
    weights = release_weights(dimensions)
    total_weight = sum(weights.values())
    rhos = {name: rho * weight / total_weight for name, weight in weights.items()}
    batch_space = _batch_space()
    int_vectors = (dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l2_distance(T=dp.i64))
    real_vectors = (
        dp.vector_domain(dp.atom_domain(T=float, nan=False)),
        dp.l2_distance(T=float),
    )
    m = keys_per_person

    def gaussian(
        space: tuple[Any, Any],
        read: Callable[[BoundedBatch], list[Any]],
        per_unit: float,
        name: str,
    ) -> tuple[Any, float]:
        # rho = (sensitivity / sigma)^2 / 2 for the (discrete) Gaussian mechanism.
        sigma = per_unit * m / math.sqrt(2 * rhos[name]) * _SAFETY
        stability = int(per_unit) if space is int_vectors else per_unit
        read_space = dp.t.make_user_transformation(
            *batch_space,
            *space,
            function=read,
            stability_map=lambda d_in, s=stability: s * d_in,
        )
        return read_space >> dp.m.then_gaussian(scale=sigma), sigma

    built: dict[str, tuple[Any, float]] = {
        EVENTS_TOTAL: gaussian(
            int_vectors, lambda b: [b.events_total], bounds.events_per_unit, EVENTS_TOTAL
        ),
        EVENTS_BY_HOUR: gaussian(
            int_vectors, lambda b: list(b.events_by_hour), bounds.events_per_unit, EVENTS_BY_HOUR
        ),
        PEOPLE_TOTAL: gaussian(int_vectors, lambda b: [b.units], 1, PEOPLE_TOTAL),
    }
    # People per value: an L2 bound of sqrt(values per unit). When it is a whole number the
    # counts take OpenDP's discrete Gaussian (exact, and ~2.5x faster to sample than the
    # real-valued one, which an irrational bound needs).
    root = math.isqrt(bounds.values_per_unit)
    whole = root * root == bounds.values_per_unit
    people_space = int_vectors if whole else real_vectors
    people_bound = float(root) if whole else math.sqrt(bounds.values_per_unit)
    read_people = _people_counts if whole else _people_by_value
    for dimension in dimensions:
        built[events_of(dimension)] = gaussian(
            int_vectors,
            functools.partial(_events_by_value, dimension),
            bounds.events_per_unit,
            events_of(dimension),
        )
        built[people_of(dimension)] = gaussian(
            people_space,
            functools.partial(read_people, dimension),
            people_bound,
            people_of(dimension),
        )
    names = tuple(built)
    composed = dp.c.make_composition([built[name][0] for name in names])
    scales = {name: built[name][1] for name in names}
    parts = {name: built[name][0] for name in names}
    per_unit = {name: float(bounds.events_per_unit) for name in names if name.startswith("events")}
    per_unit |= {name: people_bound for name in names if name.startswith("people:")}
    per_unit[PEOPLE_TOTAL] = 1.0
    return BatchMechanism(composed, names, parts, scales, m, per_unit)


def _events_by_value(dimension: str, batch: BoundedBatch) -> list[int]:
    return list(batch.events_by_value[dimension])


def _people_counts(dimension: str, batch: BoundedBatch) -> list[int]:
    return list(batch.people_by_value[dimension])


def _people_by_value(dimension: str, batch: BoundedBatch) -> list[float]:
    return [float(p) for p in batch.people_by_value[dimension]]


@functools.cache
def epsilon_of(rho: float, delta: float) -> float:
    """The epsilon of a rho-zCDP release at ``delta`` (OpenDP's conversion)."""
    if rho == 0:
        return 0.0
    dp = opendp_library()
    # A measurement whose privacy map is exactly rho: the conversion only reads the map.
    exact = dp.m.make_user_measurement(
        dp.atom_domain(T=bool),
        dp.symmetric_distance(),
        dp.zero_concentrated_divergence(),
        function=lambda x: x,
        privacy_map=lambda d_in: rho * d_in * d_in,
    )
    return float(dp.c.make_zCDP_to_approxDP(exact).map(1).epsilon(delta))


# How close to the largest rho :func:`rho_for` must be (relative): a budget a billionth
# smaller is the same budget.
RHO_TOLERANCE: Final = 1e-9


@functools.cache
def rho_for(epsilon: float, delta: float) -> float:
    """The largest rho (to within :data:`RHO_TOLERANCE`, relative) whose :func:`epsilon_of`
    at ``delta`` is at most ``epsilon``.

    OpenDP's conversion decides, in two calls: on the closed form's value
    (:func:`rho_closed_form`), and just above it. A bisection over OpenDP's conversion alone
    takes ~60 calls (half a second of every publish process) and is the fallback should the
    two ever disagree by more than the tolerance.
    """
    closed = rho_closed_form(epsilon, delta)
    # The closed form lands within a few units in the last place of OpenDP's answer, on
    # either side: step down until OpenDP agrees it fits.
    for rho in (closed, closed * (1 - 1e-15), closed * (1 - 1e-13), closed * (1 - 1e-11)):
        if rho > 0 and epsilon_of(rho, delta) <= epsilon:
            if epsilon_of(rho * (1 + RHO_TOLERANCE), delta) > epsilon:
                return rho
            break
    return rho_by_bisection(epsilon, delta)


def rho_by_bisection(epsilon: float, delta: float) -> float:
    """The largest rho whose :func:`epsilon_of` at ``delta`` is at most ``epsilon``, by
    bisection over OpenDP's conversion."""
    low, high = 0.0, epsilon  # epsilon_of(rho) >= rho, so rho <= epsilon
    for _ in range(80):
        middle = (low + high) / 2
        if epsilon_of(middle, delta) <= epsilon:
            low = middle
        else:
            high = middle
    return low


def rho_closed_form(epsilon: float, delta: float) -> float:
    """The conversion OpenDP's :func:`epsilon_of` computes, inverted (pure Python).

    rho-zCDP implies (epsilon, delta)-DP for every order alpha > 1 with epsilon = alpha rho
    + (ln(1/delta) + (alpha - 1) ln(1 - 1/alpha) - ln(alpha)) / (alpha - 1) (Canonne,
    Kamath and Steinke 2020, "The Discrete Gaussian for Differential Privacy", Proposition
    12 and Corollary 13; OpenDP's bound). Solved for rho, the largest rho for ``epsilon``
    is the maximum over alpha of (epsilon - that fraction) / alpha, found by a ternary
    search over log(alpha - 1) (the function rises then falls there).
    """
    log_inverse_delta = -math.log(delta)

    def rho_at(log_order: float) -> float:
        alpha = 1 + math.exp(log_order)
        loss = log_inverse_delta + (alpha - 1) * math.log1p(-1 / alpha) - math.log(alpha)
        return (epsilon - loss / (alpha - 1)) / alpha

    low, high = -30.0, 30.0
    for _ in range(200):
        left, right = low + (high - low) / 3, high - (high - low) / 3
        if rho_at(left) < rho_at(right):
            low = left
        else:
            high = right
    return max(0.0, rho_at((low + high) / 2))
