"""Monitoring of a real pipeline: a `sieve collect` and a `sieve worker` process on the
session broker, events posted over HTTP and malformed records written straight to the raw
topic; then both /metrics scraped (issue 13.3, issue 12.3).

Shows: both expositions parse with prometheus_client's parser; the counters add up to what
was sent; the histograms move under load (their counts grow from zero, the end-to-end lag
observes every committed record once, and no lag is longer than the test itself); every
metric the Grafana dashboard queries is exposed; and a worker whose output is a file logs
plain status lines with no escape code.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streams.broker.control import free_ports
from streams.topics import TopicSpec, create_topics
from streams.worker.commands import committed_totals
from tests.fixtures.collector_client import page_view
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.worker_harness import WorkerProcess, WorkerSetup, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILE = ROOT / "monitoring" / "grafana" / "dashboards" / "sieve.json"
ACCOUNTS = {f"acct-monitor-{i}": f"km{i}-" + "m" * 28 for i in range(3)}
BATCHES_PER_ACCOUNT = 2
EVENTS_PER_BATCH = 100
RESENT = 5  # events posted again: the worker finds them duplicates
MALFORMED = 4  # raw records that are not JSON: dead-lettered as invalid_json
ACCEPTED = len(ACCOUNTS) * BATCHES_PER_ACCOUNT * EVENTS_PER_BATCH
RAW = ACCEPTED + RESENT + MALFORMED
TIMEOUT_S = 180.0
PLAIN_STATUS = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] sieve worker: [\d,]+ events/s, lag [\d,]+ records on"
    r" \d+ partitions?, [\d,]+ ranges committed \(([\d,]+) records\), [\d,]+ dead letters$",
    re.MULTILINE,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Monitored:
    setup: WorkerSetup
    worker: WorkerProcess
    worker_metrics_url: str
    collector_metrics_url: str
    before: str  # the worker's /metrics once its partitions were assigned, before any event
    after: str  # the worker's /metrics once every record was committed
    collector: str  # the collector's /metrics after the requests
    sent_at: float  # wall clock before the first event was sent
    scraped_at: float  # wall clock once ``after`` was scraped


def fetch(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def answers(url: str) -> bool:
    try:
        return fetch(url)[0] == 200
    except OSError:
        return False


def request(url: str, body: bytes, headers: dict[str, str], method: str = "POST") -> int:
    sent = urllib.request.Request(url, data=body or None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(sent, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def buckets(text: str, name: str) -> list[tuple[float, float]]:
    """``(le, cumulative count)`` of a histogram without labels, in the exposition's order."""
    found = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{name}_bucket":
                found.append((float(s.labels["le"]), s.value))
    return found


