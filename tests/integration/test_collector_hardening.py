"""The collector against hostile or broken clients (issue 14, item 8), over real HTTP and the
real session broker.

Each test failed on the code before: deep bodies answered 500, a body that is not gzip 500,
``br2`` was taken for plain bytes, half-open connections were held for good, a stalled body
hung the request, any occurred_at was accepted, and 12 concurrent 1 MB batches of invalid
events from one client made another client's valid request wait 49.5 s.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib

import msgspec
import pytest
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer

from schemas.events import MAX_NESTING_DEPTH
from tests.fixtures.collector_client import (
    KEY,
    OTHER_ACCOUNT,
    OTHER_KEY,
    RESPONSE_TIMEOUT_S,
    Collector,
    Reply,
    as_event,
    collector,
    decoded,
    page_view,
    recently,
    run_against,
)

__all__ = ["collector"]  # the fixture, imported for pytest

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


# --- bodies a parser cannot be trusted with ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "where"),
    [
        ("[" + msgspec.json.encode(page_view()).decode()[:-1] + ',"x":' + _deep(500) + "}]",
         "application/json", 0),
        ("[" + msgspec.json.encode(page_view()).decode()[:-1] + ',"x":' + _deep(3000) + "}]",
         "application/json", None),  # too deep for msgspec to even skip: the whole body
        (_deep(5000), "application/json", None),  # no event at all, just depth
        ("[" * 15000, "application/json", None),  # never closed
        ('{"type":"login","x":' + _deep(MAX_NESTING_DEPTH) + "}", "application/json", None),
        ("\n".join([msgspec.json.encode(page_view()).decode(), _deep(2000)]),
         "application/x-ndjson", 1),
    ],
    ids=[
        "event-500-deep", "event-3000-deep", "body-5000-deep", "unclosed", "one-object-33-deep",
        "ndjson-line",
    ],
)  # fmt: skip
def test_deep_nesting_is_a_400_never_a_500(
    collector: Collector, body: str, content_type: str, where: int | None
) -> None:
    reply = collector.post(body, content_type=content_type)

    assert reply.status == 400, reply.body
    problems = [(p["index"], p["code"]) for p in reply.body["problems"]]
    assert (where, "too_deep") in problems
    assert collector.records() == []


# --- content codings ------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "GZIP", "deflate", "deflate-raw", "identity"], ids=str)
def test_supported_codings_are_decoded(collector: Collector, coding: str) -> None:
    event = page_view()
    plain = msgspec.json.encode([event])
    body = {
        "gzip": gzip.compress,
        "GZIP": gzip.compress,
        "deflate": zlib.compress,
        "deflate-raw": lambda data: zlib.compress(data, wbits=-15),
        "identity": lambda data: data,
    }[coding](plain)
    header = "deflate" if coding == "deflate-raw" else coding

    reply = collector.post(body, headers={"Content-Encoding": header})

    assert reply.status == 202, reply.body
    assert decoded(collector.records()) == [as_event(event)]


@pytest.mark.parametrize("coding", ["br2", "br", "zstd", "x-gzip", "gzip, identity", "gzip,gzip"])
def test_an_unknown_coding_is_415_before_the_body_is_read(
    collector: Collector, coding: str
) -> None:
    # A plain, valid body: the old collector took "br2" for plain bytes and accepted it.
    reply = collector.post_json([page_view()], headers={"Content-Encoding": coding})

    assert reply.status == 415
    assert reply.body["error"] == "unsupported_content_encoding"
    assert reply.body["supported_encodings"] == ["identity", "gzip", "deflate"]
    assert collector.records() == []


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", b"[not gzip at all]"),
        ("gzip", gzip.compress(b"[1,2,3]")[:-6]),  # cut short
        ("gzip", gzip.compress(b"[]") + b"junk"),
        ("deflate", b"\x00\x01\x02 not deflate"),
    ],
    ids=["not-gzip", "truncated", "trailing-junk", "not-deflate"],
)
def test_a_body_not_in_its_coding_is_400(collector: Collector, coding: str, body: bytes) -> None:
    reply = collector.post(body, headers={"Content-Encoding": coding})

    assert reply.status == 400, reply.body
    assert [(p["index"], p["code"]) for p in reply.body["problems"]] == [(None, "invalid_encoding")]
    assert collector.records() == []


def test_a_compressed_body_is_capped_after_decoding(collector: Collector) -> None:
    bomb = gzip.compress(b" " * (50 * 1024 * 1024))  # 50 MB of spaces in ~50 KB
    reply = run_against(
        collector.app(max_body_bytes=100 * 1024),
        lambda server: _post(server, bomb, {**JSON, "Content-Encoding": "gzip"}, KEY),
    )

    assert reply.status == 413
    assert reply.body["max_body_bytes"] == 100 * 1024


# --- timeouts -------------------------------------------------------------------------------------


def test_half_open_connections_are_closed_by_the_header_timeout(collector: Collector) -> None:
    header_timeout_s = 1.0
    app = collector.app(header_timeout_s=header_timeout_s)

    async def scenario(server: TestServer) -> list[float]:
        started = time.monotonic()

        async def half_open(part: bytes) -> float:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(part)
            await writer.drain()
            try:
                assert await reader.read() == b""  # the server hung up without an answer
                return time.monotonic() - started
            finally:
                writer.close()

        parts = [
            b"",  # connects and says nothing
            b"POST /v1/events HTTP/1.1\r\n",
            b"POST /v1/events HTTP/1.1\r\nHost: collector\r\nContent-Type: applic",
        ]
        return await asyncio.gather(*(half_open(parts[n % 3]) for n in range(60)))

    closed_after = run_against(app, scenario)

    # Closed by the server's own timer, long before the test's 20 s guard against a hang.
    assert len(closed_after) == 60
    assert max(closed_after) < header_timeout_s + 5.0
    assert min(closed_after) >= header_timeout_s * 0.9


def test_a_body_that_stalls_is_408(collector: Collector) -> None:
    head = (
        "POST /v1/events HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: 1000\r\n\r\n"
    ).encode()

    async def scenario(server: TestServer) -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        started = time.monotonic()
        writer.write(head + b'[{"type":')  # and nothing more
        await writer.drain()
        try:
            # The answer's head; aiohttp then lingers a while for the rest of the body.
            answer = await reader.readuntil(b"\r\n\r\n")
            waited = time.monotonic() - started
            return answer + await reader.read(200), waited
        finally:
            writer.close()

    answer, waited = run_against(collector.app(body_timeout_s=1.0), scenario)

    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in answer
    assert waited < 1.0 + 5.0
    assert collector.records() == []


# --- the arrival window and control characters --------------------------------------------------


@pytest.mark.parametrize(
    ("occurred_at", "code"),
    [
        (recently(hours=-50), "too_far_ahead"),  # two days in the future
        ("9999-12-31T23:00:00Z", "too_far_ahead"),
        (recently(days=401), "too_far_behind"),
        ("0001-01-01T00:00:00+23:59", "out_of_range"),
        ("9999-12-31T23:59:59-23:59", "out_of_range"),
    ],
    # Ids that do not move with the clock: pytest-xdist's workers must collect the same tests.
    ids=["two-days-ahead", "year-9999", "401-days-behind", "year-1-offset", "year-10000"],
)
def test_occurred_at_lies_in_the_window_around_the_request(
    collector: Collector, occurred_at: str, code: str
) -> None:
    reply = collector.post_json([page_view(occurred_at=occurred_at)])

    assert reply.status == 400, reply.body
    assert [(p["path"], p["code"]) for p in reply.body["problems"]] == [("$.occurred_at", code)]
    assert collector.records() == []


@pytest.mark.parametrize(
    ("field", "value"), [("path", "/a\x00b"), ("user_agent", "Mozilla\r\nX: y")]
)
def test_control_characters_are_refused(collector: Collector, field: str, value: str) -> None:
    reply = collector.post_json([page_view(**{field: value})])

    assert reply.status == 400
    assert [(p["path"], p["code"]) for p in reply.body["problems"]] == [
        (f"$.{field}", "control_character")
    ]


def test_a_400_lists_a_thousand_problems_and_counts_the_rest(collector: Collector) -> None:
    broken = [{"type": "payment", "x": n} for n in range(300)]  # 9 problems each

    reply = run_against(
        collector.app(max_body_bytes=1024 * 1024),
        lambda server: _post(server, msgspec.json.encode(broken), JSON, KEY),
    )

    assert reply.status == 400
    assert len(reply.body["problems"]) == 1000
    assert reply.body["problems_not_shown"] == 300 * 9 - 1000


# --- one client's flood and another's request ----------------------------------------------------


def _invalid_batch(max_bytes: int) -> bytes:
    """Close to ``max_bytes`` of events that each break several rules."""
    event = page_view(ip="999.1.2.3", occurred_at="2024-05-01T12:00:00", extra="x", status="ok")
    one = msgspec.json.encode(event)
    return msgspec.json.encode([event] * (max_bytes // (len(one) + 1) - 1))


async def _post(
    server: TestServer, body: bytes, headers: dict[str, str], key: str, *, expect: bool = False
) -> Reply:
    async with (
        ClientSession(timeout=ClientTimeout(total=RESPONSE_TIMEOUT_S * 3)) as session,
        session.post(
            server.make_url("/v1/events"),
            data=body,
            headers={**headers, "Authorization": f"Bearer {key}"},
            expect100=expect,
        ) as response,
    ):
        answer = await response.json() if response.content_type == "application/json" else None
        return Reply(response.status, dict(response.headers), answer)


def test_one_accounts_flood_cannot_starve_another_account(collector: Collector) -> None:
    max_body = 1024 * 1024
    flood_body = _invalid_batch(max_body)
    app = collector.app(max_body_bytes=max_body, max_requests_per_key=4)
    valid = page_view(account=OTHER_ACCOUNT)

    async def scenario(server: TestServer) -> tuple[list[Reply], Reply, float, int]:
        # Expect: 100-continue, as a well-behaved client sends a large body: a refused
        # request is answered before its megabyte is uploaded.
        flood = [
            asyncio.create_task(_post(server, flood_body, JSON, KEY, expect=True))
            for _ in range(12)
        ]
        # The valid request goes out once the flood is being processed: every flood request
        # has been either refused or taken in (the refusals come back at once).
        deadline = time.monotonic() + RESPONSE_TIMEOUT_S
        while sum(t.done() for t in flood) < 12 - 4:
            assert time.monotonic() < deadline, "the flood was neither refused nor taken in"
            await asyncio.sleep(0.01)
        started = time.monotonic()
        answer = await _post(server, msgspec.json.encode([valid]), JSON, OTHER_KEY)
        waited = time.monotonic() - started
        still_busy = sum(not t.done() for t in flood)
        return await asyncio.gather(*flood), answer, waited, still_busy

    flood_answers, answer, waited, still_busy = run_against(app, scenario)

    assert answer.status == 202, answer.body
    assert waited < 5.0  # the issue measured 49.5 s; unloaded it takes a few milliseconds
    assert still_busy >= 1  # it overtook the flood rather than waiting for it to end
    statuses = sorted(a.status for a in flood_answers)
    assert statuses.count(429) >= 12 - 4 - 1  # one slot may free before the last arrives
    assert set(statuses) <= {400, 429}
    assert all(a.headers["Retry-After"] == "1" for a in flood_answers if a.status == 429)
    assert decoded(collector.records()) == [as_event(valid)]
