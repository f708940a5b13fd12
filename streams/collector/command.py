"""``sieve collect``: serve the HTTP collector until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import cast

import click
from aiohttp import web

from schemas.bounds import TimeBounds
from streams.collector.keys import WriteKeys
from streams.collector.metrics import CollectorMetrics
from streams.collector.server import EVENTS_PATH, create_collector_app
from streams.errors import ConfigurationError, TransientError
from streams.http_server import Listener, serve_until_stopped
from streams.monitoring.exposition import METRICS_PATH, metrics_app
from streams.privacy.custom_events import load_custom_events
from streams.settings import Settings, reads_settings

# The access log without the client's address and user agent: those are personal data,
# and stdout is no place to keep them (they reach the pipeline only inside events).


@reads_settings(
    "bootstrap_servers",
    "raw_topic",
    "write_keys_file",
    "event_max_ahead",
    "event_max_behind",
    "backfill_max_behind",
    "collector_host",
    "collector_port",
    "collector_max_body_bytes",
    "collector_header_timeout_seconds",
    "collector_body_timeout_seconds",
    "collector_max_requests_per_key",
    "collector_ack_timeout_seconds",
    "collector_metrics_host",
    "collector_metrics_port",
    "policy_file",
    "collector_cors_origins",
)
@click.command("collect")
@click.option("--host", default=None, help="Address to bind [default: SIEVE_COLLECTOR_HOST].")
@click.option(
    "--port", type=int, default=None, help="Port to bind [default: SIEVE_COLLECTOR_PORT]."
)
def collect_command(host: str | None, port: int | None) -> None:
    """Run the HTTP collector: POST /v1/events (JSON array or NDJSON) and Segment's
    Tracking API (/v1/batch, /v1/track, /v1/page, /v1/screen, /v1/identify, ...) -> the
    raw topic.

    Clients authenticate with a write key of their account (Authorization: Bearer <key>,
    or HTTP Basic with the key as user name), listed in SIEVE_WRITE_KEYS_FILE. Custom
    events keep the properties SIEVE_POLICY_FILE declares. Pages of the origins in
    SIEVE_COLLECTOR_CORS_ORIGINS may post from a browser. Prometheus metrics are served on
    a port of their own (SIEVE_COLLECTOR_METRICS_HOST, SIEVE_COLLECTOR_METRICS_PORT).
    """
    from streams.producer import EventProducer  # imported late: kafka-python is heavy

    # Every Settings field has a default, but mypy sees that only with the pydantic plugin
    # (as in streams.broker.commands).
    settings = cast(Callable[[], Settings], Settings)()
    if settings.write_keys_file is None:
        raise ConfigurationError(
            "SIEVE_WRITE_KEYS_FILE is not set: the collector needs a JSON file"
            ' {"<account_id>": ["<key>", ...]} of the keys clients write with'
        )
    write_keys = WriteKeys.load(settings.write_keys_file)
    custom_events = load_custom_events(settings.policy_file)
    deadline = settings.collector_ack_timeout_seconds
    producer = EventProducer.from_settings(
        settings,
        "sieve-collector",
        # Neither a metadata wait nor a record's delivery outlives a request's deadline, so
        # a 503 comes in time and an event answered 503 is not written minutes later.
        max_block_s=deadline,
        request_timeout_s=deadline,
        delivery_timeout_s=deadline + 1.0,
    )
    metrics = CollectorMetrics.create()
    try:
        app = create_collector_app(
            producer=producer,
            write_keys=write_keys,
            max_body_bytes=settings.collector_max_body_bytes,
            ack_timeout_s=deadline,
            header_timeout_s=settings.collector_header_timeout_seconds,
            body_timeout_s=settings.collector_body_timeout_seconds,
            max_requests_per_key=settings.collector_max_requests_per_key,
            time_bounds=TimeBounds(
                settings.event_max_ahead, settings.event_max_behind, settings.backfill_max_behind
            ),
            metrics=metrics,
            custom_events=custom_events,
            cors_origins=settings.collector_cors_origins,
        )
        bind_host = settings.collector_host if host is None else host
        bind_port = settings.collector_port if port is None else port

        def announce(urls: list[str]) -> None:
            where = ", ".join(f"{url}{EVENTS_PATH}" for url in urls)
            click.echo(
                f"sieve collector: POST {where} -> topic {settings.raw_topic}"
                f" (write keys: {len(write_keys)}, accounts: {len(write_keys.accounts)});"
                " Ctrl+C stops"
            )

        def announce_metrics(urls: list[str]) -> None:
            where = ", ".join(f"{url}{METRICS_PATH}" for url in urls)
            click.echo(f"sieve collector: metrics at {where}")

        metrics_listener = Listener(
            metrics_app(metrics.registry),
            settings.collector_metrics_host,
            settings.collector_metrics_port,
            what="collector's metrics listener",
            port_hint="SIEVE_COLLECTOR_METRICS_PORT",
            on_ready=announce_metrics,
        )
        asyncio.run(serve(app, bind_host, bind_port, announce, also=(metrics_listener,)))
    finally:
        # Requests in flight were answered before serve() returned; close() still delivers
        # whatever a timed-out request left queued (for up to the deadline) before
        # disconnecting, and says so if the broker is away.
        try:
            producer.close(timeout=deadline)
        except TransientError as undelivered:
            click.echo(f"sieve collector: {undelivered}", err=True)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    on_ready: Callable[[list[str]], None],
    *,
    also: Sequence[Listener] = (),
) -> None:
    """Serve ``app`` (and ``also``: the metrics) until SIGINT/SIGTERM; requests in flight
    finish before this returns."""
    await serve_until_stopped(
        app,
        host,
        port,
        on_ready,
        what="collector",
        port_hint="--port or SIEVE_COLLECTOR_PORT",
        also=also,
    )
