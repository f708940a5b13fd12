"""The DuckDB catalogs: views over the *published* datasets of one role, and nothing else.

Two roles, two catalogs, never mixed (issue 8):

- **analyst** (analysts, dashboards): the differentially private analytics only.
  ``analytics_daily`` / ``analytics_hourly`` sum a day's (or hour's) batches and carry each
  count's noise standard deviation and 95 % interval; ``analytics_cells`` is every
  published row as it is, per batch.
- **billing** (invoices): exact per-account metering. ``metering_hourly`` /
  ``metering_daily``: one row per account and window, a column per published meter (its
  declared type), the exact current value (base rows + every correction), with
  ``corrections`` (the runs that corrected the window) and ``updated_at``;
  ``metering_corrections``: every correction as published, one row per window and run;
  ``metering_values``: the long rows (one per window, account, meter and breakdown value,
  the meter's ``group_by``), current values. An account with one user is one person's
  activity hour by hour: this is billing data, never an analyst's.

The billing views read exactly the files the publish manifest lists (never a glob), so a
reader sees one publish run whole or the next one whole; their columns are the meters that
run published. They are rebuilt from the manifest whenever a catalog is opened (``sieve
publish`` rewrites the catalog files).

There is no view over ``facts/``, ``identifiable/``, ``_commits/`` or the privacy ledger.
With a ``catalog_path`` the views are stored in that DuckDB file (``<data root>/
catalog-<role>.duckdb`` by convention) for ``duckdb <file>``. The analyst views glob their
folder, so new batches show without refreshing the file; the billing views list the files
of the manifest at the time, so ``sieve publish`` rewrites the file after every run. Such a
file is as
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
from aggregations.manifest import GRAINS, metering_files, read_manifest
from aggregations.metering_totals import totals_files
from aggregations.meters import Meter
from aggregations.schemas import ANALYTICS_DIR, METERING_DIR
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
        (METERING_DIR,),
        ("metering_hourly", "metering_daily", "metering_corrections", "metering_values"),
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
    glob = _literal(f"{_location(root, relative_dir)}/**/*.parquet")
    return f"read_parquet({glob}, union_by_name = true, hive_partitioning = false)"


def _location(root: Root, relative: str) -> str:
    location = root.join(relative)
    return location if root.is_local else f"{root.fs.type_name}://{location}"


def _listed(root: Root, files: list[str]) -> str:
    """A scan of exactly ``files``; with none yet, of the folder's zero-row schema file (the
    view binds before the first run). The ``grain=``/``date=`` folders let DuckDB skip a file
    without opening it when a query filters on ``date``."""
    if not files:
        schema_file = _literal(_location(root, f"{METERING_DIR}/_schema.parquet"))
        return f"read_parquet({schema_file}, hive_partitioning = false)"
    listed = ", ".join(_literal(_location(root, path)) for path in files)
    return f"read_parquet([{listed}], hive_partitioning = true)"


# How many publish runs corrected a window (or a key) after its first publication.
_CORRECTIONS: Final = (
    "CAST(count(DISTINCT publish_run) FILTER (WHERE is_correction) AS BIGINT) AS corrections"
)


def _pivot(meters: list[Meter]) -> str:
    """One column per meter, in its declared type (each followed by a comma)."""
    return "".join(
        f"CAST(coalesce(sum(value) FILTER (WHERE meter = {_literal(m.name)}), 0)"
        f" AS {m.sql_type}) AS {m.name},\n  "
        for m in meters
    )


def _metering_views(
    hours: str, days: str, meters: list[Meter], daily: str | None = None
) -> list[str]:
    """The billing views over the scans of the hour files and of the day files
    (``daily``: the statement of ``metering_daily``, when it reads the month rollups)."""
    names = ", ".join(_literal(m.name) for m in meters) or "NULL"
    both = f"(SELECT * FROM {hours} UNION ALL BY NAME SELECT * FROM {days})"  # noqa: S608

    def totals(source: str) -> str:
        return f"SELECT * FROM {source} WHERE dimension IS NULL AND meter IN ({names})"  # noqa: S608

    wide = [
        f"""
