"""The collector's metrics: every answer counted and timed by route and status, events
accepted counted once acknowledged. The producer here is a stand-in that acknowledges at
once (or never); the real collector and broker are tested in tests/integration/
test_monitoring.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from kafka.errors import KafkaTimeoutError
from prometheus_client.parser import text_string_to_metric_families

from schemas.events import Event
from streams.collector import create_collector_app
from streams.collector.metrics import CollectorMetrics
from streams.delivery_health import DeliveryState
from streams.monitoring.exposition import metrics_app

ACCOUNT = "acct-metrics"
KEY = "km-" + "c" * 29


@dataclass(frozen=True)
class Stored:
    partition: int
    offset: int


class Acknowledged:
    """A future already resolved, as kafka-python's ``FutureRecordMetadata`` once acked."""

    def __init__(self, stored: Stored | None) -> None:
        self.stored = stored

    def get(self, timeout: float | None = None) -> Stored:
        if self.stored is None:
            raise KafkaTimeoutError("no broker")
        return self.stored


class InstantProducer:
    """Acknowledges every event at once, or fails every one (``broken``)."""

    def __init__(self, *, broken: bool = False) -> None:
        self.broken = broken
        self.sent = 0

    def send(self, event: Event) -> Acknowledged:
        if self.broken:
            return Acknowledged(None)
        self.sent += 1
        return Acknowledged(Stored(0, self.sent - 1))

    def health(self) -> DeliveryState:
        return DeliveryState(ok=not self.broken)


def page_view() -> dict[str, object]:
    occurred = datetime.now(UTC) - timedelta(minutes=5)
    return {
        "type": "page_view",
        "schema_version": 1,
        "event_id": f"ev-{uuid.uuid4().hex}",
        "occurred_at": occurred.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "account_id": ACCOUNT,
        "user_id": "user-1",
        "path": "/pricing",
    }


async def exchange(
    server: TestServer,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> int:
    async with (
        ClientSession() as session,
        session.request(method, server.make_url(path), data=body, headers=headers) as response,
    ):
        await response.read()
        return response.status


def scrape(metrics: CollectorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async def get() -> str:
        async with (
            TestServer(metrics_app(metrics.registry), host="127.0.0.1") as server,
            ClientSession() as session,
            session.get(server.make_url("/metrics")) as response,
        ):
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return await response.text()

    text = asyncio.run(get())
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def run_requests(producer: InstantProducer, metrics: CollectorMetrics) -> None:
    app = create_collector_app(
        producer=producer,
        write_keys={ACCOUNT: [KEY]},
        max_body_bytes=64 * 1024,
        ack_timeout_s=2.0,
        metrics=metrics,
    )
    good = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}

    async def scenario() -> list[int]:
        async with TestServer(app, host="127.0.0.1") as server:
            return [
                await exchange(
                    server, "POST", "/v1/events", msgspec.json.encode([page_view()] * 1), good
                ),
                await exchange(
                    server,
                    "POST",
                    "/v1/events",
                    msgspec.json.encode([page_view(), page_view()]),
                    good,
                ),
                await exchange(
                    server,
                    "POST",
                    "/v1/events",
                    b"[]",
                    {**good, "Authorization": "Bearer nope-" + "x" * 20},
                ),
                await exchange(server, "POST", "/v1/events", b"[{]", good),
                await exchange(server, "GET", "/healthz"),
                await exchange(server, "GET", "/no/such/page"),
                await exchange(
                    server,
                    "POST",
                    "/v1/events",
                    b"[]",
                    {"Content-Type": "application/json", "Expect": "100-continue"},
                ),
            ]

    statuses = asyncio.run(scenario())
    sent, health = (503, 503) if producer.broken else (202, 200)
    assert statuses == [sent, sent, 401, 400, health, 404, 401]


def test_every_answer_is_counted_and_timed_by_route_and_status() -> None:
    metrics = CollectorMetrics.create()
    run_requests(InstantProducer(), metrics)
    got = scrape(metrics)

    def requests(route: str, status: str) -> float:
        return got[("sieve_collector_requests_total", (("route", route), ("status", status)))]

    def timed(route: str, status: str) -> float:
        key = ("sieve_collector_request_seconds_count", (("route", route), ("status", status)))
        return got[key]

    assert requests("/v1/events", "202") == timed("/v1/events", "202") == 2
    # One refused by its key, one refused before its body by the 100-continue check.
    assert requests("/v1/events", "401") == timed("/v1/events", "401") == 2
    assert requests("/v1/events", "400") == 1
    assert requests("/healthz", "200") == 1
    assert requests("unmatched", "404") == 1
    assert got[("sieve_collector_events_accepted_total", ())] == 3
    # Latencies are real durations: positive, and every one under the exchange's bound.
    summed = got[
        ("sieve_collector_request_seconds_sum", (("route", "/v1/events"), ("status", "202")))
    ]
    assert 0 < summed < 10
    within = (
        "sieve_collector_request_seconds_bucket",
        (("le", "10.0"), ("route", "/v1/events"), ("status", "202")),
    )
    assert got[within] == 2


def test_unacknowledged_events_are_not_counted_as_accepted() -> None:
    metrics = CollectorMetrics.create()
    run_requests(InstantProducer(broken=True), metrics)
    got = scrape(metrics)
    assert got[("sieve_collector_events_accepted_total", ())] == 0
    key = ("sieve_collector_requests_total", (("route", "/v1/events"), ("status", "503")))
    assert got[key] == 2
