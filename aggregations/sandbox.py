"""``sieve sql``'s sandbox: one read-only statement over a locked-down role catalog.

DuckDB has no read-only mode for files: a connection allowed to read a folder may also
write into it (``COPY (SELECT ...) TO '<root>/published/metering_daily/zz.parquet'`` raised
an invoice, issue 14). So the statement is parsed first and refused unless it is a single
query (``SELECT``, ``WITH``, ``FROM``, ``VALUES``, ``DESCRIBE``, ``SUMMARIZE``, ``SHOW``, all
of which DuckDB parses as SELECT) or an ``EXPLAIN`` of one. ``COPY``, ``ATTACH``, ``CREATE``,
``INSTALL``, ``LOAD``, ``SET``, ``PRAGMA``, ``CALL``, ``EXPORT`` and every other statement
are refused before anything runs; the connection itself (:func:`aggregations.catalog.lock`)
reads only the role's folders, so even a query cannot open any other file.
"""

from __future__ import annotations

from typing import Final

import duckdb

from aggregations.catalog import Role, open_catalog
from aggregations.publish import ensure_layout
from aggregations.storage import resolve_root

_ALLOWED: Final = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


class SandboxError(ValueError):
    """A statement the sandbox does not run (with the reason)."""


def check_read_only(connection: duckdb.DuckDBPyConnection, query: str) -> None:
    """Raise :class:`SandboxError` unless ``query`` is exactly one read-only statement."""
    try:
        statements = connection.extract_statements(query)
    except duckdb.Error as error:
        raise SandboxError(f"the query does not parse: {error}") from None
    if len(statements) != 1:
        raise SandboxError(f"one statement at a time, not {len(statements)}")
    kind = statements[0].type
    if kind not in _ALLOWED:
        raise SandboxError(
            f"only queries run here (SELECT, WITH, FROM, DESCRIBE, EXPLAIN ...), not {kind.name}:"
            " the published data is read-only"
        )


def open_sandbox(data_root: str, role: Role) -> duckdb.DuckDBPyConnection:
    """The locked-down catalog of ``role`` (published folders created if missing)."""
    ensure_layout(resolve_root(data_root))
    return open_catalog(data_root, role=role, lock_down=True)


def run_query(connection: duckdb.DuckDBPyConnection, query: str) -> duckdb.DuckDBPyRelation | None:
    """Run one read-only statement (checked first) on a sandbox connection."""
    check_read_only(connection, query)
    return connection.sql(query)
