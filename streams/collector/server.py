"""The collector's HTTP surface: ``POST /v1/events`` and ``GET /healthz`` (aiohttp).

A request is checked in the order that costs least before it costs most: the write key
(401), the content type (415), the declared length (413), then the body is read with a cap
(413), decoded and validated (400), and only then forwarded (202 or 503). Nothing is sent
to Kafka unless the whole batch is valid, and 202 means the broker acknowledged every event.

Status codes and bodies (all JSON):

* 202: ``[{"index", "event_id", "status": "accepted", "partition", "offset"}, ...]``
* 400: ``{"error": "invalid_batch", "message", "problems": [{"index", "event_id", "path",
  "code", "reason"}, ...]}``; ``index`` null means the body as a whole
* 401: ``{"error": "unauthorized", "message"}`` with ``WWW-Authenticate: Bearer``
* 413: ``{"error": "body_too_large", "message", "max_body_bytes"}``
* 415: ``{"error": "unsupported_media_type", "message", "supported": [...]}``
* 503: ``{"error": "broker_unavailable", "message", "not_acknowledged": [{"index",
  "event_id", "reason"}], "acknowledged": [<as in 202>]}``
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.streams import StreamReader

from streams.collector.batch import (
    SUPPORTED_MEDIA_TYPES,
    BatchProblem,
    PrivacySignals,
    check_batch,
    decode_batch,
)
from streams.collector.delivery import Delivery, EventSender, deliver
from streams.collector.keys import WriteKeys

log = logging.getLogger(__name__)

EVENTS_PATH: Final = "/v1/events"
HEALTH_PATH: Final = "/healthz"
DEFAULT_ACK_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True)
class CollectorConfig:
    """What the handlers need; one per application (no process-global state)."""

    producer: EventSender
    write_keys: WriteKeys
    max_body_bytes: int
    ack_timeout_s: float


CONFIG: Final = web.AppKey("collector_config", CollectorConfig)


class _Refusal(Exception):
    """A request answered before it got far; carries the answer."""

    def __init__(
        self,
        status: int,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.close = close

    def response(self) -> web.Response:
        response = web.json_response(self.body, status=self.status, headers=self.headers)
        if self.close:
            response.force_close()
        return response


def create_collector_app(
    *,
    producer: EventSender,
    write_keys: WriteKeys | Mapping[str, Sequence[str]],
    max_body_bytes: int,
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
) -> web.Application:
    """A collector application; the caller owns ``producer`` (flushes and closes it).

    ``write_keys`` is a loaded :class:`WriteKeys` or the file's mapping of account ids to
    keys. ``ack_timeout_s`` bounds how long one request waits for the broker's
    acknowledgements before it answers 503.
    """
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive, not {max_body_bytes}")
    if not isinstance(write_keys, WriteKeys):
        write_keys = WriteKeys(write_keys)
    # client_max_size also caps aiohttp's own body readers, should anything use them.
    app = web.Application(client_max_size=max_body_bytes)
    app[CONFIG] = CollectorConfig(producer, write_keys, max_body_bytes, ack_timeout_s)
    app.router.add_post(EVENTS_PATH, post_events, expect_handler=_expect_events)
    app.router.add_get(HEALTH_PATH, healthz)
    return app


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP. It does not probe the broker (a 503 of
    ``POST /v1/events`` says that, per request)."""
    return web.json_response({"status": "ok"})


async def post_events(request: web.Request) -> web.Response:
    """Accept a batch of events for the write key's account; see the module docstring."""
    config = request.app[CONFIG]
    try:
        account_id, media_type = _precheck(request, config)
        body = await read_capped(request.content, config.max_body_bytes)
    except _Refusal as refusal:
        return refusal.response()
    loop = asyncio.get_running_loop()
    items, body_problem = decode_batch(body, media_type)
    if body_problem is not None:
        return _invalid([body_problem], batch_size=None)
    signals = PrivacySignals.from_headers(request.headers)
    # In threads: checking a large batch of invalid events takes a second of CPU, and
    # kafka-python blocks (send() on metadata or a full buffer, get() on the ack); on the
    # event loop either would stall every other request.
    events, problems = await loop.run_in_executor(None, check_batch, items, account_id, signals)
    if problems:
        return _invalid(problems, batch_size=len(items))
    deliveries = await loop.run_in_executor(
        None, functools.partial(deliver, config.producer, events, config.ack_timeout_s)
    )
    return _delivered(deliveries, account_id)


