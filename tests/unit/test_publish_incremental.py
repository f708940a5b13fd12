"""Incremental publish (issue 10): any ranges, in any order, published in any number of runs
with crashes between them, give the metering of one publish from scratch.

What is equal, and why:

- **Metering**: every window's exact value, in every view (``metering_hourly``,
  ``metering_daily`` with every meter, ``metering_values`` with each key's non-zero value):
  a value is a function of the committed facts and the final watermark, whatever the runs.
  Only the history differs (base rows then corrections, against base rows alone).
- **Analytics**: the noise differs by design, and so may the batches: a day released when
  it closed and again in its late slot is one batch in a single late publish. What is
  equal is *what the schedule decides*: each run releases exactly the batches a scan of
  every day would release at that moment given the ledger (so no due day is missed and
  none released twice, however few days the run looks at), every fact is in at most one
  batch, and in the end every day has released the same slots, spending the same budget,
  as in the publish from scratch.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregations import storage
from aggregations.analytics import Privacy
from aggregations.catalog import open_catalog
from aggregations.dp.bounding import Bounds
from aggregations.dp.budget import Budget
from aggregations.dp.ledger import Entry, read_ledger
from aggregations.publish import publish
from aggregations.schemas import METERING_DIR
from aggregations.windows import last_closed_day
from schemas.commits import committed_files
from streams.storage import DataRoot
from tests.fixtures.facts import fact, facts_table, write_committed_facts

START = datetime(2026, 11, 1, tzinfo=UTC)
GRACE = timedelta(hours=1)
# A late slot half a day after the close, so that runs a few hours apart see it fall due.
PRIVACY = Privacy(
    Budget(epsilon=1.0, delta=1e-6, late_batches=1, late_interval=timedelta(hours=12)),
    Bounds(events_per_unit=4),
)
TYPES = ("request", "page_view", "login", "logout", "upload", "download", "payment")


class Crash(RuntimeError):
    """The process dies: raised in place of the n-th file write of a run."""


@contextmanager
def crash_after(writes: int | None) -> Iterator[None]:
    """Let ``writes`` atomic writes through, then die in the next one, leaving its
    temporary file behind (the rename never happens). None: no crash."""
    if writes is None:
        yield
        return
    real = DataRoot.write_atomic
    done = 0

    def dying(root: DataRoot, relative: str, write: Any) -> None:
        nonlocal done
        if done >= writes:
            final = Path(root.join(relative))
            final.parent.mkdir(parents=True, exist_ok=True)
            Path(f"{final}.tmp-crash").write_bytes(b"half a file")
            raise Crash(relative)
        done += 1
        real(root, relative, write)

    DataRoot.write_atomic = dying  # type: ignore[method-assign]
    try:
        yield
    finally:
        DataRoot.write_atomic = real  # type: ignore[method-assign]


# --- generated histories -----------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    partition: int
    first: int
    rows: tuple[dict[str, Any], ...]


_fact = st.builds(
    lambda hour, kind, account, person, size: fact(
        START + timedelta(hours=hour),
        type=kind,
        account_id=account,
        subject_key=None if person is None else f"{account}-p{person}",
        bytes=size,
        session_seconds=size / 1000,
    ),
    st.integers(0, 71),  # three days
    st.sampled_from(TYPES),
    st.sampled_from(["acct-a", "acct-b"]),
    st.one_of(st.none(), st.integers(0, 3)),
    st.integers(0, 5000),
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Range], list[tuple[int, datetime, int | None]]]:
    """Ranges (offsets consecutive per partition), their arrival order, and the runs: how
    many ranges have arrived at each run, its clock, and after how many writes it dies."""
    batches = draw(st.lists(st.lists(_fact, min_size=1, max_size=6), min_size=1, max_size=6))
    next_offset = [0, 0]
    ranges = []
    for rows in batches:
        partition = draw(st.integers(0, 1))
        ranges.append(Range(partition, next_offset[partition], tuple(rows)))
        next_offset[partition] += len(rows)
    order = draw(st.permutations(ranges))
    cuts = sorted(draw(st.lists(st.integers(0, len(order)), max_size=4)))
    clocks = sorted(draw(st.lists(st.integers(0, 100), min_size=len(cuts), max_size=len(cuts))))
    runs = [
        (cut, START + timedelta(hours=hours), draw(st.one_of(st.none(), st.integers(0, 6))))
        for cut, hours in zip(cuts, clocks, strict=True)
    ]
    return list(order), runs


def _commit(root: Path, item: Range) -> None:
    table = facts_table(
        [
            {**row, "event_key": f"{item.partition}-{item.first + i}"}
            for i, row in enumerate(item.rows)
        ]
    )
    write_committed_facts(root, table, first_offset=item.first, partition=item.partition)


# --- what the two histories publish ------------------------------------------------------------


def _view(root: Path, sql: str) -> list[tuple[Any, ...]]:
    connection = open_catalog(str(root), role="billing")
    try:
        return sorted(connection.sql(sql).fetchall(), key=repr)
    finally:
        connection.close()


def metering(root: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every published value, history aside (no corrections count, no update time)."""
    keys = "account_id, requests, page_views, sessions, session_seconds, uploads, upload_bytes"
    keys += ", downloads, download_bytes, active_users"
    return {
        "hourly": _view(root, f"SELECT hour, {keys} FROM metering_hourly"),
        "daily": _view(root, f"SELECT date, {keys} FROM metering_daily"),
        "values": _view(
            root,
            "SELECT grain, date, hour, account_id, meter, value FROM metering_values"
            " WHERE value <> 0",
        ),
    }


