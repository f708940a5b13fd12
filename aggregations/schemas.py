"""Explicit Arrow schemas of every dataset the aggregations publish.

Published datasets live under ``<data root>/published/`` and are the only thing the DuckDB
catalog shows analysts. Writers cast to these schemas with :func:`schemas.arrow.conform`, so
a dropped column is an error, never a silent null.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

from schemas.arrow import OUTPUT_SCHEMA_VERSION
from schemas.datasets import DATE_KEY, Dataset, Retention

PUBLISHED_DIR: Final = "published"
METERING_DIR: Final = f"{PUBLISHED_DIR}/metering"
ANALYTICS_DIR: Final = f"{PUBLISHED_DIR}/analytics"
# Where an earlier Sieve published wide metering, one file per run (see publish.py).
LEGACY_METERING_DIRS: Final = (
    f"{PUBLISHED_DIR}/metering_hourly",
    f"{PUBLISHED_DIR}/metering_daily",
)

# Every metered value is kept as one exact decimal type whatever its meter (counts, byte
# sums, session seconds at the millisecond): the billing views cast each meter to its own
# type (aggregations/meters.py). 38 digits, 6 places: any sum of int64 values fits.
METERING_VALUE_TYPE: Final = pa.decimal128(38, 6)

_UTC_S = pa.timestamp("s", tz="UTC")
_UTC_US = pa.timestamp("us", tz="UTC")


def _meta(dataset: str) -> dict[str, str]:
    return {"sieve.dataset": dataset, "sieve.schema_version": OUTPUT_SCHEMA_VERSION}


# Exact usage in the long layout: one row per window, account, meter (and breakdown value),
# so a new meter (a table in the meters file) changes no file schema and needs no migration;
# the catalog's views present the wide shape (one column per meter). One file per UTC date
# (``grain=<g>/date=<d>/<run>.parquet``, rewritten whole when a run adds rows to it), listed by
# the publish manifest. The current value of a key is the sum of its base row and its
# correction rows. A zero is not written, except one row per account and window whose every
# meter is zero (so the account still has its row of zeros in the window).
METERING: Final = pa.schema(
    [
        # "hour" or "day".
        pa.field("grain", pa.string(), nullable=False),
        # The UTC day of the window (the folder's date).
        pa.field("date", pa.date32(), nullable=False),
        # The hour of an hour row; null on day rows.
        pa.field("hour", _UTC_S),
        pa.field("account_id", pa.string(), nullable=False),
        # A meter's name (aggregations/meters.toml or SIEVE_METERS_FILE).
        pa.field("meter", pa.string(), nullable=False),
        # Null on the meter's total; else one of its group_by columns and that column's value.
        pa.field("dimension", pa.string()),
        pa.field("dimension_value", pa.string()),
        pa.field("value", METERING_VALUE_TYPE, nullable=False),
        # False: the first value published for the key; true: a delta to add to it.
        pa.field("is_correction", pa.bool_(), nullable=False),
        # The publish run that wrote the row: deterministic from the run's inputs.
        pa.field("publish_run", pa.string(), nullable=False),
        # The event-time watermark the run closed windows with.
        pa.field("watermark", _UTC_S, nullable=False),
        # When the run happened (the caller's `now`): audit only, never used to compute.
        pa.field("published_at", _UTC_US, nullable=False),
    ],
    metadata={**_meta("metering"), "sieve.schema_version": "2"},
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


# The published datasets, declared as the worker's are (schemas.datasets): anonymous, kept,
# never encrypted. Each folder keeps a zero-row ``_schema.parquet`` of its schema
# (aggregations.publish.ensure_layout), so the catalog's views bind before the first run.
METERING_DATASET: Final = Dataset(
    name="metering",
    folder=METERING_DIR,
    schema=METERING,
    partition_keys=("grain", DATE_KEY),
    date_column="date",
    encrypted=False,
    retention=Retention.KEPT,
)
ANALYTICS_DATASET: Final = Dataset(
    name="analytics",
    folder=ANALYTICS_DIR,
    schema=ANALYTICS,
    partition_keys=(DATE_KEY,),
    date_column="date",
    encrypted=False,
    retention=Retention.KEPT,
)
PUBLISHED_DATASETS: Final = (METERING_DATASET, ANALYTICS_DATASET)
