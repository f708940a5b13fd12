"""The privacy budget of a day, its schedule of batches, and the accountant's check (pure).

A day has ``epsilon`` and ``delta`` per person (settings). They are turned into one rho of
zero-concentrated DP (:func:`~aggregations.dp.mechanisms.rho_for`: the largest rho whose
conversion at ``delta`` is within ``epsilon``), because zCDP composes by adding rho, exactly
and without a per-release delta. The day's rho is split over *slots*, on a schedule that
depends only on time, never on the data:

- slot 0 is due when the day closes (its end + the grace period, by the watermark), with
  ``1 - late_share`` of the rho (all of it when there are no late slots);
- slot n (1..late_batches) is due ``n * late_interval`` later, with ``late_share /
  late_batches``.

A publish run releases one batch per day with every due slot not yet released, spending
the sum of their shares, over the facts no earlier batch covered (none, possibly: a late
slot is released whether or not late facts came, so that its existence says nothing).
Facts committed after the last slot are never in the analytics (publish reports them).

The accountant refuses any batch after which the day's recorded rho, converted at ``delta``,
would exceed ``epsilon`` (a ledger written under a larger budget, say): the batch is not
published and the run says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from aggregations.dp.mechanisms import epsilon_of, rho_for
from aggregations.windows import DAY, day_start

# Tolerance of the accountant's comparison: OpenDP's conversion rounds up in the last bits.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Budget:
    """A day's privacy budget per person and its schedule (see the module docstring)."""

    epsilon: float
    delta: float
    late_batches: int = 1
    late_share: float = 0.1
    late_interval: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if self.epsilon <= 0 or not 0 < self.delta < 1:
            raise ValueError("epsilon must be positive and delta within (0, 1)")
        if self.late_batches < 0 or not 0 <= self.late_share < 1:
            raise ValueError("late_batches must be >= 0 and late_share within [0, 1)")
        if self.late_interval <= timedelta(0):
            raise ValueError("late_interval must be positive")

    @property
    def rho(self) -> float:
        """The day's rho: the most zCDP whose conversion at ``delta`` fits ``epsilon``."""
        return rho_for(self.epsilon, self.delta)

    @property
    def slots(self) -> int:
        return 1 + self.late_batches

    def share(self, slot: int) -> float:
        """The share of the day's rho slot ``slot`` spends."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is not in 0..{self.slots - 1}")
        if self.late_batches == 0:
            return 1.0
        if slot == 0:
            return 1.0 - self.late_share
        return self.late_share / self.late_batches

    def due(self, slot: int, day: date, mark: datetime, grace: timedelta) -> bool:
        """Whether ``slot`` of ``day`` is due once the watermark is ``mark``."""
        return mark >= day_start(day) + DAY + grace + slot * self.late_interval

    def due_slots(
        self, day: date, mark: datetime, grace: timedelta, released: frozenset[int]
    ) -> tuple[int, ...]:
        return tuple(
            slot
            for slot in range(self.slots)
            if slot not in released and self.due(slot, day, mark, grace)
        )


@dataclass(frozen=True)
class Verdict:
    """The accountant's answer for one batch: the day's epsilon after it, and a refusal."""

    epsilon_after: float
    refusal: str | None


def check(budget: Budget, spent_rho: float, batch_rho: float) -> Verdict:
    """May a batch spending ``batch_rho`` be released on a day that spent ``spent_rho``?"""
    after = epsilon_of(spent_rho + batch_rho, budget.delta)
    if after > budget.epsilon * (1 + _TOLERANCE):
        return Verdict(
            after,
            f"over budget: the day would reach epsilon {after:.4g} at delta {budget.delta:g},"
            f" over its {budget.epsilon:g}",
        )
    return Verdict(after, None)
