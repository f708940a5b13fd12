"""A meter over a custom event's declared metric (issue 13 item 1): declared in TOML alone,
metered from the facts' ``metrics`` map, corrected by a late event, and priced."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from aggregations.catalog import open_catalog
from aggregations.commands import pricing_command, publish_command
from aggregations.meters import MetersError, parse_meters
from tests.fixtures.facts import fact, facts_table, write_committed_facts

PACKAGED = resources.files("aggregations").joinpath("meters.toml").read_text("utf-8")
OCTOBER = datetime(2026, 10, 14, 9, tzinfo=UTC)
METERS = """
[meters.video_seconds]
description = "seconds of video played"
event = "custom:Video Played"
aggregation = "sum"
property = "metrics.seconds"
decimals = 1
unit = "second"

[meters.videos]
event = "custom:Video Played"
aggregation = "count"
unit = "video"
"""
PLAN = """
currency = "EUR"
quantity_rounding = "up"

[metrics.video_seconds]
unit_price = "0.01"

[metrics.videos]
unit_price = "0.50"
"""


def video(seconds: float, key: str, **fields: object) -> dict[str, object]:
    return fact(
        OCTOBER,
        type="custom",
        event_key=key,
        event_name="Video Played",
        dimensions=[("genre", "drama")],
        metrics=[("seconds", seconds)],
        **fields,
    )


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    meters, plan = tmp_path / "meters.toml", tmp_path / "plan.toml"
    meters.write_text(PACKAGED + METERS)
    plan.write_text(PLAN)
    data = tmp_path / "data"
    monkeypatch.setenv("SIEVE_DATA_ROOT", str(data))
    monkeypatch.setenv("SIEVE_METERS_FILE", str(meters))
    monkeypatch.setenv("SIEVE_PRICE_PLAN_FILE", str(plan))
    return data


def _published(root: Path, sql: str) -> list[tuple[object, ...]]:
    return open_catalog(str(root), role="billing").sql(sql).fetchall()


def test_a_meter_over_a_custom_metric_is_metered_corrected_and_priced(files: Path) -> None:
    rows = [
        video(30.25, "v-1"),
        video(12.0, "v-2"),
        # Not counted: another custom event with the same metric name, an undeclared name
        # (null in the facts), and an event of another type.
        fact(
            OCTOBER, type="custom", event_key="o-1", event_name="Other", metrics=[("seconds", 99.0)]
        ),
        fact(OCTOBER, type="custom", event_key="o-2", metrics=None),
        fact(OCTOBER, type="page_view", event_key="o-3"),
    ]
    write_committed_facts(files, facts_table(rows), first_offset=0)
    first = CliRunner().invoke(publish_command, ["--no-catalog", "--close-through", "2026-11-01"])
    assert first.exit_code == 0, first.output
    assert _published(files, "SELECT sum(video_seconds), sum(videos) FROM metering_daily") == [
        (Decimal("42.3"), 2)  # 30.25 summed at one decimal place: 30.3
    ]
    write_committed_facts(files, facts_table([video(7.5, "v-3")]), first_offset=100)
    second = CliRunner().invoke(publish_command, ["--no-catalog"])
    assert second.exit_code == 0, second.output
    fixes = _published(
        files, "SELECT video_seconds, videos FROM metering_corrections WHERE grain = 'day'"
    )
    assert fixes == [(Decimal("7.5"), 1)]
    priced = CliRunner().invoke(pricing_command, ["--period", "2026-10", "--format", "json"])
    assert priced.exit_code == 0, priced.output
    lines = {line["metric"]: line for line in json.loads(priced.output)["lines"]}
    # 49.8 seconds, rounded up to 50 at 0.01 each; 3 videos at 0.50.
    assert (lines["video_seconds"]["used"], lines["video_seconds"]["amount"]) == ("50", "0.50")
    assert (lines["videos"]["metered"], lines["videos"]["amount"]) == ("3", "1.50")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('event = "custom:"\naggregation = "count"\n', "unknown event type"),
        ('event = "custom"\naggregation = "sum"\nproperty = "metrics"\n', "numeric"),
    ],
)
def test_custom_meter_mistakes_are_errors(body: str, reason: str) -> None:
    with pytest.raises(MetersError, match=reason):
        parse_meters(f"[meters.m]\n{body}", "meters.toml")
