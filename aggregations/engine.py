"""The DuckDB connection the pure aggregation queries run in.

An in-memory database per computation: no state survives a call, and the session time zone
is UTC so that casting an hour to a date means the UTC date whatever the machine's zone.
"""

from __future__ import annotations

import duckdb


def connect(database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(database)
    connection.execute("SET TimeZone = 'UTC'")
    return connection