def ledger_entries(root: Path) -> dict[date, list[Entry]]:
    return read_ledger(storage.resolve_root(str(root)))


def files_by_day(root: Path) -> dict[date, set[str]]:
    days: dict[date, set[str]] = {}
    for name in committed_files(storage.resolve_root(str(root)).fs, str(root), "facts"):
        days.setdefault(storage.facts_day(name), set()).add(name)
    return days


def full_scan(
    committed: dict[date, set[str]], before: dict[date, list[Entry]], mark: datetime | None
) -> set[tuple[date, tuple[int, ...], frozenset[str]]]:
    """What a scan of every day would release now, given the facts files ``committed`` and
    the ledger ``before`` the run (a run compacts after it publishes: files renamed then
    are not the ones its batches covered)."""
    if mark is None:
        return set()
    due = set()
    budget = PRIVACY.budget
    for day, files in committed.items():
        if day > last_closed_day(mark, GRACE):
            continue
        entries = before.get(day, [])
        released = frozenset(s for e in entries for s in e.slots)
        covered = {name for e in entries for name in e.covered_files}
        slots = budget.due_slots(day, mark, GRACE, released)
        if slots:
            due.add((day, slots, frozenset(files - covered)))
    return due


def released(
    before: dict[date, list[Entry]], after: dict[date, list[Entry]]
) -> set[tuple[date, tuple[int, ...], frozenset[str]]]:
    known = {(e.day, e.batch) for entries in before.values() for e in entries}
    return {
        (e.day, e.slots, frozenset(e.covered_files))
        for entries in after.values()
        for e in entries
        if (e.day, e.batch) not in known
    }


# --- the property ------------------------------------------------------------------------------


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(history=histories())
def test_incremental_runs_with_crashes_publish_what_one_run_from_scratch_does(
    history: tuple[list[Range], list[tuple[int, datetime, int | None]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    ranges, runs = history
    root = tmp_path_factory.mktemp("incremental")
    committed = 0
    for arrived, now, dies in runs:
        while committed < arrived:
            _commit(root, ranges[committed])
            committed += 1
        before, files = ledger_entries(root), files_by_day(root)
        try:
            with crash_after(dies):
                # Compacting the closed days after each run changes nothing published.
                report = publish(str(root), now, GRACE, PRIVACY, compact=True)
        except Crash:
            # A crashed run releases part of what it would have, never more.
            scan = full_scan(files, before, None)
            assert released(before, ledger_entries(root)) <= scan or not scan
            continue
        # A run that completes releases what a scan of every day would, no more, no less.
        assert released(before, ledger_entries(root)) == full_scan(files, before, report.watermark)
    for item in ranges[committed:]:
        _commit(root, item)
    final_now = START + timedelta(days=6)
    before, files = ledger_entries(root), files_by_day(root)
    final = publish(str(root), final_now, GRACE, PRIVACY, compact=True)
    assert released(before, ledger_entries(root)) == full_scan(files, before, final.watermark)

    scratch = tmp_path_factory.mktemp("scratch")
    for part in ("facts", "_commits"):
        shutil.copytree(root / part, scratch / part)
    one = publish(str(scratch), final_now, GRACE, PRIVACY)
    assert one.watermark == final.watermark
    assert metering(root) == metering(scratch)

    incremental, single = ledger_entries(root), ledger_entries(scratch)
    assert {d: {s for e in es for s in e.slots} for d, es in incremental.items()} == {
        d: {s for e in es for s in e.slots} for d, es in single.items()
    }
    for entries in incremental.values():
        covered = [name for e in entries for name in e.covered_files]
        assert len(covered) == len(set(covered)), "a fact file in two batches of a day"
        assert sum(e.rho for e in entries) <= PRIVACY.budget.rho * (1 + 1e-9)
    # A crashed run's leftovers are swept by the next one; none is listed or visible.
    assert not [p for p in (root / METERING_DIR).rglob("*") if ".tmp-" in p.name]


def test_a_crash_at_each_write_of_a_run_leaves_the_old_state_or_the_new(tmp_path: Path) -> None:
    """Deterministic companion of the property: every crash point of one run, in turn."""
    first = [fact(START + timedelta(hours=h), subject_key=f"p{h % 3}") for h in range(30)]
    second = [fact(START + timedelta(hours=h), type="upload", bytes=h) for h in range(20, 50)]
    reference = tmp_path / "reference"
    write_committed_facts(reference, facts_table(first), first_offset=0)
    publish(str(reference), START + timedelta(days=3), GRACE, PRIVACY)
    old = metering(reference)
    write_committed_facts(reference, facts_table(second), first_offset=30)
    publish(str(reference), START + timedelta(days=3), GRACE, PRIVACY)
    new = metering(reference)
    assert old != new
    crashes = 0
    for dies in range(12):
        root = tmp_path / f"crash-{dies}"
        write_committed_facts(root, facts_table(first), first_offset=0)
        publish(str(root), START + timedelta(days=3), GRACE, PRIVACY)
        write_committed_facts(root, facts_table(second), first_offset=30)
        try:
            with crash_after(dies):
                publish(str(root), START + timedelta(days=3), GRACE, PRIVACY)
        except Crash:
            crashes += 1
            assert metering(root) == old, f"a crash after {dies} writes showed half a run"
            publish(str(root), START + timedelta(days=3), GRACE, PRIVACY)
        assert metering(root) == new
    # The run writes its marker, its day files, the ledger and the copy, then the manifest:
    # every one of those writes was a crash point.
    assert crashes >= 5
