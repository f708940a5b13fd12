"""The HTTP collector over real HTTP (aiohttp on 127.0.0.1) against the real session broker.

Each test has its own topic, so what a test reads back is exactly what the collector wrote.
Every request runs against a fresh application (``create_collector_app``) in its own event
loop (``asyncio.run``): no pytest async plugin, nothing shared between tests but the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestServer
from kafka.consumer.fetcher import ConsumerRecord

from schemas.events import Event
from streams.collector import create_collector_app
from streams.delivery_health import DeliveryState
from streams.producer import EventProducer
from tests.fixtures.collector_client import (
    ACCOUNT,
    KEY,
    MAX_BODY,
    OTHER_ACCOUNT,
    OTHER_KEY,
    RESPONSE_TIMEOUT_S,
    WRITE_KEYS,
    Collector,
    Reply,
    as_event,
    by_event_id,
    collector,
    decoded,
    http_request,
    page_view,
    raw_exchange,
    read_topic,
    run_against,
)
from tests.fixtures.kafka import KafkaBroker, TopicFactory

__all__ = ["collector"]  # the fixture, imported for pytest

pytestmark = pytest.mark.integration


# --- accepted batches -----------------------------------------------------------------------


def test_a_good_batch_is_acknowledged_and_lands_on_the_topic(collector: Collector) -> None:
    batch = [
        page_view(),
        page_view(path="/docs", geo={"country": "DE"}),
        {**page_view(), "type": "login", "method": "sso"},
    ]
    del batch[2]["path"]  # a login has no path

    reply = collector.post_json(batch)

    assert reply.status == 202, reply.body
    assert [r["index"] for r in reply.body] == [0, 1, 2]
    assert [r["event_id"] for r in reply.body] == [e["event_id"] for e in batch]
    assert {r["status"] for r in reply.body} == {"accepted"}
    records = collector.records()
    # Same events (decoded and compared, not bytes), keyed by their account.
    assert by_event_id(decoded(records)) == by_event_id([as_event(e) for e in batch])
    assert {record.key for record in records} == {ACCOUNT.encode()}
    # The answer's coordinates are where the broker put each event.
    stored = {(r.partition, r.offset): as_event_id(r) for r in records}
    assert {(r["partition"], r["offset"]): r["event_id"] for r in reply.body} == stored


def as_event_id(record: ConsumerRecord) -> str:
    return msgspec.json.decode(record.value, type=Event).event_id


def test_a_single_object_is_a_batch_of_one(collector: Collector) -> None:
    event = page_view()

    reply = collector.post_json(event)

    assert reply.status == 202, reply.body
    assert [r["event_id"] for r in reply.body] == [event["event_id"]]
    assert decoded(collector.records()) == [as_event(event)]


def test_ndjson_is_accepted_with_blank_lines_and_crlf(collector: Collector) -> None:
    events = [page_view(), page_view(path="/a"), page_view(path="/b")]
    lines = [msgspec.json.encode(e).decode() for e in events]
    body = f"{lines[0]}\r\n\n{lines[1]}\n{lines[2]}\n"

    reply = collector.post(body, content_type="application/x-ndjson")

    assert reply.status == 202, reply.body
    assert [r["index"] for r in reply.body] == [0, 1, 2]
    assert decoded(collector.records()) == [as_event(e) for e in events]


def test_content_type_parameters_are_allowed(collector: Collector) -> None:
    reply = collector.post_json([page_view()], content_type="application/json; charset=utf-8")

    assert reply.status == 202, reply.body


# --- refused batches: nothing is written ----------------------------------------------------


def test_one_bad_event_refuses_the_batch_and_names_its_field(collector: Collector) -> None:
    good, bad = page_view(), page_view(geo={"country": "Germany"})
    before = collector.end_offsets()

    reply = collector.post_json([good, bad, page_view()])

    assert reply.status == 400
    assert reply.body["error"] == "invalid_batch"
    assert [(p["index"], p["event_id"], p["path"]) for p in reply.body["problems"]] == [
        (1, bad["event_id"], "$.geo.country")
    ]
    assert reply.body["problems"][0]["code"] == "invalid_format"
    assert "Germany" not in reply.body["problems"][0]["reason"]  # reasons never quote values
    assert collector.end_offsets() == before
    assert collector.records() == []


def test_every_problem_of_every_event_is_reported(collector: Collector) -> None:
    missing_path = page_view()
    del missing_path["path"]
    batch = [
        page_view(),
        missing_path,
        page_view(occurred_at="2024-05-01T12:00:00", ip="999.1.1.1"),
        "not an event",
    ]

    reply = collector.post_json(batch)

    assert reply.status == 400
    found = {(p["index"], p["path"], p["code"]) for p in reply.body["problems"]}
    assert found == {
        (1, "$.path", "missing_field"),
        (2, "$.occurred_at", "naive_timestamp"),
        (2, "$.ip", "invalid_ip"),
        (3, "$", "not_an_object"),
    }
    assert reply.body["message"].startswith("3 of 4 events are invalid")
    assert collector.records() == []


def test_an_event_of_another_account_is_a_problem_of_that_event(collector: Collector) -> None:
    theirs = page_view(account=OTHER_ACCOUNT)

    reply = collector.post_json([page_view(), theirs])

    assert reply.status == 400
    assert [(p["index"], p["path"], p["code"]) for p in reply.body["problems"]] == [
        (1, "$.account_id", "account_mismatch")
    ]
    assert collector.records() == []
    # The same event with its own account's key is fine.
    assert collector.post_json([theirs], key=OTHER_KEY).status == 202
    assert [r.key for r in collector.records()] == [OTHER_ACCOUNT.encode()]


def test_a_line_that_is_not_json_is_reported_with_the_other_lines(
    collector: Collector,
) -> None:
    body = "\n".join(
        [
            msgspec.json.encode(page_view()).decode(),
            '{"type": "page_view",',
            msgspec.json.encode(page_view(path="")).decode(),
        ]
    )

    reply = collector.post(body, content_type="application/x-ndjson")

    assert reply.status == 400
    found = [(p["index"], p["path"], p["code"]) for p in reply.body["problems"]]
    assert found == [(1, "$", "invalid_json"), (2, "$.path", "too_short")]
    assert "line 2" in reply.body["problems"][0]["reason"]
    assert collector.records() == []


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"[", "invalid_json"), (b"[]", "empty_batch"), (b'"hello"', "not_a_batch")],
)
def test_a_body_that_is_no_batch_is_400(collector: Collector, body: bytes, code: str) -> None:
    reply = collector.post(body)

    assert reply.status == 400
    assert [(p["index"], p["code"]) for p in reply.body["problems"]] == [(None, code)]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer ", f"Bearer {KEY}x", f"Basic {KEY}", f"Bearer {KEY[:-1]}"],
    ids=["missing", "empty", "longer", "other-scheme", "prefix"],
)
def test_a_missing_or_unknown_key_is_401(collector: Collector, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    reply = collector.post_json([page_view()], key=None, headers=headers)

    assert reply.status == 401
    assert reply.body["error"] == "unauthorized"
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert KEY not in str(reply.body)
    assert collector.records() == []


def test_an_unsupported_content_type_is_415(collector: Collector) -> None:
    reply = collector.post(msgspec.json.encode([page_view()]), content_type="text/plain")

    assert reply.status == 415
    assert reply.body["supported"] == ["application/json", "application/x-ndjson"]
    assert collector.records() == []


def test_a_body_over_the_limit_is_413(collector: Collector) -> None:
    batch = [page_view(path="/" + "x" * 1000) for _ in range(MAX_BODY // 1000 + 1)]
    body = msgspec.json.encode(batch)
    assert len(body) > MAX_BODY

    reply = collector.post(body)

    assert reply.status == 413
    assert reply.body == {
        "error": "body_too_large",
        "message": f"the body exceeds {MAX_BODY} bytes; send smaller batches",
        "max_body_bytes": MAX_BODY,
    }
    assert collector.records() == []


def test_a_declared_length_over_the_limit_is_refused_before_any_body(
    collector: Collector,
) -> None:
    # A 1 GB Content-Length and no body at all: the answer can only come from the header.
    head = (
        "POST /v1/events HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {10**9}\r\n\r\n"
    ).encode()

    status, headers, body = run_against(collector.app(), lambda s: raw_exchange(s, head))

    assert status.startswith("HTTP/1.1 413")
    assert headers["connection"] == "close"
    assert msgspec.json.decode(body)["error"] == "body_too_large"
    assert collector.records() == []


def test_a_chunked_body_is_refused_once_past_the_limit_without_reading_on(
    collector: Collector,
) -> None:
    # One chunk just over the limit and then nothing more, not even the last chunk: the
    # collector can only answer (rather than hang) if it stops reading at the limit.
    chunk = b"[" + b" " * MAX_BODY
    request = (
        (
            "POST /v1/events HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"{len(chunk):x}\r\n"
        ).encode()
        + chunk
        + b"\r\n"
    )

    status, _, body = run_against(collector.app(), lambda s: raw_exchange(s, request))

    assert status.startswith("HTTP/1.1 413")
    assert msgspec.json.decode(body)["max_body_bytes"] == MAX_BODY
    assert collector.records() == []


def test_a_chunked_body_within_the_limit_is_accepted(collector: Collector) -> None:
    event = page_view()
    data = msgspec.json.encode([event])
    request = (
        (
            "POST /v1/events HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
            f"\r\n{len(data):x}\r\n"
        ).encode()
        + data
        + b"\r\n0\r\n\r\n"
    )

    status, _, body = run_against(collector.app(), lambda s: raw_exchange(s, request))

    assert status.startswith("HTTP/1.1 202"), body
    assert decoded(collector.records()) == [as_event(event)]


def test_expect_continue_is_refused_before_the_body_is_sent(collector: Collector) -> None:
    head = (
        "POST /v1/events HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {OTHER_KEY}x\r\nContent-Length: 100\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()

    status, _, _ = run_against(collector.app(), lambda s: raw_exchange(s, head))

    # A final answer instead of "100 Continue": the client never sends its body.
    assert status.startswith("HTTP/1.1 401")


# --- privacy signals ------------------------------------------------------------------------


def test_dnt_and_gpc_headers_raise_the_flags_of_every_event(collector: Collector) -> None:
    plain, said_no, set_already = page_view(), page_view(dnt=False), page_view(dnt=True)

    reply = collector.post_json([plain, said_no, set_already], headers={"DNT": "1"})

    assert reply.status == 202, reply.body
    stored = by_event_id(decoded(collector.records()))
    assert {event_id: e.dnt for event_id, e in stored.items()} == {
        plain["event_id"]: True,
        said_no["event_id"]: True,  # the person's browser outranks the site's SDK
        set_already["event_id"]: True,
    }
    assert not any(e.gpc for e in stored.values())

    gpc_event = page_view()
    assert collector.post_json([gpc_event], headers={"Sec-GPC": "1", "DNT": "0"}).status == 202
    stored = by_event_id(decoded(collector.records()))
    assert stored[gpc_event["event_id"]].gpc is True
    assert stored[gpc_event["event_id"]].dnt is False


def test_events_keep_their_flags_without_the_headers(collector: Collector) -> None:
    events = [page_view(), page_view(gpc=True)]

    assert collector.post_json(events).status == 202

    stored = by_event_id(decoded(collector.records()))
    assert [(stored[e["event_id"]].dnt, stored[e["event_id"]].gpc) for e in events] == [
        (False, False),
        (False, True),
    ]


# --- health and broker failures -------------------------------------------------------------


def test_healthz_is_200(collector: Collector) -> None:
    reply = run_against(collector.app(), lambda s: http_request(s, "GET", None, {}))

    assert (reply.status, reply.body) == (200, {"status": "ok"})


def test_a_broker_refusal_is_503_naming_every_unacknowledged_event(
    kafka: KafkaBroker, topic_factory: TopicFactory
) -> None:
    # The broker refuses every record of this topic (larger than its 1-byte limit): a real
    # broker-side failure, answered at once rather than after retries.
    topic = topic_factory(configs={"max.message.bytes": "1"})
    batch = [page_view(), page_view()]
    with EventProducer(kafka.bootstrap_servers, topic, client_id="collector-test") as producer:
        app = create_collector_app(
            producer=producer, write_keys=WRITE_KEYS, max_body_bytes=MAX_BODY
        )
        reply = run_against(
            app,
            lambda s: http_request(
                s,
                "POST",
                msgspec.json.encode(batch),
                {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            ),
        )

    assert reply.status == 503
    assert reply.body["error"] == "broker_unavailable"
    assert [(d["index"], d["event_id"]) for d in reply.body["not_acknowledged"]] == [
        (0, batch[0]["event_id"]),
        (1, batch[1]["event_id"]),
    ]
    assert all(d["reason"] for d in reply.body["not_acknowledged"])
    assert reply.body["acknowledged"] == []
    assert read_topic(kafka.bootstrap_servers, topic) == []


class SendObserver:
    """The real producer, plus an event set once the collector has handed it the batch."""

    def __init__(self, producer: EventProducer) -> None:
        self.producer = producer
        self.sent = threading.Event()

    def send(self, event: Event) -> Any:
        future = self.producer.send(event)
        self.sent.set()
        return future

    def health(self) -> DeliveryState:
        return self.producer.health()


@contextlib.contextmanager
def broker_stalled(kafka: KafkaBroker) -> Iterator[None]:
    """The session broker frozen (SIGSTOP) and thawed (SIGCONT): a real broker that stops
    answering for a while, as in a long GC pause or a network partition."""
    pid = kafka.broker.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_stalled_broker_is_503_after_the_ack_timeout_and_blocks_nothing_else(
    kafka: KafkaBroker, collector: Collector
) -> None:
    observer = SendObserver(collector.producer)
    app = create_collector_app(
        producer=observer, write_keys=WRITE_KEYS, max_body_bytes=MAX_BODY, ack_timeout_s=2.0
    )
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    warm_up, stalled = page_view(), page_view()

    async def exchange(server: TestServer) -> tuple[Reply, Reply, Reply, bool]:
        # First a batch the broker acknowledges: the producer then knows the topic's
        # leader, so during the stall send() returns at once and only the ack is missing.
        first = await http_request(server, "POST", msgspec.json.encode([warm_up]), headers)
        observer.sent.clear()
        with broker_stalled(kafka):
            post = asyncio.create_task(
                http_request(server, "POST", msgspec.json.encode([stalled]), headers)
            )
            # Only once the handler waits for the broker does /healthz go out.
            assert await asyncio.to_thread(observer.sent.wait, RESPONSE_TIMEOUT_S)
            health = await http_request(server, "GET", None, {})
            post_was_pending = not post.done()
            posted = await post
        return first, posted, health, post_was_pending

    first, posted, health, post_was_pending = run_against(app, exchange)

    assert first.status == 202, first.body
    assert health.status == 200
    assert post_was_pending  # the event loop served /healthz while the batch waited
    assert posted.status == 503
    assert posted.body["error"] == "broker_unavailable"
    assert [d["event_id"] for d in posted.body["not_acknowledged"]] == [stalled["event_id"]]
    assert "KafkaTimeoutError" in posted.body["not_acknowledged"][0]["reason"]
