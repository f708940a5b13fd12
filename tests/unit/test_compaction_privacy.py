"""Erasure, export and the retention sweep on compacted files (issue 10.4), and the lock that
keeps a compaction merging identifiable files apart from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from aggregations.manifest import Manifest, write_manifest
from aggregations.storage import resolve_root
from schemas.commits import read_markers
from streams.compact_command import compact_command
from streams.encryption import ParquetEncryption
from streams.privacy.keyring import Keyring, write_new_keyring
from streams.subject.access import export_subject
from streams.subject.commands import MaintenanceBusyError, maintenance_lock
from streams.subject.erasure import erase_subject
from streams.subject.retention_sweep import sweep
from tests.fixtures.compaction_data import LATER, POLICY, views, write_history
from tests.fixtures.compaction_data import compact_all as _compact


@pytest.fixture
def compacted(tmp_path: Path) -> tuple[Path, ParquetEncryption, dict[str, object]]:
    write_new_keyring(tmp_path / "keys.json")
    encryption = ParquetEncryption(*Keyring.load(tmp_path / "keys.json").encryption_keys())
    root = tmp_path / "data"
    write_history(root, encryption, ranges=8)
    truth = views(root, encryption)
    _compact(root, encryption)
    assert any(m.compaction for m in read_markers(pafs.LocalFileSystem(), str(root)))
    return root, encryption, truth


def _every_row(root: Path, encryption: ParquetEncryption) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for path in sorted((root / "identifiable").rglob("*.parquet")):
        table = pq.ParquetFile(
            str(path), decryption_properties=encryption.decryption_properties()
        ).read()
        rows.extend(table.to_pylist())
    return rows


def test_export_of_compacted_files_is_the_export_before(
    tmp_path: Path, compacted: tuple[Path, ParquetEncryption, dict[str, object]]
) -> None:
    root, encryption, _ = compacted
    plain = tmp_path / "plain"
    write_history(plain, encryption, ranges=8)
    fs = pafs.LocalFileSystem()

    def exported(where: Path) -> list[str]:
        export = export_subject(fs, str(where), encryption, "acct-1", "user-1")
        return sorted(export.rows["event_id"].to_pylist())

    assert exported(root) == exported(plain)
    assert len(exported(root)) > 0


def test_erasure_reaches_compacted_files(
    compacted: tuple[Path, ParquetEncryption, dict[str, object]],
) -> None:
    root, encryption, _ = compacted
    before = _every_row(root, encryption)
    person = [r for r in before if (r["account_id"], r["user_id"]) == ("acct-1", "user-1")]
    assert any(r["retention_class"] != "billing" for r in person)

    report = erase_subject(
        pafs.LocalFileSystem(), str(root), encryption, POLICY, "acct-1", "user-1"
    )

    after = _every_row(root, encryption)
    left = [r for r in after if (r["account_id"], r["user_id"]) == ("acct-1", "user-1")]
    # Only the legal hold (billing) stays; everybody else's rows are untouched.
    assert all(r["retention_class"] == "billing" for r in left)
    assert len(left) == sum(1 for r in person if r["retention_class"] == "billing")
    others = sorted(
        r["event_id"] for r in before if (r["account_id"], r["user_id"]) != ("acct-1", "user-1")
    )
    assert others == sorted(
        r["event_id"] for r in after if (r["account_id"], r["user_id"]) != ("acct-1", "user-1")
    )
    assert report.files_rewritten > 0


def test_retention_sweep_reaches_compacted_files(
    compacted: tuple[Path, ParquetEncryption, dict[str, object]],
) -> None:
    root, encryption, _ = compacted
    before = _every_row(root, encryption)
    now = datetime(2024, 3, 1, tzinfo=UTC) + timedelta(days=200)
    expired = [r for r in before if r["expires_at"] is not None and r["expires_at"] <= now]
    assert 0 < len(expired) < len(before)

    sweep(pafs.LocalFileSystem(), str(root), POLICY, encryption, now, {})

    after = _every_row(root, encryption)
    assert sorted(r["event_id"] for r in after) == sorted(
        r["event_id"] for r in before if r not in expired
    )


def test_sieve_compact_waits_for_the_subject_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_new_keyring(tmp_path / "keys.json")
    encryption = ParquetEncryption(*Keyring.load(tmp_path / "keys.json").encryption_keys())
    root = tmp_path / "data"
    write_history(root, encryption, ranges=4)
    write_manifest(resolve_root(str(root)), Manifest(watermark=datetime(2025, 1, 1, tzinfo=UTC)))
    monkeypatch.setenv("SIEVE_DATA_ROOT", str(root))
    monkeypatch.setenv("SIEVE_KEYRING_FILE", str(tmp_path / "keys.json"))
    fs = pafs.LocalFileSystem()
    with maintenance_lock(fs, str(root)):  # an erasure or sweep is running
        busy = CliRunner().invoke(compact_command, [])
    assert isinstance(busy.exception, MaintenanceBusyError)
    assert not any(m.compaction for m in read_markers(fs, str(root)))
    # Facts alone need no keyring and no maintenance lock.
    with maintenance_lock(fs, str(root)):
        facts_only = CliRunner().invoke(compact_command, ["--facts-only"])
    assert facts_only.exit_code == 0, facts_only.output
    assert any(m.compaction for m in read_markers(fs, str(root)))


def test_compacting_after_erasure_keeps_the_erasure(tmp_path: Path) -> None:
    write_new_keyring(tmp_path / "keys.json")
    encryption = ParquetEncryption(*Keyring.load(tmp_path / "keys.json").encryption_keys())
    root = tmp_path / "data"
    write_history(root, encryption, ranges=8)
    erase_subject(pafs.LocalFileSystem(), str(root), encryption, POLICY, "acct-2", None)
    kept = sorted(r["event_id"] for r in _every_row(root, encryption))
    assert not [
        r
        for r in _every_row(root, encryption)
        if r["account_id"] == "acct-2" and r["retention_class"] != "billing"
    ]

    _compact(root, encryption, last=LATER)

    assert sorted(r["event_id"] for r in _every_row(root, encryption)) == kept
