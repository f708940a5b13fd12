"""Explicit Arrow schemas of every dataset the aggregations publish.

Published datasets live under ``<data root>/published/`` and are the only thing the DuckDB
catalog shows analysts. Writers cast to these schemas with :func:`schemas.arrow.conform`, so
a dropped column is an error, never a silent null.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

from schemas.arrow import OUTPUT_SCHEMA_VERSION

PUBLISHED_DIR: Final = "published"
METERING_HOURLY_DIR: Final = f"{PUBLISHED_DIR}/metering_hourly"
METERING_DAILY_DIR: Final = f"{PUBLISHED_DIR}/metering_daily"
ANALYTICS_DIR: Final = f"{PUBLISHED_DIR}/analytics"

# Session time is summed as a decimal with millisecond precision: a float sum depends on the
# order DuckDB's threads add in, and a last-bit difference would publish a spurious correction.
SESSION_SECONDS_TYPE: Final = pa.decimal128(18, 3)

COUNT_METRICS: Final = (
    "requests",
    "page_views",
    "sessions",
    "uploads",
    "upload_bytes",
    "downloads",
    "download_bytes",
    "active_users",
)
# Every metering metric, in column order (session_seconds is the one decimal).
METRICS: Final = (
    "requests",
    "page_views",
    "sessions",
    "session_seconds",
    "uploads",
    "upload_bytes",
    "downloads",
    "download_bytes",
    "active_users",
)

_UTC_S = pa.timestamp("s", tz="UTC")
_UTC_US = pa.timestamp("us", tz="UTC")


def _metric_fields() -> list[pa.Field]:
    return [
        pa.field(name, SESSION_SECONDS_TYPE if name == "session_seconds" else pa.int64(), False)
        for name in METRICS
    ]


def _run_fields() -> list[pa.Field]:
    return [
        # False: the first value published for the window; true: a delta to add to it.
        pa.field("is_correction", pa.bool_(), nullable=False),
        # The publish run that wrote the row (also the file name): deterministic from content.
        pa.field("publish_run", pa.string(), nullable=False),
        # The event-time watermark the run closed windows with.
        pa.field("watermark", _UTC_S, nullable=False),
        # When the run happened (the caller's `now`): audit only, never used to compute.
        pa.field("published_at", _UTC_US, nullable=False),
    ]


def _meta(dataset: str) -> dict[str, str]:
    return {"sieve.dataset": dataset, "sieve.schema_version": OUTPUT_SCHEMA_VERSION}


# Exact usage per account and UTC hour. The current value of a window is the sum of its base
# row and its correction rows (the catalog's `metering_hourly` view does the sum).
METERING_HOURLY: Final = pa.schema(
    [
        pa.field("hour", _UTC_S, nullable=False),
        pa.field("account_id", pa.string(), nullable=False),
        *_metric_fields(),
        *_run_fields(),
    ],
    metadata=_meta("metering_hourly"),
)

# Exact usage per account and UTC day; active_users is distinct people of the day, computed
# from the facts, never summed from hours.
METERING_DAILY: Final = pa.schema(
    [
        pa.field("date", pa.date32(), nullable=False),
        pa.field("account_id", pa.string(), nullable=False),
        *_metric_fields(),
        *_run_fields(),
    ],
    metadata=_meta("metering_daily"),
)

# Differentially private analytics cells (aggregations/dp). One file per (day, batch): batch
# n holds the facts of a day that no earlier batch covered, released on the day's schedule
# (aggregations/dp/budget.py). Every count is noisy; its noise's standard deviation is beside
# it. The same table (with the batch's spend in its metadata) is kept in the privacy ledger.
ANALYTICS: Final = pa.schema(
    [
        # "day" or "hour" (hour rows exist for the day total only).
        pa.field("grain", pa.string(), nullable=False),
        pa.field("date", pa.date32(), nullable=False),
        # The hour of an hour row; null on day rows.
        pa.field("hour", _UTC_S),
        # The batch: the first schedule slot it released (0 when the day closed).
        pa.field("batch", pa.int32(), nullable=False),
        # "total", "country", "device_class", "browser_family", "os_family" or "type".
        pa.field("dimension", pa.string(), nullable=False),
        # "total" (every counted event of the day or hour), "value" (one dimension value) or
        # "other" (the total minus the published values of the dimension, clipped at 0).
        pa.field("cell", pa.string(), nullable=False),
        # The dimension value of a "value" row; null otherwise.
        pa.field("value", pa.string()),
        # Events, at most SIEVE_DP_MAX_EVENTS_PER_PERSON_DAY per person, plus noise; >= 0.
        pa.field("events", pa.int64(), nullable=False),
        # Standard deviation of the noise in `events`: 95 % of the time the noise is within
        # +- 1.96 sd of zero.
        pa.field("events_sd", pa.float64(), nullable=False),
        # Distinct people (privacy units) plus noise; null on hour and "other" rows.
        pa.field("people", pa.int64()),
        pa.field("people_sd", pa.float64()),
        pa.field("publish_run", pa.string(), nullable=False),
        pa.field("published_at", _UTC_US, nullable=False),
    ],
    metadata={
        **_meta("analytics"),
        "sieve.schema_version": "2",
        # Filled per file: the release's ledger entry (JSON: covered files, spend, bounds).
        "sieve.release": "{}",
    },
)

DIMENSIONS: Final = ("country", "device_class", "browser_family", "os_family", "type")
