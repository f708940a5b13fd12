"""The real Segment client (segment-analytics-python) against a real `sieve collect` and a real
`sieve worker`: track, page, screen and identify calls reach the raw topic, then the facts,
and the counts match; properties the policy does not declare are counted and stored nowhere.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from segment.analytics import Client

from streams.broker.control import free_ports
from streams.collector.metrics import CollectorMetrics
from streams.privacy.custom_events import parse_custom_events
from streams.privacy.retention import policy_text
from streams.topics import TopicSpec, create_topics
from tests.fixtures.collector_client import (
    KEY as CLIENT_KEY,
)
from tests.fixtures.collector_client import (
    Collector,
    Reply,
    collector,
    read_topic,
    recently,
    run_against,
)
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.pipeline_truth import read_identifiable
from tests.fixtures.worker_harness import WorkerProcess, WorkerSetup, wait_until

__all__ = ["collector"]  # the fixture, imported for pytest

pytestmark = pytest.mark.integration

TIMEOUT_S = 180.0
ACCOUNT = "acct-segment-1"
KEY = "seg-" + "c" * 28
# A custom event the test's policy declares, one property of each kind.
DECLARATION = """
[custom_events."Video Played"]
retention_class = "activity"
properties = { genre = "dimension", seconds = "metric", email = "identifiable", title = "dropped" }
"""
TRACKS, PAGES, SCREENS, IDENTIFIES, SIGN_INS = 7, 5, 2, 3, 4


@dataclass
class Running:
    setup: WorkerSetup
    worker: WorkerProcess
    collector_url: str
    metrics_url: str


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def answers(url: str) -> bool:
    try:
        return fetch(url)[0] == 200
    except OSError:
        return False


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


@pytest.fixture
def running(kafka: KafkaBroker, tmp_path: Path) -> Iterator[Running]:
    suffix = uuid.uuid4().hex[:10]
    raw_topic = f"test.segment.{suffix}"
    create_topics(kafka.bootstrap_servers, [TopicSpec(raw_topic, 3)])
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(None)[0] + DECLARATION)
    setup = WorkerSetup(
        kafka.bootstrap_servers,
        raw_topic,
        f"test.segment.dead.{suffix}",
        tmp_path,
        f"segment-{suffix}",
        extra_env={"SIEVE_POLICY_FILE": str(policy)},
    )
    keys_file = tmp_path / "write-keys.json"
    keys_file.write_text(json.dumps({ACCOUNT: [KEY]}))
    keys_file.chmod(0o600)
    port, metrics_port = free_ports(2)
    env = setup.env()
    env.update(
        SIEVE_WRITE_KEYS_FILE=str(keys_file),
        SIEVE_COLLECTOR_METRICS_PORT=str(metrics_port),
        SIEVE_COLLECTOR_METRICS_HOST="127.0.0.1",
    )
    worker = WorkerProcess(setup, "worker").start()
    with (tmp_path / "collector.log").open("ab") as log:
        collector = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "collect", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_until(
            lambda: answers(f"{base}/healthz") and answers(metrics_url),
            TIMEOUT_S,
            "the collector and its metrics listener",
        )
        yield Running(setup, worker, base, metrics_url)
    finally:
        collector.terminate()
        collector.wait(timeout=30)
        worker.stop()


def test_segment_client_calls_reach_the_facts_and_undeclared_properties_nowhere(
    running: Running, kafka: KafkaBroker
) -> None:
    # A property name and value no output may hold: fuzzed, so no file holds them by chance.
    undeclared_name = "p_" + secrets.token_hex(8)
    undeclared_value = "v-" + secrets.token_hex(12)
    identifiable_value = f"{secrets.token_hex(6)}@example.com"
    errors: list[Exception] = []
    client = Client(
        write_key=KEY,
        host=running.collector_url,
        on_error=lambda error, _batch: errors.append(error),
        max_retries=0,
        upload_size=5,  # several /v1/batch requests
    )
    for i in range(TRACKS):
        client.track(
            f"user-{i % 3}",
            "Video Played",
            {
                "genre": "drama",
                "seconds": 30 + i,
                "email": identifiable_value,
                "title": "a declared-dropped title",
                undeclared_name: undeclared_value,
            },
        )
    for i in range(SIGN_INS):
        client.track(f"user-{i}", "Signed In", {"method": "sso", undeclared_name: undeclared_value})
    for i in range(PAGES):
        client.page(f"user-{i}", properties={"path": f"/docs/{i}", "title": undeclared_value})
    for i in range(SCREENS):
        client.screen(anonymous_id=f"device-{i}", name="Home")
    for i in range(IDENTIFIES):
        client.identify(f"user-{i}", {"email": undeclared_value, undeclared_name: "x"})
    client.flush()
    client.join()
    assert errors == []
    segment_calls = TRACKS + SIGN_INS + PAGES + SCREENS + IDENTIFIES
    records = read_topic(kafka.bootstrap_servers, running.setup.raw_topic)
    assert len(records) == segment_calls
    # A producer that writes to Kafka without the collector: the worker applies the policy.
    direct = {
        "schema_version": 1,
        "type": "custom",
        "event_id": f"direct-{uuid.uuid4().hex}",
        "occurred_at": recently(minutes=1),
        "account_id": ACCOUNT,
        "name": "Video Played",
        "properties": {"genre": "comedy", "title": "declared dropped", undeclared_name: 5},
    }
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    producer.send(running.setup.raw_topic, json.dumps(direct).encode(), key=ACCOUNT.encode())
    producer.flush(timeout=30)
    producer.close()
    sent = segment_calls + 1
    raw = [json.loads(record.value) for record in records]  # the collector's
    assert Counter(event["type"] for event in raw) == {
        "custom": TRACKS + IDENTIFIES,
        "login": SIGN_INS,
        "page_view": PAGES + SCREENS,
    }
    videos = [e for e in raw if e.get("name") == "Video Played"]
    assert {frozenset(e["properties"]) for e in videos} == {
        frozenset({"genre", "seconds", "email"})
    }
    screens = [e for e in raw if e.get("path", "").startswith("screen:")]
    assert sorted(e["user_id"] for e in screens) == [f"device-{i}" for i in range(SCREENS)]
    assert {e["path"] for e in screens} == {"screen:Home"}

    wait_until(
        lambda: running.setup.committed_raw() >= sent,
        TIMEOUT_S,
        "the worker to commit every event",
        workers=[running.worker],
    )
    totals = running.setup.totals()
    assert totals["raw"] == totals["accepted"] == totals["facts"] == sent
    assert totals["dead_lettered"] == 0
    facts = dict(running.setup.fact_rows().aggregate("type, count(*)", "type").fetchall())
    assert facts == {
        "custom": TRACKS + IDENTIFIES + 1,
        "login": SIGN_INS,
        "page_view": PAGES + SCREENS,
    }
    assert totals["properties_dropped"] == 2  # the direct event's title and undeclared name
    # Declared dimensions and metrics reach the facts; an undeclared name (identify) does not.
    custom_facts = (
        running.setup.fact_rows()
        .filter("type = 'custom'")
        .project("event_name, dimensions, metrics")
        .fetchall()
    )
    videos_facts = sorted(
        (
            (name, dict(dims), dict(metrics).get("seconds"))
            for name, dims, metrics in custom_facts
            if name is not None
        ),
        key=lambda row: (row[2] is None, row[2] or 0.0),
    )
    assert videos_facts == [
        *[("Video Played", {"genre": "drama"}, 30.0 + i) for i in range(TRACKS)],
        ("Video Played", {"genre": "comedy"}, None),
    ]
    assert [row for row in custom_facts if row[0] is None] == [(None, {}, {})] * IDENTIFIES
    # Declared identifiable properties reach only the identifiable record, with the class.
    identifiable = read_identifiable(running.setup.data_root, running.setup.keyring_file)
    videos_kept = [
        (json.loads(props), cls)
        for kind, props, cls in zip(
            identifiable.column("type").to_pylist(),
            identifiable.column("properties").to_pylist(),
            identifiable.column("retention_class").to_pylist(),
            strict=True,
        )
        if kind == "custom" and "Video Played" in props
    ]
    expected = {"name": "Video Played", "properties": {"email": identifiable_value}}
    direct_kept = ({"name": "Video Played", "properties": {}}, "activity")
    assert sorted(videos_kept, key=str) == sorted(
        [(expected, "activity")] * TRACKS + [direct_kept], key=str
    )
    fact_bytes = b"".join(
        p.read_bytes() for p in (running.setup.data_root / "facts").rglob("*.parquet")
    )
    assert identifiable_value.encode() not in fact_bytes
    assert b"drama" in fact_bytes  # the search finds what the facts do hold

    # Undeclared: counted by the collector, absent from the topic and from every output file.
    _, text = fetch(running.metrics_url)
    undeclared = TRACKS + SIGN_INS + PAGES + 2 * IDENTIFIES  # the page's title is not a page field
    assert (
        metric(text, "sieve_collector_properties_dropped_total", reason="undeclared") == undeclared
    )
    assert (
        metric(text, "sieve_collector_properties_dropped_total", reason="declared_dropped")
        == TRACKS
    )
    topic_bytes = b"".join(record.value for record in records)  # the collector's records
    assert identifiable_value.encode() in topic_bytes  # the search can find what is there
    files = [p for p in running.setup.root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    for needle in (undeclared_name.encode(), undeclared_value.encode()):
        assert needle not in topic_bytes
        holding = [p for p in files if needle in p.read_bytes()]
        assert holding == [], holding


# --- the endpoints over HTTP, in-process (the collector fixture's topic) --------------------


def _post_segment(
    collector: Collector, path: str, body: object, authorization: str, **options: Any
) -> tuple[Reply, CollectorMetrics]:
    metrics = CollectorMetrics.create()
    app = collector.app(metrics=metrics, **options)

    async def exchange(server: TestServer) -> Reply:
        headers = {"Content-Type": "application/json", "Authorization": authorization}
        async with (
            ClientSession() as session,
            session.post(server.make_url(path), json=body, headers=headers) as response,
        ):
            return Reply(response.status, dict(response.headers), await response.json())

    return run_against(app, exchange), metrics


def _basic(key: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{key}:{password}".encode()).decode()


def _track(**fields: Any) -> dict[str, Any]:
    return {
        "messageId": f"m-{uuid.uuid4().hex}",
        "userId": "u-1",
        "event": "Signed In",
        "timestamp": recently(minutes=2),
        **fields,
    }


def test_each_call_path_takes_the_key_as_basic_auth(collector: Collector) -> None:
    calls = {
        "/v1/track": _track(),
        "/v1/page": {**_track(), "properties": {"path": "/p"}},
        "/v1/screen": {**_track(), "name": "Home"},
        "/v1/identify": {**_track(), "traits": {"email": "x@y.example"}},
    }
    for path, body in calls.items():
        reply, _ = _post_segment(collector, path, body, _basic(CLIENT_KEY))
        assert reply.status == 202, (path, reply.body)
    types = Counter(json.loads(r.value)["type"] for r in collector.records())
    assert types == {"login": 1, "page_view": 2, "custom": 1}


def test_a_wrong_key_or_scheme_is_401_and_sends_nothing(collector: Collector) -> None:
    for authorization in (_basic("nope-" + "x" * 20), "Basic !!!", f"Digest {CLIENT_KEY}", ""):
        reply, _ = _post_segment(collector, "/v1/track", _track(), authorization)
        assert reply.status == 401
        assert "Basic" in reply.headers["WWW-Authenticate"]
    assert collector.records() == []


def test_one_bad_call_refuses_the_batch_with_its_index(collector: Collector) -> None:
    body = {"batch": [{**_track(), "type": "track"}, {"type": "track", "event": "x"}]}
    reply, _ = _post_segment(collector, "/v1/batch", body, _basic(CLIENT_KEY))
    assert reply.status == 400
    assert [(p["index"], p["code"]) for p in reply.body["problems"]] == [(1, "missing_field")]
    assert collector.records() == []


def test_dropped_properties_are_counted_in_the_collectors_metrics(collector: Collector) -> None:
    custom = parse_custom_events({"Played": {"properties": {"n": "metric", "t": "dropped"}}})
    body = {
        "batch": [
            {**_track(event="Played", properties={"n": 1, "t": "x", "u": "y", "v": 2})}
            | {"type": "track"}
        ]
    }
    reply, metrics = _post_segment(
        collector, "/v1/batch", body, _basic(CLIENT_KEY), custom_events=custom
    )
    assert reply.status == 202, reply.body
    sample = metrics.registry.get_sample_value
    assert sample("sieve_collector_properties_dropped_total", {"reason": "undeclared"}) == 2
    assert sample("sieve_collector_properties_dropped_total", {"reason": "declared_dropped"}) == 1
    (record,) = collector.records()
    assert json.loads(record.value)["properties"] == {"n": 1}


def test_custom_events_posted_as_events_keep_only_declared_properties(
    collector: Collector,
) -> None:
    custom = parse_custom_events({"Played": {"properties": {"n": "metric", "t": "dropped"}}})
    event = {
        "schema_version": 1,
        "type": "custom",
        "event_id": f"e-{uuid.uuid4().hex}",
        "occurred_at": recently(minutes=1),
        "account_id": "acct-collector-1",
        "name": "Played",
        "properties": {"n": 2, "t": "x", "u": "y"},
    }
    reply, metrics = _post_segment(
        collector, "/v1/events", [event], f"Bearer {CLIENT_KEY}", custom_events=custom
    )
    assert reply.status == 202, reply.body
    (record,) = collector.records()
    assert json.loads(record.value)["properties"] == {"n": 2}
    sample = metrics.registry.get_sample_value
    assert sample("sieve_collector_properties_dropped_total", {"reason": "undeclared"}) == 1
    assert sample("sieve_collector_properties_dropped_total", {"reason": "declared_dropped"}) == 1
    misfit = {**event, "event_id": "e-2", "properties": {"n": "not a number"}}
    reply, _ = _post_segment(
        collector, "/v1/events", [misfit], f"Bearer {CLIENT_KEY}", custom_events=custom
    )
    assert reply.status == 400
    assert [p["code"] for p in reply.body["problems"]] == ["property_kind_mismatch"]
