"""A publish with nothing new reads the cursor, the manifest and the batch index, and lists
neither the privacy ledger nor ``published/analytics`` (aggregations.batch_index): its cost
does not grow with the days of history. Any run with something to do, or after a crash,
lists both and restores what is missing, as before."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregations import publish as publish_module
from aggregations.batch_index import INDEX, read_index
from aggregations.dp.ledger import LEDGER_DIR
from aggregations.manifest import mark_run_started
from aggregations.publish import publish
from aggregations.schemas import ANALYTICS_DIR
from aggregations.storage import resolve_root
from tests.fixtures.facts import DEFAULT_PRIVACY, fact, facts_table, write_committed_facts

DAY = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 5, tzinfo=UTC)
GRACE = timedelta(hours=1)


def _traffic(day: datetime) -> list[dict[str, object]]:
    return [fact(day + timedelta(hours=h), subject_key=f"p{h % 5}") for h in range(24)]


class Listed(Exception):
    """batch_listing was called."""


def _forbid_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    def listing(*_: object) -> None:
        raise Listed

    monkeypatch.setattr(publish_module, "batch_listing", listing)


def _published(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in (root / ANALYTICS_DIR).rglob("batch-*.parquet")
    )


def test_a_publish_with_nothing_new_reads_the_index_not_the_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    days = [DAY, DAY + timedelta(days=1), DAY + timedelta(days=2)]
    write_committed_facts(
        tmp_path, facts_table([f for d in days for f in _traffic(d)]), first_offset=0
    )
    first = publish(str(tmp_path), NOW, GRACE, DEFAULT_PRIVACY)
    assert first.analytics_batches >= 2
    index = read_index(resolve_root(str(tmp_path)))
    assert index is not None and index.missing() == [] and index.unrecorded() == {}
    assert sum(len(b) for b in index.recorded.values()) == first.analytics_batches
    with monkeypatch.context() as patched:
        _forbid_listing(patched)
        again = publish(str(tmp_path), NOW, GRACE, DEFAULT_PRIVACY)
    assert again.run_id is None and again.rows_written == 0 and again.analytics_restored == 0
    # New facts: the run lists both folders (it must, to schedule), and the index follows.
    late = facts_table([fact(DAY + timedelta(hours=3), subject_key="late")])
    write_committed_facts(tmp_path, late, first_offset=1000)
    with monkeypatch.context() as patched:
        _forbid_listing(patched)
        with pytest.raises(Listed):
            publish(str(tmp_path), NOW + timedelta(days=1), GRACE, DEFAULT_PRIVACY)
    later = publish(str(tmp_path), NOW + timedelta(days=1), GRACE, DEFAULT_PRIVACY)
    index = read_index(resolve_root(str(tmp_path)))
    assert index is not None
    assert sum(len(b) for b in index.recorded.values()) == first.analytics_batches + len(
        later.analytics_spent
    )
    assert index.published == index.recorded


def test_deleted_analytics_and_crashed_runs_still_list_and_restore(tmp_path: Path) -> None:
    two_days = _traffic(DAY) + _traffic(DAY + timedelta(days=1))
    write_committed_facts(tmp_path, facts_table(two_days), first_offset=0)
    publish(str(tmp_path), NOW, GRACE, DEFAULT_PRIVACY)
    copies = _published(tmp_path)
    assert copies and (tmp_path / INDEX).exists()
    # The index goes with the folder: nothing new, and the release comes back all the same.
    shutil.rmtree(tmp_path / ANALYTICS_DIR)
    report = publish(str(tmp_path), NOW, GRACE, DEFAULT_PRIVACY)
    assert report.analytics_restored == len(copies) and _published(tmp_path) == copies
    assert (tmp_path / INDEX).exists()
    # After a crash (its marker left) the index is not trusted: a lost copy is restored.
    (tmp_path / copies[0]).unlink()
    mark_run_started(resolve_root(str(tmp_path)), "publish")
    report = publish(str(tmp_path), NOW, GRACE, DEFAULT_PRIVACY)
    assert report.analytics_restored == 1 and _published(tmp_path) == copies
    assert sorted((tmp_path / LEDGER_DIR).rglob("*.parquet"))