async def read_capped(content: StreamReader, max_bytes: int) -> bytes:
    """The body, or a 413 refusal as soon as it exceeds ``max_bytes``.

    Never asks the stream for more than one byte past the limit, so a chunked body (no
    Content-Length) of any size costs at most ``max_bytes + 1`` bytes of memory.
    """
    body = bytearray()
    while True:
        chunk = await content.read(max_bytes + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)


async def _expect_events(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: refuse before the client sends a body we would not read."""
    try:
        _precheck(request, request.app[CONFIG])
    except _Refusal as refusal:
        return refusal.response()
    # What aiohttp's default expect handler does once the request may go on.
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return None
    if expect.lower() != "100-continue":
        return web.json_response(
            {"error": "expectation_failed", "message": f"unknown Expect: {expect}"}, status=417
        )
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the 100 is not part of the response's size
    return None


def _precheck(request: web.Request, config: CollectorConfig) -> tuple[str, str]:
    """The account and media type of a request, or a refusal (401, 415, 413)."""
    account_id = _authenticate(request, config.write_keys)
    media_type = request.content_type
    if media_type not in SUPPORTED_MEDIA_TYPES:
        # aiohttp reports a missing Content-Type as application/octet-stream.
        sent = repr(media_type) if hdrs.CONTENT_TYPE in request.headers else "(none)"
        raise _Refusal(
            415,
            {
                "error": "unsupported_media_type",
                "message": f"Content-Type {sent} is not supported;"
                f" send {' or '.join(SUPPORTED_MEDIA_TYPES)}",
                "supported": list(SUPPORTED_MEDIA_TYPES),
            },
        )
    declared = request.content_length
    if declared is not None and declared > config.max_body_bytes:
        raise _too_large(config.max_body_bytes)
    return account_id, media_type


def _authenticate(request: web.Request, write_keys: WriteKeys) -> str:
    # Never log the header: it is the key.
    scheme, _, presented = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    account_id = None
    if scheme.lower() == "bearer" and presented.strip():
        account_id = write_keys.authenticate(presented.strip())
    if account_id is None:
        raise _Refusal(
            401,
            {
                "error": "unauthorized",
                "message": "a valid write key is required: Authorization: Bearer <key>",
            },
            {hdrs.WWW_AUTHENTICATE: 'Bearer realm="sieve"'},
        )
    return account_id


def _too_large(max_bytes: int) -> _Refusal:
    return _Refusal(
        413,
        {
            "error": "body_too_large",
            "message": f"the body exceeds {max_bytes} bytes; send smaller batches",
            "max_body_bytes": max_bytes,
        },
        # The rest of the body is never read, so the connection cannot carry another
        # request (aiohttp discards what still arrives for a few seconds, then closes).
        close=True,
    )


def _invalid(problems: list[BatchProblem], *, batch_size: int | None) -> web.Response:
    bad_events = len({p.index for p in problems if p.index is not None})
    what = (
        "the body is not a batch of events"
        if batch_size is None
        else f"{bad_events} of {batch_size} events are invalid"
    )
    return web.json_response(
        {
            "error": "invalid_batch",
            "message": f"{what}; nothing was sent, fix the problems and send the whole batch again",
            "problems": [problem.as_json() for problem in problems],
        },
        status=400,
    )


def _delivered(deliveries: list[Delivery], account_id: str) -> web.Response:
    failed = [d for d in deliveries if d.error is not None]
    acknowledged = [d.as_result() for d in deliveries if d.error is None]
    if not failed:
        return web.json_response(acknowledged, status=202)
    log.warning(
        "broker did not acknowledge %d of %d events of account %s: %s",
        len(failed),
        len(deliveries),
        account_id,
        failed[0].error,
    )
    return web.json_response(
        {
            "error": "broker_unavailable",
            "message": f"the broker did not acknowledge {len(failed)} of {len(deliveries)}"
            " events; send the batch again later (acknowledged events carry their event_id,"
            " so downstream deduplication drops the repeats)",
            "not_acknowledged": [
                {"index": d.index, "event_id": d.event_id, "reason": d.error} for d in failed
            ],
            "acknowledged": acknowledged,
        },
        status=503,
    )
