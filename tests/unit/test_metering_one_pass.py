"""Metering in one pass over the facts (issue 10) equals each meter's own aggregate over the
facts of every window, for every kind of meter, breakdowns included."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

from aggregations.engine import connect
from aggregations.metering import KEY, usage
from aggregations.meters import Meter, default_meters, parse_meters
from tests.fixtures.facts import fact, facts_table

START = datetime(2026, 10, 30, 20, tzinfo=UTC)
EXTRA = """
[meters.largest_upload]
event = "upload"
aggregation = "max"
property = "bytes"
unit = "byte"

[meters.people_by_country]
event = ["page_view", "login"]
aggregation = "unique_count"
property = "subject_key"
group_by = ["country"]
unit = "person"

[meters.requests_by_country]
event = "request"
aggregation = "count"
group_by = ["country", "device_class"]
unit = "request"

[meters.session_time_by_device]
event = "logout"
aggregation = "sum"
property = "session_seconds"
decimals = 2
group_by = ["device_class"]
unit = "second"
"""


def _reference(facts: object, meters: tuple[Meter, ...], last_hour: datetime, last_day: date):  # type: ignore[no-untyped-def]
    """Every window's rows by the meters' own SQL, straight over the facts (the definition)."""
    connection = connect()
    connection.register("facts", facts)
    parts = []
    for dimension in [None, *sorted({d for m in meters for d in m.group_by})]:
        chosen = [m for m in meters if dimension is None or dimension in m.group_by]
        label = "NULL" if dimension is None else f"'{dimension}'"
        value = "NULL" if dimension is None else f'CAST("{dimension}" AS VARCHAR)'
        group = "" if dimension is None else f', "{dimension}"'
        for m in chosen:
            day = "CAST(occurred_hour AS DATE)"
            for grain, window, where in (
                ("hour", "occurred_hour", f"occurred_hour <= '{last_hour.isoformat()}'"),
                ("day", day, f"{day} <= '{last_day}'"),
            ):
                hour = "occurred_hour" if grain == "hour" else "CAST(NULL AS TIMESTAMPTZ)"
                parts.append(
                    f"""SELECT '{grain}' AS grain, CAST(occurred_hour AS DATE) AS date, {hour}
                           AS hour, account_id, '{m.name}' AS meter, {label} AS dimension,
                           {value} AS dimension_value, {m.value_sql()} AS value
                        FROM facts WHERE {where}
                        GROUP BY {window}, account_id{group}, CAST(occurred_hour AS DATE)
                               {", occurred_hour" if grain == "hour" else ""}"""
                )
    rows = connection.sql(" UNION ALL ".join(parts)).fetchall()
    return {tuple(r[:7]): r[7] for r in rows}


def test_one_pass_metering_equals_each_meters_own_aggregate() -> None:
    meters = default_meters() + parse_meters(EXTRA)
    draw = random.Random(3)
    types = ["request", "page_view", "login", "logout", "upload", "download", "payment"]
    rows = [
        fact(
            START + timedelta(hours=draw.randrange(30)),
            account_id=f"a{draw.randrange(4)}",
            subject_key=draw.choice([None, "p1", "p2", "p3", "p4"]),
            event_key=f"e{i}",
            type=draw.choice(types),
            country=draw.choice(["DE", "FR", "US"]),
            device_class=draw.choice(["desktop", "mobile"]),
            bytes=draw.randrange(10_000),
            session_seconds=draw.randrange(100_000) / 7,
        )
        for i in range(800)
    ]
    facts = facts_table(rows)
    last_hour, last_day = START + timedelta(hours=27), date(2026, 10, 31)
    published = usage(facts, meters, last_hour, last_day)
    got = {tuple(r[c] for c in KEY): r["value"] for r in published.to_pylist()}
    expected = _reference(facts, meters, last_hour, last_day)
    # Zeros are no row, except one per account-window whose meters are all zero.
    assert {k: v for k, v in got.items() if v != 0} == {k: v for k, v in expected.items() if v != 0}
    assert {k for k, v in got.items() if v == 0} <= {k for k, v in expected.items() if v == 0}
    assert {(k[0], k[1], k[2], k[3]) for k in got if k[5] is None} == {
        (k[0], k[1], k[2], k[3]) for k in expected if k[5] is None
    }  # every window with facts has its rows
    assert any(k[5] == "country" and k[4] == "people_by_country" for k in got)
    assert any(k[4] == "largest_upload" for k in got)
