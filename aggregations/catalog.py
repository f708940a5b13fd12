"""The DuckDB catalog: views over the *published* datasets, and nothing else.

``open_catalog(data_root)`` returns a connection with these views:

- ``metering_hourly`` / ``metering_daily``: one row per account and window, the exact
  current value (base row + every correction, summed), with ``corrections`` (how many
  correction rows went in) and ``updated_at`` (the last run that changed it).
- ``metering_corrections``: every correction row as published (deltas), hourly and daily.
- ``analytics_hourly`` / ``analytics_daily``: the k-anonymous cells, batches summed.

There is no view over ``facts/`` (pseudonymous subject keys) or ``identifiable/``. With a
``catalog_path`` the views are stored in that DuckDB file (``<data_root>/catalog.duckdb``
by convention), so analysts can run ``duckdb catalog.duckdb`` and ``SELECT ... FROM
metering_hourly``; the views read the Parquet files when queried, so new publishes show
without refreshing the catalog. With ``lock_down=True`` (what ``sieve sql`` uses) DuckDB
may read no file outside ``published/`` and the setting cannot be undone in the session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import duckdb

from aggregations.engine import connect
from aggregations.schemas import (
    ANALYTICS_DIR,
    METERING_DAILY_DIR,
    METERING_HOURLY_DIR,
    METRICS,
    PUBLISHED_DIR,
)
from aggregations.storage import Root, resolve_root

CATALOG_FILE: Final = "catalog.duckdb"
VIEWS: Final = (
    "metering_hourly",
    "metering_daily",
    "metering_corrections",
    "analytics_hourly",
    "analytics_daily",
)


def default_catalog_path(data_root: str) -> Path:
    return Path(resolve_root(data_root).path) / CATALOG_FILE


def _literal(text: str) -> str:
    """A SQL string literal. View definitions cannot take parameters, and the text here is
    the configured data root (never query input); quotes are doubled all the same."""
    return "'" + text.replace("'", "''") + "'"


def _scan(root: Root, relative_dir: str) -> str:
    location = root.join(relative_dir)
    if not root.is_local:
        location = f"{root.fs.type_name}://{location}"
    glob = _literal(f"{location}/**/*.parquet")
    return f"read_parquet({glob}, union_by_name = true, hive_partitioning = false)"


def _metering_view(name: str, window: str, source: str) -> str:
    sums = ",\n  ".join(
        f"CAST(sum({m}) AS {'DECIMAL(18, 3)' if m == 'session_seconds' else 'BIGINT'}) AS {m}"
        for m in METRICS
    )
    # View text cannot take parameters; every piece here is a constant or _literal().
    return f"""
CREATE OR REPLACE VIEW {name} AS
SELECT {window}, account_id,
  {sums},
  CAST(count(*) FILTER (WHERE is_correction) AS BIGINT) AS corrections,
  max(published_at) AS updated_at
FROM {source}
GROUP BY {window}, account_id
"""  # noqa: S608


def _corrections_view(hourly: str, daily: str) -> str:
    metrics = ", ".join(METRICS)
    return f"""
CREATE OR REPLACE VIEW metering_corrections AS
SELECT 'hour' AS grain, CAST(hour AS DATE) AS date, hour, account_id, {metrics},
       publish_run, watermark, published_at
FROM {hourly} WHERE is_correction
UNION ALL
SELECT 'day' AS grain, date, CAST(NULL AS TIMESTAMPTZ) AS hour, account_id, {metrics},
       publish_run, watermark, published_at
FROM {daily} WHERE is_correction
"""  # noqa: S608


def _analytics_view(name: str, grain: str, source: str) -> str:
    hour = "hour, " if grain == "hour" else ""
    median = (
        ",\n  arg_min(median_session_seconds, batch)"
        " FILTER (WHERE median_session_seconds IS NOT NULL) AS median_session_seconds"
        if grain == "day"
        else ""
    )
    return f"""
CREATE OR REPLACE VIEW {name} AS
SELECT date, {hour}dimension, cell, value,
  CAST(sum(events) AS BIGINT) AS events,
  CAST(sum(people) AS BIGINT) AS people,
  CAST(count(*) AS INTEGER) AS batches{median}
FROM {source}
WHERE grain = {_literal(grain)}
GROUP BY ALL
"""  # noqa: S608


def view_statements(root: Root) -> list[str]:
    hourly = _scan(root, METERING_HOURLY_DIR)
    daily = _scan(root, METERING_DAILY_DIR)
    analytics = _scan(root, ANALYTICS_DIR)
    return [
        _metering_view("metering_hourly", "hour", hourly),
        _metering_view("metering_daily", "date", daily),
        _corrections_view(hourly, daily),
        _analytics_view("analytics_hourly", "hour", analytics),
        _analytics_view("analytics_daily", "day", analytics),
    ]


def open_catalog(
    data_root: str, catalog_path: Path | None = None, *, lock_down: bool = False
) -> duckdb.DuckDBPyConnection:
    """A connection whose views show the published datasets (see the module docstring).

    The published folders must exist (``aggregations.publish.ensure_layout`` or any
    publish creates them with their schema files).
    """
    root = resolve_root(data_root)
    connection = connect(str(catalog_path) if catalog_path is not None else ":memory:")
    for statement in view_statements(root):
        connection.execute(statement)
    if lock_down and root.is_local:
        published = root.join(PUBLISHED_DIR) + "/"
        connection.execute("SET allowed_directories = ?", [[published]])
        connection.execute("SET enable_external_access = false")
        connection.execute("SET lock_configuration = true")
    return connection
