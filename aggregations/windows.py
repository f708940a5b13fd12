"""Event-time window arithmetic (pure): the watermark and which windows are closed.

Windows are UTC hours [h, h+1h) and UTC days [d, d+1d). The watermark is one hour past the
latest event hour seen in committed facts; a window is closed once the watermark has passed
its end by the grace period. Late events for a closed window become corrections.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def floor_hour(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware instant")
    utc = instant.astimezone(UTC)
    return utc.replace(minute=0, second=0, microsecond=0)


def watermark(max_event_hour: datetime | None, now: datetime) -> datetime | None:
    """``max_event_hour + 1h``, but never past the hour of ``now`` + 1h.

    The cap keeps a producer with a wrong clock (an event dated next year) from closing every
    window at once and turning all later on-time events into corrections. With facts that are
    not in the future it equals ``max_event_hour + 1h`` exactly.
    """
    if max_event_hour is None:
        return None
    return min(floor_hour(max_event_hour), floor_hour(now)) + HOUR


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def hour_closed(hour: datetime, mark: datetime, grace: timedelta) -> bool:
    return mark >= hour + HOUR + grace


def day_closed(day: date, mark: datetime, grace: timedelta) -> bool:
    return mark >= day_start(day) + DAY + grace


def last_closed_hour(mark: datetime, grace: timedelta) -> datetime:
    """The latest closed hour start: hours ``h <= last_closed_hour(...)`` are closed."""
    return mark - grace - HOUR


def last_closed_day(mark: datetime, grace: timedelta) -> date:
    """The latest closed day: days ``d <= last_closed_day(...)`` are closed."""
    return (mark - grace - DAY).astimezone(UTC).date()
