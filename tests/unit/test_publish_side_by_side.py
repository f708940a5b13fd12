"""A small chunk meters and releases side by side (aggregations.publish_run.
meter_beside_release): the same metering, ledger and report as one after the other.

Day after day, each run commits the next day's facts and publishes (metering of the day that
closed, and its first analytics batch, in one chunk), once with the side-by-side path and once
with the sequential one in its place, each on its own copy of the data root. Everything but the
noise must be equal: every published metering row, every ledger entry but the noisy numbers,
and the reports.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from aggregations import publish_run, storage
from aggregations.analytics import Privacy, Scheduled
from aggregations.dp.bounding import Bounds
from aggregations.dp.budget import Budget
from aggregations.dp.ledger import Entry, read_ledger
from aggregations.publish import PublishReport, publish
from aggregations.schemas import METERING_DIR
from tests.fixtures.facts import fact, facts_table, write_committed_facts

START = datetime(2026, 11, 1, tzinfo=UTC)
GRACE = timedelta(hours=1)
PRIVACY = Privacy(
    Budget(epsilon=1.0, delta=1e-6, late_batches=1, late_interval=timedelta(hours=12)),
    Bounds(events_per_unit=4),
)
DAYS = 4
TYPES = ("request", "page_view", "login", "upload", "download")


def _day_of_facts(day: int, offset: int) -> Any:
    rows = [
        fact(
            START + timedelta(days=day, hours=hour),
            type=TYPES[(hour + account) % len(TYPES)],
            account_id=f"acct-{account}",
            subject_key=f"acct-{account}-p{hour % 3}",
            bytes=100 * hour + account,
            event_key=f"e-{offset + i}",
        )
        for i, (hour, account) in enumerate((h, a) for h in range(24) for a in range(3))
    ]
    return facts_table(rows)


def _sequential(
    run: publish_run.Run,
    connection: duckdb.DuckDBPyConnection,
    metered: list[date],
    to_release: list[Scheduled],
    entries: Any,
) -> set[date]:
    """The chunk one step after the other in one connection (the path of a large chunk)."""
    publish_run.meter_days(run, connection, metered)
    return publish_run.release_days(run, connection, to_release, entries)


def _metering(root: Path) -> list[dict[str, Any]]:
    """Every published metering row, file by file (names and contents)."""
    rows = []
    for path in sorted((root / METERING_DIR).rglob("*.parquet")):
        if not path.name.startswith("_"):
            relative = str(path.relative_to(root))
            rows += [{"file": relative, **row} for row in pq.read_table(path).to_pylist()]
    return rows


def _ledger(root: Path) -> list[Entry]:
    return [e for entries in read_ledger(storage.resolve_root(str(root))).values() for e in entries]


def _without_noise(report: PublishReport) -> PublishReport:
    # The rows of a batch depend on its noise (values under the threshold are not published).
    return dataclasses.replace(report, analytics_rows=0)


def test_side_by_side_publishes_what_one_after_the_other_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = {name: tmp_path / name for name in ("side_by_side", "sequential")}
    beside = publish_run.meter_beside_release
    taken = {name: 0 for name in roots}

    def counted(name: str, path: Any) -> Any:
        def call(*args: Any) -> set[date]:
            taken[name] += 1
            result: set[date] = path(*args)
            return result

        return call

    offset = 0
    for day in range(DAYS):
        table = _day_of_facts(day, offset)
        for root in roots.values():
            write_committed_facts(root, table, first_offset=offset)
        offset += table.num_rows
        # The operator closes the day: it is metered and its first batch released.
        now = START + timedelta(days=day + 1, hours=1)
        closed = START + timedelta(days=day + 1)
        reports = {}
        for name, root in roots.items():
            path = beside if name == "side_by_side" else _sequential
            monkeypatch.setattr(publish_run, "meter_beside_release", counted(name, path))
            reports[name] = publish(str(root), now, GRACE, PRIVACY, closed, compact=True)
        assert _without_noise(reports["side_by_side"]) == _without_noise(reports["sequential"])
        assert reports["side_by_side"].analytics_batches > 0  # something was released
        assert _metering(roots["side_by_side"]) == _metering(roots["sequential"])
        assert _ledger(roots["side_by_side"]) == _ledger(roots["sequential"])
    # Each run's chunk was small: both took the side-by-side branch of publish_run.work.
    assert taken == {"side_by_side": DAYS, "sequential": DAYS}