def collector_process(
    setup: WorkerSetup, port: int, metrics_port: int, keys_file: Path
) -> subprocess.Popen[bytes]:
    env = setup.env()
    env.update(
        SIEVE_WRITE_KEYS_FILE=str(keys_file),
        SIEVE_COLLECTOR_METRICS_PORT=str(metrics_port),
        SIEVE_COLLECTOR_METRICS_HOST="127.0.0.1",
    )
    with (setup.root / "collector.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "collect", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def monitored(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    root = tmp_path_factory.mktemp("monitoring")
    suffix = uuid.uuid4().hex[:10]
    raw_topic = f"test.monitoring.{suffix}"
    create_topics(kafka.bootstrap_servers, [TopicSpec(raw_topic, 3)])
    setup = WorkerSetup(
        kafka.bootstrap_servers,
        raw_topic,
        f"test.monitoring.dead.{suffix}",
        root,
        f"monitoring-{suffix}",
        extra_env={"SIEVE_STATUS_INTERVAL_SECONDS": "1"},
    )
    keys_file = root / "write-keys.json"
    keys_file.write_text(json.dumps({account: [key] for account, key in ACCOUNTS.items()}))
    keys_file.chmod(0o600)
    port, metrics_port = free_ports(2)
    worker = WorkerProcess(setup, "worker").start()
    collector = collector_process(setup, port, metrics_port, keys_file)
    try:
        worker_url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
        collector_url = f"http://127.0.0.1:{metrics_port}/metrics"
        events_url = f"http://127.0.0.1:{port}/v1/events"

        def assigned() -> bool:
            # The lag gauge has a sample per partition once the worker owns them all.
            return answers(worker_url) and len(_lag(fetch(worker_url)[1])) == 3

        wait_until(assigned, TIMEOUT_S, "the worker to own the 3 partitions", workers=[worker])
        wait_until(
            lambda: answers(f"http://127.0.0.1:{port}/healthz") and answers(collector_url),
            TIMEOUT_S,
            "the collector and its metrics listener",
        )
        before = fetch(worker_url)[1]

        sent_at = time.time()
        sent: list[dict[str, object]] = []
        for account, key in ACCOUNTS.items():
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
            for _ in range(BATCHES_PER_ACCOUNT):
                batch = [page_view(account) for _ in range(EVENTS_PER_BATCH)]
                assert request(events_url, msgspec.json.encode(batch), headers) == 202
                sent.extend(batch)
        first_account, first_key = next(iter(ACCOUNTS.items()))
        good = {"Content-Type": "application/json", "Authorization": f"Bearer {first_key}"}
        resend = [e for e in sent if e["account_id"] == first_account][:RESENT]
        assert request(events_url, msgspec.json.encode(resend), good) == 202
        assert request(events_url, b"[]", {**good, "Authorization": "Bearer " + "x" * 30}) == 401
        assert request(events_url, b"[{]", good) == 400
        assert request(f"http://127.0.0.1:{port}/no/such/page", b"", {}, method="GET") == 404
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        for _ in range(MALFORMED):
            producer.send(raw_topic, b"this is not JSON", key=first_account.encode())
        producer.flush(timeout=30)
        producer.close()

        wait_until(
            lambda: setup.committed_raw() == RAW,
            TIMEOUT_S,
            f"{RAW} committed records",
            workers=[worker],
        )
        # The counters move right after each marker is written, and the lag gauge is
        # refreshed every 5 s: wait for both to have caught up.
        wait_until(
            lambda: (
                value(after := fetch(worker_url)[1], "sieve_raw_records_total") == RAW
                and sum(_lag(after).values()) == 0
            ),
            60,
            "the worker's metrics to show every committed record and no lag",
            workers=[worker],
        )
        after = fetch(worker_url)[1]
        scraped_at = time.time()
        yield Monitored(
            setup=setup,
            worker=worker,
            worker_metrics_url=worker_url,
            collector_metrics_url=collector_url,
            before=before,
            after=after,
            collector=fetch(collector_url)[1],
            sent_at=sent_at,
            scraped_at=scraped_at,
        )
    finally:
        if collector.poll() is None:
            os.killpg(collector.pid, signal.SIGTERM)
            try:
                collector.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(collector.pid, signal.SIGKILL)
                collector.wait(timeout=30)
        worker.stop()


def _lag(text: str) -> dict[str, float]:
    return {
        labels[0][1]: number
        for (name, labels), number in samples(text).items()
        if name == "sieve_consumer_lag"
    }


# --- the worker ---------------------------------------------------------------------------


def test_the_workers_metrics_parse_and_add_up_to_what_was_sent(monitored: Monitored) -> None:
    text = monitored.after
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["sieve_raw_records"].type == "counter"
    assert families["sieve_end_to_end_lag_seconds"].type == "histogram"
    assert families["sieve_consumer_lag"].type == "gauge"

    assert value(text, "sieve_raw_records_total") == RAW
    assert value(text, "sieve_accepted_total") == ACCEPTED
    assert value(text, "sieve_duplicates_total") == RESENT
    assert value(text, "sieve_dead_lettered_total", reason="invalid_json") == MALFORMED
    assert value(text, "sieve_facts_total") == ACCEPTED
    assert value(text, "sieve_processed_records_total") == RAW
    totals = monitored.setup.totals()
    assert value(text, "sieve_ranges_committed_total") == totals["ranges"] > 0
    assert value(text, "sieve_bytes_written_total") == totals["bytes_written"] > 0
    _, _, identifiable, _ = committed_totals(
        str(monitored.setup.data_root), monitored.setup.raw_topic
    )
    assert identifiable and sum(identifiable.values()) > 0
    for retention_class, count in identifiable.items():
        exposed = value(text, "sieve_identifiable_records_total", retention_class=retention_class)
        assert exposed == count, retention_class
    assert set(_lag(text)) == {"0", "1", "2"}


def test_the_workers_histograms_move_under_load(monitored: Monitored) -> None:
    before, after = monitored.before, monitored.after
    for histogram in (
        "sieve_batch_processing_seconds",
        "sieve_range_write_seconds",
        "sieve_end_to_end_lag_seconds",
    ):
        assert value(before, f"{histogram}_count") == 0, histogram
        count = value(after, f"{histogram}_count")
        assert count > 0, histogram
        cumulative = buckets(after, histogram)
        bounds = [le for le, _ in cumulative]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf"), histogram
        counts = [n for _, n in cumulative]
        assert counts == sorted(counts), f"{histogram}: buckets must be cumulative"
        assert counts[-1] == count, histogram
        assert value(after, f"{histogram}_sum") > 0, histogram

    ranges = value(after, "sieve_ranges_committed_total")
    assert value(after, "sieve_range_write_seconds_count") == ranges
    # Every committed record is observed once (each has its Kafka timestamp)...
    assert value(after, "sieve_end_to_end_lag_seconds_count") == RAW
    # ...and none waited longer than the whole test has run since the first send.
    elapsed = monitored.scraped_at - monitored.sent_at
    covering = min(le for le, _ in buckets(after, "sieve_end_to_end_lag_seconds") if le >= elapsed)
    assert value(after, "sieve_end_to_end_lag_seconds_bucket", le=_le(covering)) == RAW
    assert value(after, "sieve_end_to_end_lag_seconds_sum") <= RAW * elapsed


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(bound))


