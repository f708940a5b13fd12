"""The retention policy file: what it says, and clear errors when it is wrong."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import EVENT_TYPES
from streams.errors import ConfigurationError
from streams.privacy.retention import load_policy, parse_policy

POLICY = load_policy()
PACKAGED = resources.files("streams.privacy").joinpath("policy.toml").read_text("utf-8")
# EU member states and the other EEA states (Iceland, Liechtenstein, Norway).
EU_EEA = [
    *("AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU"),
    *("IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK"),
    *("IS", "LI", "NO"),
]


def test_packaged_policy_is_the_seed_policy_version() -> None:
    # The seed policy says "Last updated: March 4, 2014".
    assert POLICY.version == "2014-03-04"


@pytest.mark.parametrize(
    ("name", "days", "account_bound", "kept_despite_opt_out"),
    [
        ("traffic", 30, False, False),
        ("activity", 90, False, False),
        ("content", 30, True, False),
        ("billing", 2557, False, True),
        ("account", 30, True, True),
    ],
)
def test_packaged_classes(
    name: str, days: int, account_bound: bool, kept_despite_opt_out: bool
) -> None:
    cls = POLICY.classes[name]
    assert (cls.days, cls.account_bound, cls.keep_despite_opt_out) == (
        days,
        account_bound,
        kept_despite_opt_out,
    )


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2090, 1, 1)))
def test_billing_keeps_seven_calendar_years_at_least(day: date) -> None:
    # 2557 days = 7 * 365 + 2 leap days; seven calendar years hold one or two leap days.
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    if (day.month, day.day) == (2, 29):
        seven_years = datetime(day.year + 7, 3, 1, tzinfo=UTC)
    else:
        seven_years = start.replace(year=day.year + 7)
    expiry = POLICY.expires_at("billing", start)
    assert expiry is not None
    assert seven_years <= expiry <= seven_years + timedelta(days=1)


@pytest.mark.parametrize(
    ("event_type", "class_name"),
    [
        ("request", "traffic"),
        ("page_view", "activity"),
        ("login", "activity"),
        ("logout", "activity"),
        ("upload", "content"),
        ("download", "content"),
        ("payment", "billing"),
        ("account", "account"),
        ("consent", "account"),
    ],
)
def test_event_type_classes(event_type: str, class_name: str) -> None:
    assert POLICY.class_of(event_type).name == class_name


def test_every_event_type_of_the_contract_has_a_class() -> None:
    assert set(POLICY.event_classes) == set(EVENT_TYPES)
    assert POLICY.traffic_class == "traffic"


@given(
    st.datetimes(
        # Hypothesis bounds are naive by contract; `timezones` makes the drawn values aware.
        min_value=datetime(2000, 1, 1),  # noqa: DTZ001
        max_value=datetime(2090, 1, 1),  # noqa: DTZ001
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=9))]
        ),
    ),
    st.sampled_from(["traffic", "activity", "billing"]),
)
def test_fixed_classes_expire_days_after_the_event(occurred_at: datetime, class_name: str) -> None:
    expiry = POLICY.expires_at(class_name, occurred_at)
    assert expiry is not None
    assert expiry - occurred_at == timedelta(days=POLICY.classes[class_name].days)


@pytest.mark.parametrize("class_name", ["content", "account"])
def test_account_bound_classes_expire_after_the_account_ends(class_name: str) -> None:
    occurred = datetime(2024, 1, 1, tzinfo=UTC)
    ended = datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert POLICY.expires_at(class_name, occurred) is None
    assert POLICY.account_bound_expiry(class_name, ended) == ended + timedelta(days=30)


def test_account_bound_expiry_of_a_fixed_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="not account-bound"):
        POLICY.account_bound_expiry("traffic", datetime(2024, 1, 1, tzinfo=UTC))


def test_naive_instants_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        POLICY.expires_at("traffic", datetime(2024, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone-aware"):
        POLICY.account_bound_expiry("content", datetime(2024, 1, 1))  # noqa: DTZ001


@pytest.mark.parametrize("country", [*EU_EEA, "CH", "GB"])
def test_eu_eea_switzerland_and_uk_are_stored_in_the_eu(country: str) -> None:
    assert POLICY.region_of(country) == "eu"


@pytest.mark.parametrize(
    ("country", "region"),
    [
        ("US", "us"),
        ("CA", "us"),
        ("JP", "global"),
        ("BR", "global"),
        ("ZZ", "global"),
        (None, "global"),
    ],
)
def test_other_regions(country: str | None, region: str) -> None:
    assert POLICY.region_of(country) == region


def test_load_policy_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(PACKAGED.replace('version = "2014-03-04"', 'version = "2030-01-01"'))
    assert load_policy(path).version == "2030-01-01"


def test_missing_policy_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"nope\.toml"):
        load_policy(tmp_path / "nope.toml")


def _mutated(old: str, new: str) -> str:
    assert old in PACKAGED, old
    return PACKAGED.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (_mutated("days = 30", 'days = "30"'), "classes.traffic.days"),
        (_mutated("days = 90", "days = 0"), "classes.activity.days"),
        (_mutated("days = 90", "days = true"), "classes.activity.days"),
        (_mutated("days = 2557\n", "days = 2557\nkeep = true\n"), "classes.billing.keep"),
        (
            _mutated("keep_despite_opt_out = true", 'keep_despite_opt_out = "yes"'),
            "classes.billing.keep_despite_opt_out",
        ),
        (_mutated('upload = "content"', 'upload = "contnet"'), "event_types.upload"),
        (_mutated('upload = "content"\n', ""), "event_types"),
        (
            _mutated('upload = "content"', 'upload = "content"\nsignup = "account"'),
            "event_types.signup",
        ),
        (_mutated('us = ["US", "CA"]', 'us = ["US", "CA", "DE"]'), "regions.us"),
        (_mutated('us = ["US", "CA"]', 'us = ["us"]'), "regions.us"),
        (_mutated('us = ["US", "CA"]', 'us = ["ZZ"]'), "regions.us"),
        (_mutated('us = ["US", "CA"]', 'us = "US"'), "regions.us"),
        (_mutated('traffic_class = "traffic"', 'traffic_class = "logs"'), "traffic_class"),
        (_mutated('traffic_class = "traffic"', 'traffic_class = "content"'), "traffic_class"),
        (_mutated('version = "2014-03-04"', "version = 2014-03-04"), "version"),
        (_mutated('version = "2014-03-04"', ""), "version"),
        (_mutated('default_region = "global"', 'default_region = "Global!"'), "default_region"),
        (_mutated("[classes.billing]", "[classes.Billing]"), "classes.Billing"),
        ("retention = 3\n" + PACKAGED, "retention"),
        (PACKAGED + "\n[broken", "not valid TOML"),
    ],
)
def test_malformed_policy_errors_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(
        ConfigurationError, match=re.escape(f"policy file {path}") + ".*" + re.escape(key)
    ):
        load_policy(path)


def test_policy_is_immutable() -> None:
    with pytest.raises(TypeError):
        POLICY.classes["traffic"] = POLICY.classes["billing"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        POLICY.version = "x"  # type: ignore[misc]


def test_parse_policy_names_its_source() -> None:
    with pytest.raises(ConfigurationError, match="policy file custom: classes"):
        parse_policy('version = "1"\ntraffic_class = "t"\ndefault_region = "g"', source="custom")
