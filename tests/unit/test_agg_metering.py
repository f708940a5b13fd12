"""Metering is exact: hand-computed usage per account, hour and day, for the declared meters."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregations.engine import connect
from aggregations.metering import Changes, changes, recompute, usage, wide
from aggregations.meters import default_meters
from aggregations.schemas import METERING
from tests.fixtures.facts import fact, facts_table, usage_facts

H10 = datetime(2026, 11, 1, 10, tzinfo=UTC)
H11 = H10 + timedelta(hours=1)
FAR = datetime(2030, 1, 1, tzinfo=UTC)
METERS = default_meters()
METRICS = tuple(m.name for m in METERS)


def hourly_usage(facts, last_hour):  # type: ignore[no-untyped-def]
    return wide(usage(facts, METERS, last_hour, date(1970, 1, 1)), METERS, "hour")


def daily_usage(facts, last_day):  # type: ignore[no-untyped-def]
    return wide(usage(facts, METERS, datetime(1970, 1, 1, tzinfo=UTC), last_day), METERS, "day")


def _facts():  # type: ignore[no-untyped-def]
    return facts_table(
        [
            fact(H10, type="request", subject_key="p1", bytes=500),
            fact(H10, type="page_view", subject_key="p1"),
            fact(H10, type="page_view", subject_key="p2"),
            fact(H10, type="login", subject_key="p1"),
            fact(H10, type="upload", subject_key="p1", bytes=100),
            fact(H10, type="upload", subject_key="p2", bytes=50),
            fact(H10, type="download", subject_key="p2", bytes=70),
            fact(H11, type="logout", subject_key="p1", session_seconds=30.5),
            fact(H11, type="login", subject_key="p3"),
            fact(H11, type="request", subject_key=None),
            fact(H10, type="payment", account_id="b", subject_key=None),
        ]
    )


def _by_key(rows, *keys):  # type: ignore[no-untyped-def]
    return {tuple(r[k] for k in keys): r for r in rows}


def test_hourly_usage_is_exact() -> None:
    rows = _by_key(hourly_usage(_facts(), FAR), "hour", "account_id")
    assert {k: v for k, v in rows[(H10, "acct-1")].items() if k in METRICS} == {
        "requests": 1,
        "page_views": 2,
        "sessions": 1,
        "session_seconds": Decimal("0.000"),
        "uploads": 2,
        "upload_bytes": 150,
        "downloads": 1,
        "download_bytes": 70,
        "active_users": 2,
    }
    # The session starts at 10 (login) but its time is counted at 11, where it ends.
    h11 = rows[(H11, "acct-1")]
    assert (h11["sessions"], h11["session_seconds"], h11["requests"]) == (1, Decimal("30.5"), 1)
    assert h11["active_users"] == 2  # p1, p3; the request without a subject is nobody
    # An account with only other events still gets its (zero) row.
    assert rows[(H10, "b")]["requests"] == 0 and rows[(H10, "b")]["active_users"] == 0


def test_daily_active_users_are_distinct_over_the_day_not_a_sum_of_hours() -> None:
    hourly = hourly_usage(_facts(), FAR)
    daily = _by_key(daily_usage(_facts(), date(2030, 1, 1)), "date", "account_id")
    day = daily[(date(2026, 11, 1), "acct-1")]
    hourly_sum = sum(r["active_users"] for r in hourly if r["account_id"] == "acct-1")
    assert hourly_sum == 4 and day["active_users"] == 3
    assert (day["requests"], day["sessions"], day["session_seconds"]) == (2, 2, Decimal("30.5"))


def test_only_closed_windows_are_computed() -> None:
    assert {r["hour"] for r in hourly_usage(_facts(), H10)} == {H10}
    assert daily_usage(_facts(), date(2026, 10, 31)) == []


def test_session_seconds_sum_is_exact_to_the_millisecond() -> None:
    rows = [fact(H10, type="logout", session_seconds=0.1) for _ in range(10)]
    (row,) = hourly_usage(facts_table(rows), FAR)
    assert row["session_seconds"] == Decimal("1.000")  # a float sum would give 0.9999999999999999


def _changes(facts, published, new_meters=()):  # type: ignore[no-untyped-def]
    """Recompute ``facts`` and compare with ``published`` (METERING rows): the change rows."""
    connection = connect()
    connection.register("facts", facts)
    recompute(connection, METERS, [H10.date()], FAR, date(2030, 1, 1))
    connection.register("published", published)
    counts = changes(connection, METERS, new_meters)
    rows = connection.sql("SELECT * FROM changes ORDER BY ALL").to_arrow_table().to_pylist()
    return counts, rows


def _as_published(rows, correction=False):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    stamped = [
        {
            **{k: v for k, v in r.items() if k in METERING.names},
            "is_correction": correction,
            "publish_run": "r",
            "watermark": FAR,
            "published_at": FAR,
        }
        for r in rows
    ]
    return pa.Table.from_pylist(stamped, schema=METERING)


def test_changes_base_then_nothing_then_delta() -> None:
    counts, base = _changes(_facts(), METERING.empty_table())
    assert counts == Changes(hourly_base=3, hourly_corrections=0, daily_base=2, daily_corrections=0)
    assert base and not any(r["is_correction"] for r in base)
    counts, again = _changes(_facts(), _as_published(base))
    assert again == [] and counts == Changes()
    later = facts_table(
        [*_facts().to_pylist(), fact(H10, type="upload", subject_key="p9", bytes=5)]
    )
    counts, fix = _changes(later, _as_published(base))
    assert counts == Changes(hourly_corrections=1, daily_corrections=1)
    hour = {r["meter"]: r["value"] for r in fix if r["grain"] == "hour"}
    # Only what changed, as deltas: one more upload of 5 bytes by one more person.
    assert hour == {"uploads": 1, "upload_bytes": 5, "active_users": 1}
    assert all(r["is_correction"] and r["hour"] == H10 for r in fix if r["grain"] == "hour")


def test_a_meter_new_to_the_published_windows_starts_with_base_rows() -> None:
    published = [
        r for r in _changes(_facts(), METERING.empty_table())[1] if r["meter"] != "uploads"
    ]
    counts, rows = _changes(_facts(), _as_published(published), new_meters=("uploads",))
    assert {r["meter"] for r in rows} == {"uploads"}
    assert not any(r["is_correction"] for r in rows) and counts.hourly_corrections == 0


def test_windows_whose_facts_are_gone_are_left_as_published() -> None:
    base = _changes(_facts(), METERING.empty_table())[1]
    # Only account b's payment is left: acct-1's windows have no facts any more.
    left = facts_table([r for r in _facts().to_pylist() if r["account_id"] == "b"])
    counts, rows = _changes(left, _as_published(base))
    assert rows == [] and counts == Changes()


_types = st.sampled_from(["request", "page_view", "login", "logout", "upload", "download"])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 47),
            _types,
            st.integers(0, 5),
            st.integers(0, 10**6),
            st.sampled_from(["a", "b"]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_hours_add_up_to_days_except_active_users(events) -> None:  # type: ignore[no-untyped-def]
    table = usage_facts(H10.replace(hour=0), events)
    hourly = hourly_usage(table, FAR)
    daily = daily_usage(table, date(2030, 1, 1))
    for day in daily:
        hours = [
            h
            for h in hourly
            if h["hour"].date() == day["date"] and h["account_id"] == day["account_id"]
        ]
        for metric in METRICS:
            total = sum((h[metric] for h in hours), start=0)
            if metric == "active_users":
                assert max(h[metric] for h in hours) <= day[metric] <= total
            else:
                assert total == day[metric], metric
