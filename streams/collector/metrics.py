"""The collector's metrics: requests and their latency by route and status, events accepted.

Served on a listener of its own (``SIEVE_COLLECTOR_METRICS_HOST``/``_PORT``), never on the
port clients post to. A request costs one counter and one histogram observation; labels
are the route's pattern (never the raw path, which any client could vary without end) and
the status code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

# From a refusal in a millisecond to a request that waits for the broker up to the ack
# deadline (10 s) or sends its body slowly up to the body timeout (30 s).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60)
UNMATCHED: Final = "unmatched"


@dataclass(frozen=True)
class CollectorMetrics:
    """The metrics of one collector application, in a registry of their own."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    events_accepted: Counter
    properties_dropped: Counter

    @staticmethod
    def create() -> CollectorMetrics:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        return CollectorMetrics(
            registry=registry,
            requests=Counter(
                "sieve_collector_requests",
                "HTTP requests answered, by route and status code.",
                ["route", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "sieve_collector_request_seconds",
                "Seconds from a request's headers to its answer, by route and status code.",
                ["route", "status"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            events_accepted=Counter(
                "sieve_collector_events_accepted",
                "Events the broker acknowledged (answered 202, or listed as acknowledged in a"
                " 503).",
                registry=registry,
            ),
            properties_dropped=Counter(
                "sieve_collector_properties_dropped",
                "Properties (and traits) of Segment calls dropped before sending, by reason:"
                " undeclared (the policy does not name them) or declared_dropped.",
                ["reason"],
                registry=registry,
            ),
        )

    def dropped(self, *, undeclared: int, declared_dropped: int) -> None:
        self.properties_dropped.labels("undeclared").inc(undeclared)
        self.properties_dropped.labels("declared_dropped").inc(declared_dropped)

    def answered(self, request: web.Request, status: int, seconds: float) -> None:
        route, code = route_of(request), str(status)
        self.requests.labels(route, code).inc()
        self.latency.labels(route, code).observe(seconds)


def route_of(request: web.Request) -> str:
    """The pattern of the route that matched (``/v1/events``), or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def measuring(metrics: CollectorMetrics) -> Middleware:
    """An aiohttp middleware that counts and times every answer of the application (refusals
    raised as HTTP exceptions, such as aiohttp's own 404 and 405, included; a handler that
    fails counts as 500, which is what aiohttp answers)."""

    @web.middleware
    async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as refusal:
            status = refusal.status
            raise
        finally:
            metrics.answered(request, status, time.perf_counter() - started)

    return measure
