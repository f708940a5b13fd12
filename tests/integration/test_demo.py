"""`sieve demo` end to end against the session broker: its invoice is `sieve pricing`'s.

The demo's core runs twice on the same topics, group and data root: the second run must
replace the first one's data and skip its records, so both report the same numbers.
"""

from __future__ import annotations

import base64
import io
import json
import re
import stat
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from aggregations.commands import pricing_command
from aggregations.render import invoice_document
from streams.demo import (
    DemoError,
    DemoOptions,
    DemoResult,
    Month,
    prepare_data_root,
    run_demo,
)
from streams.producer import EventProducer
from streams.settings import Settings
from tests.fixtures.kafka import KafkaBroker, TopicFactory

EVENTS = 15_000
LEFTOVERS = 37  # records of an interrupted run, never consumed
NOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)  # the demo invoices October 2026
GRACE = timedelta(hours=1)


def _settings(kafka: KafkaBroker, topic_factory: TopicFactory, root: Path) -> Settings:
    # Every value the demo uses is explicit: a SIEVE_* variable in the shell cannot leak in.
    return Settings(
        bootstrap_servers=kafka.bootstrap_servers,
        raw_topic=topic_factory(partitions=3),
        dead_letter_topic=topic_factory(partitions=3),
        consumer_group=f"test-demo-{uuid.uuid4().hex[:8]}",
        data_root=str(root / "data"),
        work_dir=root / "work",
        keyring_file=None,
        price_plan_file=None,
        roll_interval_seconds=1.0,
    )


def _run(settings: Settings, kafka: KafkaBroker, workers: int = 1) -> tuple[DemoResult, str]:
    out = io.StringIO()
    # As wide as `sieve pricing` prints when not on a terminal, so the tables match.
    console = Console(file=out, width=100_000)
    options = DemoOptions(
        events=EVENTS, workers=workers, bootstrap=kafka.bootstrap_servers, stall_timeout_s=120
    )
    result = run_demo(settings, options, now=NOW, console=console)
    return result, out.getvalue()


def _pricing(settings: Settings, period: str, fmt: str) -> str:
    done = CliRunner().invoke(
        pricing_command,
        ["--period", period, "--format", fmt],
        env={"SIEVE_DATA_ROOT": settings.data_root, "SIEVE_PRICE_PLAN_FILE": None},
    )
    assert done.exit_code == 0, done.output
    return done.output


