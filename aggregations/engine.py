"""The DuckDB connection the aggregation queries run in.

An in-memory database per computation: no state survives a call, and the session time zone
is UTC so that casting an hour to a date means the UTC date whatever the machine's zone.
Publishing passes a memory limit and a temporary folder: DuckDB then spills its hash tables
and sorts to that folder instead of growing past the limit, so a run's memory does not
depend on how much it reads.
"""

from __future__ import annotations

import duckdb


def connect(
    database: str = ":memory:",
    *,
    memory_limit_mb: int | None = None,
    temp_directory: str | None = None,
) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(database)
    connection.execute("SET TimeZone = 'UTC'")
    if memory_limit_mb is not None:
        connection.execute(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
        # Keeping input order would hold whole results in memory for no reader's benefit:
        # every query here that needs an order says ORDER BY.
        connection.execute("SET preserve_insertion_order = false")
    if temp_directory is not None:
        connection.execute("SET temp_directory = ?", [temp_directory])
    return connection


def second_connection(connection: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Another connection to ``connection``'s database, for a second thread: its own
    temporary tables, views and session (UTC, as above), the same memory limit and
    temporary folder (the database's). A new database would cost tens of milliseconds."""
    second = connection.cursor()
    second.execute("SET TimeZone = 'UTC'")
    return second
