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

# k-anonymous analytics cells. One file per (day, batch): batch 0 holds the events known when
# the day closed, batch n > 0 the late events of one later publish run. Each batch is one
# suppression tree (see aggregations/kanon.py): total -> values (+ other) -> hours (+ rest).
ANALYTICS: Final = pa.schema(
    [
        # "day" (a day cell) or "hour" (an hour cell, or the rest-of-day cell of a day cell).
        pa.field("grain", pa.string(), nullable=False),
        pa.field("date", pa.date32(), nullable=False),
        # The hour of an hour cell. Null on day cells; null on an hour-grain row means "the
        # rest of the day": the hours of that day cell not published on their own, together.
        pa.field("hour", _UTC_S),
        pa.field("batch", pa.int32(), nullable=False),
        # "total", "country", "device_class", "browser_family", "os_family" or "type".
        pa.field("dimension", pa.string(), nullable=False),
        # The dimension value of a "value" cell; null for "total" and "other" cells.
        pa.field("value", pa.string()),
        # Which day cell the row is, or (hour grain) belongs to: "total" (every event of the
        # day), "value" (one dimension value) or "other" (every value of the dimension not
        # published on its own that day, together).
        pa.field("cell", pa.string(), nullable=False),
        pa.field("events", pa.int64(), nullable=False),
        # Distinct people (subject keys) among the cell's events; always >= k.
        pa.field("people", pa.int64(), nullable=False),
        # Only on the day cell (type, logout): median session length of the sessions that
        # ended that day, published with the cell (so over >= k people).
        pa.field("median_session_seconds", pa.float64()),
        pa.field("publish_run", pa.string(), nullable=False),
        pa.field("published_at", _UTC_US, nullable=False),
    ],
    metadata={
        **_meta("analytics"),
        # Filled per file: the committed facts files the batch covers (JSON list).
        "sieve.covered_files": "[]",
    },
)

DIMENSIONS: Final = ("country", "device_class", "browser_family", "os_family", "type")