def test_a_worker_whose_output_is_a_file_logs_plain_status_lines(monitored: Monitored) -> None:
    def log() -> str:
        return monitored.worker.log_path.read_text(errors="replace")

    def committed_in_status() -> list[int]:
        return [int(m.group(1).replace(",", "")) for m in PLAIN_STATUS.finditer(log())]

    wait_until(
        lambda: RAW in committed_in_status(),
        30,
        f"a status line with {RAW} committed records",
        workers=[monitored.worker],
    )
    assert len(committed_in_status()) >= 2  # one a second (SIEVE_STATUS_INTERVAL_SECONDS=1)
    text = log()
    for code in ("\x1b", "\r", "\b"):  # no cursor movement, no erase, no colour
        assert code not in text, f"{code!r} in the worker's log"


# --- the collector --------------------------------------------------------------------------


def test_the_collectors_metrics_parse_and_count_every_answer(monitored: Monitored) -> None:
    text = monitored.collector
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["sieve_collector_requests"].type == "counter"
    assert families["sieve_collector_request_seconds"].type == "histogram"

    posted = len(ACCOUNTS) * BATCHES_PER_ACCOUNT + 1
    for route, status, count in (
        ("/v1/events", "202", posted),
        ("/v1/events", "401", 1),
        ("/v1/events", "400", 1),
        ("unmatched", "404", 1),
    ):
        labels = {"route": route, "status": status}
        assert value(text, "sieve_collector_requests_total", **labels) == count, labels
        assert value(text, "sieve_collector_request_seconds_count", **labels) == count, labels
    assert value(text, "sieve_collector_requests_total", route="/healthz", status="200") >= 1
    assert value(text, "sieve_collector_events_accepted_total") == ACCEPTED + RESENT
    # 202 means the broker acknowledged: a round trip to it, well under the ack deadline.
    latency = value(text, "sieve_collector_request_seconds_sum", route="/v1/events", status="202")
    assert 0 < latency < posted * 10


# --- the dashboard --------------------------------------------------------------------------


def test_every_metric_the_dashboard_queries_is_exposed(monitored: Monitored) -> None:
    exposed = {name for name, _ in samples(monitored.after)} | {
        name for name, _ in samples(monitored.collector)
    }
    board = json.loads(DASHBOARD_FILE.read_text())
    queried: set[str] = set()
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            queried |= metric_names(target["expr"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            queried |= set(re.findall(r"label_values\((\w+)", variable["definition"]))
    assert len(queried) >= 15, queried  # the parser below found the panels' metrics
    assert queried <= exposed, f"queried but not exposed: {sorted(queried - exposed)}"


KEYWORDS = {"and", "or", "unless", "offset", "bool", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, aggregations, label names
    and values, ranges and grouping clauses left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, status) (rate(x_seconds_bucket{job=~"$j",'
        ' route="/v1/events"}[$__rate_interval]))) / on (job) y_total and z'
    )
    assert metric_names(expr) == {"x_seconds_bucket", "y_total", "z"}


# --- a worker in a terminal -------------------------------------------------------------------


def test_a_worker_in_a_terminal_redraws_one_live_line(kafka: KafkaBroker, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:10]
    raw_topic = f"test.monitoring.tty.{suffix}"
    create_topics(kafka.bootstrap_servers, [TopicSpec(raw_topic, 1)])
    setup = WorkerSetup(
        kafka.bootstrap_servers, raw_topic, f"{raw_topic}.dead", tmp_path, f"tty-{suffix}"
    )
    env = setup.env()
    env.update(SIEVE_METRICS_PORT=str(free_ports(1)[0]), TERM="xterm")
    screen = bytearray()
    main, secondary = pty.openpty()
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        start_new_session=True,
    )
    os.close(secondary)

    def read_screen() -> None:
        with contextlib.suppress(OSError):  # EIO once the worker closed the terminal
            while chunk := os.read(main, 4096):
                screen.extend(chunk)

    reader = threading.Thread(target=read_screen, daemon=True)
    reader.start()
    try:
        frame = b"\r\x1b[2K"
        wait_until(
            lambda: screen.count(frame + b"0 events/s, lag 0, 0 ranges committed") >= 2,
            TIMEOUT_S,
            "a live line redrawn on the terminal",
        )
        # faust's spinner (which hid the cursor and wrote backspaces) is gone.
        assert b"\x1b[?25l" not in screen and b"\x08" not in screen
        assert "starting➢".encode() not in screen
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)
        reader.join(timeout=10)
        os.close(main)
