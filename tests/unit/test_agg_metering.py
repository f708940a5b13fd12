"""Metering is exact: hand-computed usage per account, hour and day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregations.metering import changes, daily_usage, hourly_usage
from aggregations.schemas import METRICS
from aggregations.testing import fact, facts_table

H10 = datetime(2026, 11, 1, 10, tzinfo=UTC)
H11 = H10 + timedelta(hours=1)
FAR = datetime(2030, 1, 1, tzinfo=UTC)


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


def _by_key(table, *keys):  # type: ignore[no-untyped-def]
    return {tuple(r[k] for k in keys): r for r in table.to_pylist()}


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
    hourly_sum = sum(r["active_users"] for r in hourly.to_pylist() if r["account_id"] == "acct-1")
    assert hourly_sum == 4 and day["active_users"] == 3
    assert (day["requests"], day["sessions"], day["session_seconds"]) == (2, 2, Decimal("30.5"))


def test_only_closed_windows_are_computed() -> None:
    assert {r["hour"] for r in hourly_usage(_facts(), H10).to_pylist()} == {H10}
    assert daily_usage(_facts(), date(2026, 10, 31)).num_rows == 0


def test_session_seconds_sum_is_exact_to_the_millisecond() -> None:
    rows = [fact(H10, type="logout", session_seconds=0.1) for _ in range(10)]
    (row,) = hourly_usage(facts_table(rows), FAR).to_pylist()
    assert row["session_seconds"] == Decimal("1.000")  # a float sum would give 0.9999999999999999


def test_changes_base_then_nothing_then_delta() -> None:
    recomputed = hourly_usage(_facts(), FAR)
    base, fix = changes(recomputed, recomputed.slice(0, 0), "hour")
    assert base.num_rows == recomputed.num_rows and fix.num_rows == 0
    base, fix = changes(recomputed, recomputed, "hour")
    assert base.num_rows == 0 and fix.num_rows == 0
    later = hourly_usage(
        facts_table([*_facts().to_pylist(), fact(H10, type="upload", subject_key="p9", bytes=5)]),
        FAR,
    )
    base, fix = changes(later, recomputed, "hour")
    (delta,) = fix.to_pylist()
    assert base.num_rows == 0
    assert (delta["hour"], delta["account_id"]) == (H10, "acct-1")
    assert {m: delta[m] for m in ("uploads", "upload_bytes", "active_users", "requests")} == {
        "uploads": 1,
        "upload_bytes": 5,
        "active_users": 1,
        "requests": 0,
    }


def test_windows_whose_facts_are_gone_are_left_as_published() -> None:
    published = hourly_usage(_facts(), FAR)
    base, fix = changes(published.slice(0, 1), published, "hour")
    assert base.num_rows == 0 and fix.num_rows == 0


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
    table = facts_table(
        [
            fact(
                H10.replace(hour=0) + timedelta(hours=h),
                type=t,
                subject_key=f"p{p}",
                bytes=b,
                session_seconds=b / 1000,
                account_id=a,
            )
            for h, t, p, b, a in events
        ]
    )
    hourly = hourly_usage(table, FAR).to_pylist()
    daily = daily_usage(table, date(2030, 1, 1)).to_pylist()
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