def _totals_from_json(text: str) -> dict[str, Decimal]:
    """Each account's total, added up from its lines (so the lines are checked too)."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for line in json.loads(text)["lines"]:
        totals[line["account_id"]] += Decimal(line["amount"])
    return dict(totals)


def _key_material(keyring_file: Path) -> list[str]:
    document = json.loads(keyring_file.read_text())
    keys = [
        *document["pseudonymization"]["keys"].values(),
        *document["encryption"]["keys"].values(),
    ]
    return keys + [base64.b64decode(key).hex() for key in keys]


def test_demo_invoice_is_sieve_pricing_and_counts_add_up(
    kafka: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    settings = _settings(kafka, topic_factory, tmp_path)
    result, printed = _run(settings, kafka)

    assert result.month.name == "2026-10"
    # The month is closed (traffic runs past its end), so every day of it is invoiced.
    assert result.published.watermark is not None
    assert result.published.watermark >= result.month.end + settings.grace_period

    # Invoice totals: the demo's equal `sieve pricing --format json`'s, exactly, as Decimals;
    # so do the lines (their exact quantities differ from account to account).
    demo_totals = {total.account_id: total.amount for total in result.invoice.totals}
    pricing_json = _pricing(settings, "2026-10", "json")
    assert demo_totals == _totals_from_json(pricing_json)
    assert invoice_document(result.invoice) == json.loads(pricing_json)
    assert json.loads(pricing_json)["status"] == "final"
    assert len(demo_totals) == DemoOptions().accounts
    assert all(isinstance(amount, Decimal) for amount in demo_totals.values())
    # ... and the printed invoice is the command's table, character for character.
    assert _pricing(settings, "2026-10", "table") in printed

    # Counts add up, and match what the generator planted.
    counts = result.counts
    assert counts["raw"] == EVENTS == result.truth.records
    assert counts["raw"] == counts["accepted"] + counts["duplicates"] + result.dead_lettered
    assert counts["accepted"] == result.truth.by_kind["event"]
    assert counts["duplicates"] == result.truth.by_kind["duplicate"] > 0
    assert result.dead_lettered == result.truth.by_kind["malformed"] > 0
    assert dict(result.dead_letters) == {
        reason: n for reason, n in result.truth.malformed_by_reason.items() if n
    }

    # Outputs: the dashboard page and the analysts' catalog, both in the data root.
    data_root = Path(settings.data_root)
    assert result.dashboard == data_root / "dashboard.html"
    assert result.dashboard.stat().st_size > 0
    assert "<html" in result.dashboard.read_text(encoding="utf-8")[:500].lower()
    assert result.catalog == data_root / "catalog-analyst.duckdb"
    assert result.catalog.is_file()
    assert str(result.dashboard) in printed

    # The key file was made private, and no key material was printed.
    keyring_file = Path(settings.work_dir) / "keyring.json"
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600
    assert not [key for key in _key_material(keyring_file) if key in printed]

    # An interrupted run left records nobody consumed; then the demo runs again on the
    # same topics, group and data root: fresh data, the leftovers skipped, same numbers;
    # with two workers sharing the partitions this time (a machine of three cores or more).
    with EventProducer(kafka.bootstrap_servers, settings.raw_topic) as producer:
        for n in range(LEFTOVERS):
            producer.send_raw(b"acct-leftover", f"leftover {n}".encode())
        producer.flush(30)
    again, printed_again = _run(settings, kafka, workers=2)
    assert "Stopping the workers: clean, clean" in printed_again
    assert (Path(settings.work_dir) / "demo-worker-2.log").is_file()  # its own log
    assert "emptied: it held the previous demo's data" in printed_again
    # At least the leftovers: more if the first worker was stopped before its last Kafka
    # commit (its commit markers, not Kafka's offsets, are the truth of what it finished).
    skipped = re.search(r"skips ([\d,]+) earlier records", printed_again)
    assert skipped is not None and int(skipped.group(1).replace(",", "")) >= LEFTOVERS
    assert again.counts["raw"] == EVENTS
    assert {t.account_id: t.amount for t in again.invoice.totals} == demo_totals
    assert _totals_from_json(_pricing(settings, "2026-10", "json")) == demo_totals


def test_the_month_is_the_previous_full_utc_month() -> None:
    first_of_january = datetime(2027, 1, 1, 0, 5, tzinfo=UTC)
    december = Month.before(first_of_january)
    assert december.name == "2026-12"
    assert (december.start, december.end) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert december.days == (date(2026, 12, 1), date(2026, 12, 31))
    # Early on the 1st, traffic stops at the current hour: no events from the future.
    assert december.traffic_end(first_of_january, GRACE) == datetime(2027, 1, 1, tzinfo=UTC)
    # Later, it runs past the month's end by more than the grace period (closing the month).
    october = Month.before(NOW)
    assert october.traffic_end(NOW, GRACE) > october.end + GRACE


def test_prepare_data_root_refuses_data_it_did_not_make(tmp_path: Path) -> None:
    month = Month.before(NOW)
    foreign = tmp_path / "real-data"
    (foreign / "facts").mkdir(parents=True)
    with pytest.raises(DemoError, match="did not make"):
        prepare_data_root(str(foreign), month)
    assert (foreign / "facts").is_dir()

    own = tmp_path / "demo-data"
    assert prepare_data_root(str(own), month) == "new"
    (own / "facts").mkdir()
    assert prepare_data_root(str(own), month).startswith("emptied")
    assert [p.name for p in own.iterdir()] == [".sieve-demo.json"]