CREATE OR REPLACE VIEW {name} AS
SELECT {window}, account_id,
  {_pivot(meters)}{_CORRECTIONS},
  max(published_at) AS updated_at
FROM ({totals(source)})
GROUP BY {window}, account_id
"""  # noqa: S608
        for name, window, source in (
            ("metering_hourly", "hour", hours),
            ("metering_daily", "date", days),
        )
    ]
    if daily is not None:
        wide[1] = daily
    # View text cannot take parameters; every piece here is a constant, a checked meter name
    # or _literal().
    return [
        *wide,
        f"""
CREATE OR REPLACE VIEW metering_corrections AS
SELECT grain, date, hour, account_id,
  {_pivot(meters)}publish_run, watermark, published_at
FROM ({totals(both)}) WHERE is_correction
GROUP BY grain, date, hour, account_id, publish_run, watermark, published_at
""",  # noqa: S608
        f"""
CREATE OR REPLACE VIEW metering_values AS
SELECT grain, date, hour, account_id, meter, dimension, dimension_value,
  sum(value) AS value,
  {_CORRECTIONS},
  max(published_at) AS updated_at
FROM {both} WHERE meter IN ({names})
GROUP BY grain, date, hour, account_id, meter, dimension, dimension_value
""",  # noqa: S608
    ]


def _daily_from_rollups(rollups: str, meters: list[Meter], unrolled: str | None) -> str:
    """``metering_daily`` over the month rollups: the same rows as the pivot of the day files
    (a window with a row of a declared meter), read instead of computed."""
    # A meter no rollup has a column for yet (declared, never non-zero since) is null here,
    # then zero: the empty select gives the union every declared meter's column.
    empty = ", ".join(
        [
            "CAST(NULL AS DATE) AS date",
            "CAST(NULL AS VARCHAR) AS account_id",
            *(f"CAST(NULL AS {m.sql_type}) AS {m.name}" for m in meters),
        ]
    )
    present = " OR ".join(f"{m.name} IS NOT NULL" for m in meters) or "false"
    values = "".join(
        f"CAST(coalesce({m.name}, 0) AS {m.sql_type}) AS {m.name},\n  " for m in meters
    )
    union = f"SELECT * FROM {rollups} UNION ALL BY NAME SELECT {empty} WHERE false"  # noqa: S608
    view = f"""
CREATE OR REPLACE VIEW metering_daily AS
SELECT date, account_id,
  {values}corrections, updated_at
FROM ({union}) WHERE {present}
"""  # noqa: S608 - constants, checked meter names and _literal()
    if unrolled is None:
        return view
    legacy = f"""
SELECT date, account_id,
  {_pivot(meters)}{_CORRECTIONS},
  max(published_at) AS updated_at
FROM (SELECT * FROM {unrolled} WHERE dimension IS NULL AND meter IN ({_names(meters)}))
GROUP BY date, account_id
"""  # noqa: S608
    return f"{view}UNION ALL BY NAME{legacy}"


def _names(meters: list[Meter]) -> str:
    return ", ".join(_literal(m.name) for m in meters) or "NULL"


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
    manifest = read_manifest(root)
    meters = [Meter.from_record(record) for record in manifest.meters]
    hours, days = (_listed(root, metering_files(manifest, grain)) for grain in GRAINS)
    rollups = totals_files(manifest.metering)
    if not rollups:
        return _metering_views(hours, days, meters)
    unrolled = [
        path
        for path in metering_files(manifest, "day")
        if path.split("date=", 1)[1][:7] not in rollups
    ]
    scan = ", ".join(_literal(_location(root, path)) for _, path in sorted(rollups.items()))
    daily = _daily_from_rollups(
        f"read_parquet([{scan}], union_by_name = true, hive_partitioning = false)",
        meters,
        _listed(root, unrolled) if unrolled else None,
    )
    return _metering_views(hours, days, meters, daily)


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
