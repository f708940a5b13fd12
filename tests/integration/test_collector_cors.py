"""CORS: a page in headless Chromium posts events with ``fetch`` from an allowed origin
(preflight included) and is refused from another; the answers' headers over plain HTTP.

The collector runs in-process around a real producer to a fresh topic (the ``collector``
fixture); the two origins are two small aiohttp servers on other loopback ports.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from streams.collector import create_collector_app
from streams.collector.cors import check_origins
from streams.collector.metrics import CollectorMetrics
from streams.demo.worker import worker_environment
from streams.settings import Settings
from tests.fixtures.chromium import STEP_TIMEOUT_S, browser, chromium
from tests.fixtures.collector_client import (
    KEY,
    MAX_BODY,
    WRITE_KEYS,
    Collector,
    collector,
    recently,
)

__all__ = ["collector"]  # the fixture, imported for pytest

pytestmark = pytest.mark.integration

PAGE = b"<!doctype html><title>a page of a site that sends events</title>"
# Posts one Segment track call with the write key as Basic auth; the promise resolves to the
# answer's status and Access-Control headers, or to the error fetch raised.
_POST_JS = """
(async (url, key, body) => {
  try {
    const answer = await fetch(url, {
      method: "POST",
      headers: {"Authorization": "Basic " + btoa(key + ":"), "Content-Type": "application/json"},
      body: JSON.stringify(body),
    });
    return {status: answer.status, body: await answer.json()};
  } catch (error) {
    return {error: String(error)};
  }
})(%s, %s, %s)
"""


def track_call() -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Signed In",
        "messageId": f"msg-{uuid.uuid4().hex}",
        "userId": "user-7",
        "timestamp": recently(minutes=1),
        "properties": {"method": "sso"},
    }


async def _origin_server() -> TestServer:
    async def page(_request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def _post_from(origin: TestServer, url: str, profile: Path) -> dict[str, Any]:
    """Open ``origin``'s page in Chromium and run the fetch there."""
    async with asyncio.timeout(4 * STEP_TIMEOUT_S), browser(profile) as tools:
        target = await tools.call("Target.createTarget", {"url": "about:blank"})
        attached = await tools.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        session = attached["sessionId"]
        await tools.call("Page.enable", session=session)
        loaded = tools.expect("Page.loadEventFired")
        navigated = await tools.call(
            "Page.navigate", {"url": str(origin.make_url("/"))}, session=session
        )
        assert "errorText" not in navigated, navigated
        await asyncio.wait_for(loaded, STEP_TIMEOUT_S)
        expression = _POST_JS % (json.dumps(url), json.dumps(KEY), json.dumps(track_call()))
        result = await tools.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=session,
        )
    assert "exceptionDetails" not in result, result
    value: dict[str, Any] = result["result"]["value"]
    return value


def _origin(server: TestServer) -> str:
    return str(server.make_url("/")).rstrip("/")


def _requests(metrics: CollectorMetrics, route: str, status: int) -> float:
    value = metrics.registry.get_sample_value(
        "sieve_collector_requests_total", {"route": route, "status": str(status)}
    )
    return value or 0.0


def test_a_browser_posts_from_an_allowed_origin_and_is_refused_from_another(
    collector: Collector, tmp_path: Path
) -> None:
    chromium()
    metrics = CollectorMetrics.create()

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        allowed, other = await _origin_server(), await _origin_server()
        app = create_collector_app(
            producer=collector.producer,
            write_keys=WRITE_KEYS,
            max_body_bytes=MAX_BODY,
            metrics=metrics,
            cors_origins=[_origin(allowed)],
        )
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            url = str(server.make_url("/v1/track"))
            accepted = await _post_from(allowed, url, tmp_path / "profile-allowed")
            refused = await _post_from(other, url, tmp_path / "profile-other")
        finally:
            for running in (server, allowed, other):
                await running.close()
        return accepted, refused

    accepted, refused = asyncio.run(scenario())

    assert accepted.get("status") == 202, accepted
    assert [r["status"] for r in accepted["body"]] == ["accepted"]
    # The browser asked first (Authorization is no header a page may send unasked)...
    assert _requests(metrics, "/v1/track", 200) == 1
    # ...and from the other origin the preflight was refused, so nothing was posted.
    assert "error" in refused, refused
    assert _requests(metrics, "/v1/track", 403) == 1
    assert _requests(metrics, "/v1/track", 202) == 1
    records = collector.records()
    assert [json.loads(r.value)["type"] for r in records] == ["login"]


def _exchange(origins: list[str], scenario: Callable[[ClientSession, str], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        app = create_collector_app(
            producer=None,  # type: ignore[arg-type]  # nothing is posted: preflights only
            write_keys=WRITE_KEYS,
            max_body_bytes=MAX_BODY,
            cors_origins=origins,
        )
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as session:
                return await scenario(session, str(server.make_url("")))
        finally:
            await server.close()

    return asyncio.run(run())


def _preflight(origin: str, path: str = "/v1/batch") -> Callable[[ClientSession, str], Any]:
    async def ask(session: ClientSession, base: str) -> tuple[int, dict[str, str]]:
        headers = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with session.options(base + path, headers=headers) as answer:
            return answer.status, dict(answer.headers)

    return ask


def test_a_preflight_from_an_allowed_origin_allows_the_key_header_and_no_credentials() -> None:
    status, headers = _exchange(["https://app.example.com"], _preflight("https://app.example.com"))
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert headers["Access-Control-Allow-Methods"] == "POST"
    assert "Access-Control-Allow-Credentials" not in headers


def test_any_origin_never_comes_with_credentials() -> None:
    status, headers = _exchange(["*"], _preflight("https://anyone.example.net", "/v1/events"))
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://anyone.example.net"
    assert "Access-Control-Allow-Credentials" not in headers


def test_no_origins_configured_means_no_preflight_is_answered() -> None:
    status, headers = _exchange([], _preflight("https://app.example.com"))
    assert status == 405  # no OPTIONS route at all
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize(
    "origin",
    ["https://app.example.com/", "app.example.com", "https://app.example.com/path", "ftp://x"],
)
def test_an_entry_that_is_no_origin_is_a_configuration_error(origin: str) -> None:
    with pytest.raises(ValueError, match="is not an origin"):
        check_origins([origin])


@pytest.mark.parametrize("origins", [(), ("https://a.example.com", "http://127.0.0.1:8000")])
def test_the_origins_setting_round_trips_through_the_environment(
    origins: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo hands its settings to the worker as variables: a list must read back as itself.
    settings = Settings(collector_cors_origins=origins)  # type: ignore[call-arg]
    env = worker_environment(settings, tmp_path / "keyring.json")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().collector_cors_origins == origins  # type: ignore[call-arg]
