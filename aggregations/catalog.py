"""The DuckDB catalogs: views over the *published* datasets of one role, and nothing else.

Two roles, two catalogs, never mixed (issue 8):

- **analyst** (analysts, dashboards): the differentially private analytics only.
  ``analytics_daily`` / ``analytics_hourly`` sum a day's (or hour's) batches and carry each
  count's noise standard deviation and 95 % interval; ``analytics_cells`` is every
  published row as it is, per batch.
- **billing** (invoices): exact per-account metering. ``metering_hourly`` /
  ``metering_daily``: one row per account and window, the exact current value (base row +
  every correction), with ``corrections`` and ``updated_at``; ``metering_corrections``:
  every correction row as published. An account with one user is one person's activity
  hour by hour: this is billing data, never an analyst's.

There is no view over ``facts/``, ``identifiable/``, ``_commits/`` or the privacy ledger.
With a ``catalog_path`` the views are stored in that DuckDB file (``<data root>/
catalog-<role>.duckdb`` by convention) for ``duckdb <file>``; the views read the Parquet
files when queried, so new publishes show without refreshing the file. Such a file is as
private as the OS permissions on the folders its views read: give an analyst access to
``published/analytics`` and ``catalog-analyst.duckdb`` only.

With ``lock_down=True`` (what ``sieve sql``, reports and the dashboard use) the connection
can read the role's folders and nothing else, write nowhere (no temporary directory, no
extension install or load) and cannot change those settings; :mod:`aggregations.sandbox`
adds a read-only statement check on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

import duckdb

from aggregations.engine import connect
from aggregations.schemas import (
    ANALYTICS_DIR,
    METERING_DAILY_DIR,
    METERING_HOURLY_DIR,
    METRICS,
)
from aggregations.storage import Root, resolve_root

Role = Literal["analyst", "billing"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
# The z of a two-sided 95 % interval of Gaussian noise.
Z95: Final = 1.96


@dataclass(frozen=True)
class RoleSpec:
    folders: tuple[str, ...]  # published folders the role may read
    views: tuple[str, ...]


SPECS: Final[dict[Role, RoleSpec]] = {
    "analyst": RoleSpec(
        (ANALYTICS_DIR,), ("analytics_daily", "analytics_hourly", "analytics_cells")
    ),
    "billing": RoleSpec(
        (METERING_HOURLY_DIR, METERING_DAILY_DIR),
        ("metering_hourly", "metering_daily", "metering_corrections"),
    ),
}


def catalog_file(role: Role) -> str:
    return f"catalog-{role}.duckdb"


def default_catalog_path(data_root: str, role: Role) -> Path:
    return Path(resolve_root(data_root).path) / catalog_file(role)


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


def _interval(count: str) -> str:
    """Sum of a count over batches, the sd of its summed noise, and its 95 % interval."""
    sd = f"sqrt(sum({count}_sd * {count}_sd))"
    return (
        f"CAST(sum({count}) AS BIGINT) AS {count},\n"
        f"  round({sd}, 1) AS {count}_sd,\n"
        f"  CAST(greatest(0, round(sum({count}) - {Z95} * {sd})) AS BIGINT) AS {count}_low,\n"
        f"  CAST(round(sum({count}) + {Z95} * {sd}) AS BIGINT) AS {count}_high"
    )


def _analytics_views(source: str) -> list[str]:
    # People of a day with late batches add up per batch: someone active in two batches
    # counts twice (late batches are small; README, "How to read the numbers").
    return [
        f"""
CREATE OR REPLACE VIEW analytics_daily AS
SELECT date, dimension, cell, value,
  {_interval("events")},
  {_interval("people")},
  CAST(count(*) AS INTEGER) AS batches
FROM {source}
WHERE grain = 'day'
GROUP BY date, dimension, cell, value
""",  # noqa: S608 - constant fragments and _literal()
        f"""
CREATE OR REPLACE VIEW analytics_hourly AS
SELECT date, hour,
  {_interval("events")},
  CAST(count(*) AS INTEGER) AS batches
FROM {source}
WHERE grain = 'hour'
GROUP BY date, hour
""",  # noqa: S608
        f"""
CREATE OR REPLACE VIEW analytics_cells AS
SELECT grain, date, hour, batch, dimension, cell, value, events, events_sd, people, people_sd,
       publish_run, published_at
FROM {source}
""",  # noqa: S608
    ]


def view_statements(root: Root, role: Role) -> list[str]:
    if role == "analyst":
        return _analytics_views(_scan(root, ANALYTICS_DIR))
    hourly = _scan(root, METERING_HOURLY_DIR)
    daily = _scan(root, METERING_DAILY_DIR)
    return [
        _metering_view("metering_hourly", "hour", hourly),
        _metering_view("metering_daily", "date", daily),
        _corrections_view(hourly, daily),
    ]


def open_catalog(
    data_root: str,
    catalog_path: Path | None = None,
    *,
    role: Role,
    lock_down: bool = False,
) -> duckdb.DuckDBPyConnection:
    """A connection whose views show the published datasets of ``role`` (module docstring).

    The published folders must exist (``aggregations.publish.ensure_layout`` or any
    publish creates them with their schema files).
    """
    if role not in SPECS:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    root = resolve_root(data_root)
    connection = connect(str(catalog_path) if catalog_path is not None else ":memory:")
    for statement in view_statements(root, role):
        connection.execute(statement)
    if lock_down:
        lock(connection, root, role)
    return connection


def lock(connection: duckdb.DuckDBPyConnection, root: Root, role: Role) -> None:
    """Make ``connection`` read the role's published folders and nothing else, for good.

    DuckDB's allowed directories permit writes too (issue 14: ``COPY ... TO`` into
    ``published/metering_daily`` raised an invoice), so the statement check of
    :mod:`aggregations.sandbox` is what keeps a query from writing; these settings keep
    anything from reaching other files: no temporary directory (DuckDB would otherwise
    allow its ``.tmp`` folder), no extension installed or loaded, and no way back.
    """
    connection.execute("SET temp_directory = ''")
    connection.execute("SET autoinstall_known_extensions = false")
    connection.execute("SET autoload_known_extensions = false")
    if root.is_local:
        folders = [root.join(folder) + "/" for folder in SPECS[role].folders]
        connection.execute("SET allowed_directories = ?", [folders])
        connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
