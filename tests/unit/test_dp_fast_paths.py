"""The faster paths of a batch's release (issue 10) keep what it computes and spends: the
top value of a person by one aggregate, and batches drawn together in threads."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aggregations.analytics import draw_noise
from aggregations.dp.bounding import BoundedBatch, Bounds, bound_batch
from aggregations.dp.domains import domains
from aggregations.dp.release import release_bounded
from aggregations.schemas import DIMENSIONS
from tests.fixtures.facts import fact, facts_table

DAY = datetime(2026, 11, 1, tzinfo=UTC)


def _reference_people(rows: list[dict[str, Any]], dimension: str) -> list[int]:
    """One value per person: the one with most of its events, ties to the first value of
    the domain (no person here has more events than the bound, so all are kept)."""
    domain = domains()[dimension]
    by_person: dict[str, Counter[int]] = {}
    for row in rows:
        value = row[dimension]
        index = domain.values.index(value if value in domain.values else domain.fallback)
        by_person.setdefault(row["subject_key"], Counter())[index] += 1
    people = [0] * len(domain.values)
    for counts in by_person.values():
        people[min(counts, key=lambda i: (-counts[i], i))] += 1
    return people


def test_each_person_counts_under_their_top_value_ties_to_the_first() -> None:
    draw = random.Random(7)
    browsers = ["Chrome", "Firefox", "Safari", "Edge", "Not A Browser"]
    countries = ["DE", "FR", "US", "ZZ"]
    rows = [
        fact(
            DAY + timedelta(hours=draw.randrange(24)),
            subject_key=f"p{draw.randrange(60)}",
            event_key=f"e{i}",
            browser_family=draw.choice(browsers),
            country=draw.choice(countries),
        )
        for i in range(600)
    ]
    # A tie the reference must break by domain order: Chrome before Firefox.
    rows += [fact(DAY, subject_key="tie", event_key=f"t{b}", browser_family=b, country="FR")
             for b in ("Firefox", "Chrome")]  # fmt: skip
    batch = bound_batch(facts_table(rows), DAY.date(), domains(), Bounds(events_per_unit=64))
    for dimension in ("browser_family", "country"):
        assert list(batch.people_by_value[dimension]) == _reference_people(rows, dimension)
    assert batch.units == 61


def _batches() -> list[tuple[BoundedBatch, float]]:
    dims = domains()
    made = []
    for n, rho in enumerate((0.02, 0.005, 0.01, 0.02)):
        rows = [fact(DAY, subject_key=f"p{p}", event_key=f"{n}-{p}") for p in range(20 + n)]
        made.append((bound_batch(facts_table(rows), DAY.date(), dims, Bounds(32)), rho))
    return made


def _parameters(release: Any) -> tuple[Any, ...]:
    """What a release's distribution is set by: what it spent and the noise scales of its
    totals (which values and "other" cells are published depends on the draws)."""
    scales = [
        (c.grain, c.hour, c.events_sd, c.people_sd) for c in release.cells if c.cell == "total"
    ]
    return release.day, release.rho, release.keys_per_person, release.facts, tuple(scales)


def _value_scales(release: Any) -> dict[str, set[tuple[float, float | None]]]:
    scales: dict[str, set[tuple[float, float | None]]] = {}
    for c in release.cells:
        if c.cell == "value":
            scales.setdefault(c.dimension, set()).add((c.events_sd, c.people_sd))
    return scales


def test_batches_drawn_together_spend_and_scale_as_drawn_one_by_one() -> None:
    batches = _batches()
    together = draw_noise(batches, Bounds(32))
    alone = [release_bounded(batch, rho, Bounds(32), domains()) for batch, rho in batches]
    assert len(together) == len(batches)
    for drawn, expected, (batch, rho) in zip(together, alone, batches, strict=True):
        assert _parameters(drawn) == _parameters(expected)
        mine, theirs = _value_scales(drawn), _value_scales(expected)
        assert all(len(scales) == 1 for scales in mine.values())  # one scale per dimension
        assert all(mine[d] == theirs[d] for d in set(mine) & set(theirs))
        assert "type" in mine  # a whole domain: always published
        assert drawn.rho == pytest.approx(rho, rel=1e-6) and drawn.rho <= rho
        assert drawn.facts == batch.facts  # in the order given
        assert set(mine) <= set(DIMENSIONS)
