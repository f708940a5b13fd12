"""The DP core piece by piece: domains, contribution bounds, the library's privacy maps,
the day's budget and schedule, the accountant, and post-processing."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from aggregations.dp.bounding import BoundedBatch, Bounds, bound_batch
from aggregations.dp.budget import Budget, check
from aggregations.dp.domains import domains
from aggregations.dp.mechanisms import (
    EVENTS_BY_HOUR,
    EVENTS_TOTAL,
    PEOPLE_TOTAL,
    RHO_TOLERANCE,
    build_mechanism,
    epsilon_of,
    events_of,
    people_of,
    release_weights,
    rho_by_bisection,
    rho_closed_form,
    rho_for,
)
from aggregations.dp.release import fit_to_total, post_process, release_batch, threshold_sds
from aggregations.schemas import DIMENSIONS
from tests.fixtures.facts import fact, facts_table

DAY = datetime(2026, 11, 1, tzinfo=UTC)
GRACE = timedelta(hours=1)


def _index(dimension: str, value: str) -> int:
    return domains()[dimension].values.index(value)


# --- domains -------------------------------------------------------------------------------


def test_domains_are_public_and_hold_what_the_worker_writes() -> None:
    dims = domains()
    assert list(dims) == list(DIMENSIONS)
    assert len(dims["country"].values) == 26 * 26 and dims["country"].fallback == "ZZ"
    assert {"Chrome", "Firefox", "Other"} <= set(dims["browser_family"].values)
    assert {"Android", "Linux", "Other"} <= set(dims["os_family"].values)
    assert set(dims["type"].values) >= {"request", "login", "logout", "upload", "payment"}


# --- bounding ------------------------------------------------------------------------------


def _batch(rows: list[dict[str, Any]], bounds: Bounds) -> BoundedBatch:
    return bound_batch(facts_table(rows), DAY.date(), domains(), bounds)


def test_a_heavy_person_counts_at_most_the_bound_everywhere() -> None:
    heavy = [
        fact(DAY + timedelta(hours=h % 24), subject_key="heavy", country="FR", type="request")
        for h in range(500)
    ]
    light = [fact(DAY, subject_key=f"p{p}", country="DE") for p in range(10)]
    batch = _batch(heavy + light, Bounds(events_per_unit=32))
    assert batch.facts == 510 and batch.units == 11
    assert batch.events_total == 32 + 10
    assert sum(batch.events_by_hour) == 42  # the hours partition the same kept events
    fr = batch.events_by_value["country"][_index("country", "FR")]
    assert fr == 32 and batch.events_by_value["country"][_index("country", "DE")] == 10
    for dimension in DIMENSIONS:  # every dimension partitions the same kept events
        assert sum(batch.events_by_value[dimension]) == 42


def test_people_count_once_in_at_most_the_bounded_number_of_values() -> None:
    # One person on four browsers (3 events on Chrome, 2 on Firefox, 1 on each other).
    rows = [
        fact(DAY, subject_key="p", browser_family=browser)
        for browser in ["Chrome"] * 3 + ["Firefox"] * 2 + ["Safari", "Edge"]
    ]
    batch = _batch(rows, Bounds(events_per_unit=32, values_per_unit=2))
    people = batch.people_by_value["browser_family"]
    assert sum(people) == 2  # two values at most
    assert people[_index("browser_family", "Chrome")] == 1
    assert people[_index("browser_family", "Firefox")] == 1  # the two with most events


def test_events_without_a_user_are_their_accounts_unit() -> None:
    rows = [fact(DAY, account_id="a1", subject_key=None, event_key=f"a1-{i}") for i in range(50)]
    rows += [fact(DAY, account_id="a2", subject_key=None, event_key=f"a2-{i}") for i in range(3)]
    batch = _batch(rows, Bounds(events_per_unit=8))
    # Two units (one per account), each bounded like a person.
    assert batch.units == 2 and batch.events_total == 8 + 3


def test_values_outside_the_domain_count_under_the_fallback() -> None:
    rows = [fact(DAY, subject_key="p", browser_family="Brand New Browser 9000")]
    batch = _batch(rows, Bounds(events_per_unit=4))
    assert batch.events_by_value["browser_family"][_index("browser_family", "Other")] == 1


def test_userless_events_are_one_account_unit_unless_sessions_are_chosen() -> None:
    # A replayed access log: one account, no users, 20 sessions of 10 events each.
    rows = [
        fact(DAY + timedelta(minutes=e), subject_key=None, unit_key=f"session-{s}")
        for s in range(20)
        for e in range(10)
    ]
    rows += [fact(DAY, subject_key="person", unit_key="person") for _ in range(3)]
    by_account = _batch(rows, Bounds(events_per_unit=32))
    assert by_account.units == 2 and by_account.events_total == 32 + 3
    by_session = _batch(rows, Bounds(events_per_unit=32, userless_unit="session"))
    assert by_session.units == 21 and by_session.events_total == 200 + 3
    # Facts from before unit_key (null): the account's unit, whatever the choice.
    old = [{**row, "unit_key": None} for row in rows]
    assert _batch(old, Bounds(events_per_unit=32, userless_unit="session")).units == 2
    with pytest.raises(ValueError, match="unknown unit"):
        Bounds(events_per_unit=32, userless_unit="ip")  # type: ignore[arg-type]


def test_a_key_rotation_in_the_day_doubles_every_bound() -> None:
    # The same people under two pseudonymization keys: each is two subject keys.
    rows = [fact(DAY, subject_key=f"k1-p{p}", key_id="k1") for p in range(5)]
    rows += [fact(DAY, subject_key=f"k2-p{p}", key_id="k2") for p in range(5)]
    batch = _batch(rows, Bounds(events_per_unit=4))
    assert batch.units == 10 and batch.keys_per_person == 2
    budget = Budget(1.0, 1e-6)
    one_key = build_mechanism(Bounds(4), 1, budget.rho, list(DIMENSIONS))
    two_keys = build_mechanism(Bounds(4), 2, budget.rho, list(DIMENSIONS))
    # The same spend, with twice the noise: 5 people passing as 10 reveal nothing more.
    assert two_keys.rho == pytest.approx(one_key.rho)
    for name, scale in one_key.scales.items():
        assert two_keys.scales[name] == pytest.approx(2 * scale)


# --- the library's accounting --------------------------------------------------------------


def test_the_composed_measurement_spends_exactly_the_batch_budget() -> None:
    rho = 0.02
    mechanism = build_mechanism(Bounds(32), 1, rho, list(DIMENSIONS))
    assert mechanism.rho == pytest.approx(rho, rel=1e-6) and mechanism.rho <= rho
    weights = release_weights(DIMENSIONS)
    share = rho / sum(weights.values())
    # Each Gaussian: rho_i = (sensitivity / sigma)^2 / 2, so sigma = sensitivity / sqrt(2 rho_i).
    expect = {
        EVENTS_TOTAL: 32 / math.sqrt(2 * share * weights[EVENTS_TOTAL]),
        EVENTS_BY_HOUR: 32 / math.sqrt(2 * share * weights[EVENTS_BY_HOUR]),
        PEOPLE_TOTAL: 1 / math.sqrt(2 * share * weights[PEOPLE_TOTAL]),
        events_of("country"): 32 / math.sqrt(2 * share * weights[events_of("country")]),
        people_of("country"): 1 / math.sqrt(2 * share * weights[people_of("country")]),
    }
    for name, sigma in expect.items():
        assert mechanism.scales[name] == pytest.approx(sigma, rel=1e-6)


def test_epsilon_and_rho_convert_both_ways() -> None:
    rho = rho_for(1.0, 1e-6)
    assert epsilon_of(rho, 1e-6) == pytest.approx(1.0, abs=1e-9)
    assert epsilon_of(rho * 1.01, 1e-6) > 1.0
    # The usual bound rho + 2 sqrt(rho ln(1/delta)) is looser than OpenDP's conversion.
    assert epsilon_of(rho, 1e-6) < rho + 2 * math.sqrt(rho * math.log(1e6))


@pytest.mark.parametrize(
    ("epsilon", "delta"),
    [(1.0, 1e-6), (0.1, 1e-9), (0.5, 1e-7), (2.0, 1e-6), (4.0, 1e-5), (10.0, 1e-3), (0.01, 1e-12)],
)
def test_rho_for_is_the_bisection_over_opendps_conversion(epsilon: float, delta: float) -> None:
    # rho_for takes the closed form and lets OpenDP confirm it in two calls; it must be what
    # a bisection over OpenDP's own conversion finds, and fit the budget by OpenDP's word.
    expected = rho_by_bisection(epsilon, delta)
    assert rho_closed_form(epsilon, delta) == pytest.approx(expected, rel=1e-12)
    rho = rho_for(epsilon, delta)
    assert rho == pytest.approx(expected, rel=RHO_TOLERANCE)
    assert epsilon_of(rho, delta) <= epsilon
    assert epsilon_of(rho * (1 + RHO_TOLERANCE), delta) > epsilon


# --- budget, schedule, accountant --------------------------------------------------------


def test_the_schedule_splits_the_day_and_depends_on_time_only() -> None:
    budget = Budget(1.0, 1e-6, late_batches=2, late_share=0.2, late_interval=timedelta(days=1))
    assert [budget.share(s) for s in range(3)] == pytest.approx([0.8, 0.1, 0.1])
    day = DAY.date()
    closed = DAY + timedelta(days=1) + GRACE
    assert budget.due_slots(day, closed - timedelta(seconds=1), GRACE, frozenset()) == ()
    assert budget.due_slots(day, closed, GRACE, frozenset()) == (0,)
    later = closed + timedelta(days=2)
    assert budget.due_slots(day, later, GRACE, frozenset({0})) == (1, 2)
    assert Budget(1.0, 1e-6, late_batches=0).share(0) == 1.0
    with pytest.raises(ValueError):
        budget.share(3)


def test_the_accountant_refuses_what_would_pass_the_days_epsilon() -> None:
    budget = Budget(1.0, 1e-6)
    fine = check(budget, 0.9 * budget.rho, 0.1 * budget.rho)
    assert fine.refusal is None and fine.epsilon_after == pytest.approx(1.0, abs=1e-6)
    over = check(budget, 0.9 * budget.rho, 0.2 * budget.rho)
    assert over.refusal is not None and "over budget" in over.refusal
    assert over.epsilon_after > 1.0


# --- release and post-processing ---------------------------------------------------------


def test_post_processing_makes_hours_add_up_and_children_match_their_parent() -> None:
    rows = [
        fact(DAY + timedelta(hours=p % 5), subject_key=f"p{p}", country="FR" if p < 300 else "DE")
        for p in range(400)
    ]
    release = release_batch(facts_table(rows), DAY.date(), 0.5, Bounds(8), domains())
    cells = release.cells
    (total,) = [c for c in cells if c.grain == "day" and c.dimension == "total"]
    hours = [c for c in cells if c.grain == "hour"]
    assert len(hours) == 24 and all(c.events >= 0 for c in cells)
    # The hours add up to the total exactly, every one of them an integer >= 0.
    assert sum(c.events for c in hours) == total.events
    # The GLS total is more precise than either the total or the hours alone.
    assert total.events_sd < min(c.events_sd for c in hours) * math.sqrt(24)
    country = [c for c in cells if c.dimension == "country"]
    (other,) = [c for c in country if c.cell == "other"]
    values = [c for c in country if c.cell == "value"]
    published = {c.value for c in values}
    # 300 and 100 people pass. A value nobody had passes FALSE_VALUES (0.05) times a batch
    # on average, by design: three of them happen about once in 50,000 runs.
    assert {"FR", "DE"} <= published and len(published - {"FR", "DE"}) <= 2
    assert other.events + sum(c.events for c in values) == total.events
    types = [c for c in cells if c.dimension == "type"]
    assert len(types) == len(domains()["type"].values)  # a small public domain: all of it


def test_fit_to_total_is_the_closest_non_negative_integers_adding_up() -> None:
    assert fit_to_total([10.4, -3.0, 5.6], 16) == [10, 0, 6]
    # Too much noise up: every part comes down by the same amount, none below zero.
    assert fit_to_total([30.0, 20.0, 1.0], 40) == [25, 15, 0]
    assert fit_to_total([1.0, 2.0], 0) == [0, 0]
    assert fit_to_total([], 5) == []
    parts = fit_to_total([0.3] * 10, 3)
    assert sum(parts) == 3 and set(parts) <= {0, 1}


def test_the_people_threshold_controls_noise_only_values() -> None:
    # z grows with the domain so that a batch publishes ~0.05 values nobody had per dimension.
    assert threshold_sds(6) < threshold_sds(71) < threshold_sds(676)
    assert 3.7 < threshold_sds(676) < 3.9
    batch = BoundedBatch(
        day=date(2026, 11, 1),
        facts=0,
        units=0,
        events_total=0,
        events_by_hour=(0,) * 24,
        events_by_value={d: (0,) * len(v.values) for d, v in domains().items()},
        people_by_value={d: (0,) * len(v.values) for d, v in domains().items()},
        keys_per_person=1,
    )
    dims = domains()
    scales = {n: 1.0 for n in release_weights(DIMENSIONS)}
    just_under = threshold_sds(len(dims["country"].values)) - 1e-9
    outputs: dict[str, Any] = {EVENTS_TOTAL: [0], EVENTS_BY_HOUR: [0] * 24, PEOPLE_TOTAL: [0]}
    for d, domain in dims.items():
        outputs[events_of(d)] = [0] * len(domain.values)
        outputs[people_of(d)] = [0.0] * len(domain.values)
    outputs[people_of("country")][_index("country", "FR")] = just_under
    outputs[people_of("country")][_index("country", "DE")] = just_under + 2e-9
    published = {
        c.value for c in post_process(batch, outputs, scales, dims) if c.dimension == "country"
    }
    assert published == {"DE", None}  # DE passes, FR does not; None is "other"
