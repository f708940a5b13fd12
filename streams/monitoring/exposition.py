"""``/metrics``: one registry in the Prometheus text format, and an app that serves it."""

from __future__ import annotations

from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

METRICS_PATH: Final = "/metrics"


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition text of ``registry`` and its Content-Type header."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """An application serving ``registry`` at ``/metrics`` (and nothing else): the collector
    runs it on a listener of its own, so its public port never shows its internals."""

    async def metrics_page(request: web.Request) -> web.Response:
        body, content_type = render(registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get(METRICS_PATH, metrics_page)
    return app
