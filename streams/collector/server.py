"""The collector's HTTP surface: ``POST /v1/events``, Segment's Tracking API (``POST
/v1/batch``, ``/v1/track``, ``/v1/page``, ``/v1/screen``, ``/v1/identify``, ``/v1/group``,
``/v1/alias``: :mod:`streams.collector.segment` maps each call onto the contract) and ``GET
/healthz`` (aiohttp).

The write key comes as ``Authorization: Bearer <key>`` or, as Segment's SDKs send it, HTTP
Basic with the key as user name and an empty password. Segment calls then meet exactly the
checks, answers and metrics of ``/v1/events``; properties their target does not declare are
dropped and counted (``sieve_collector_properties_dropped``).

A request is checked in the order that costs least before it costs most: the write key
(401), the content type and coding (415), the declared length (413), the account's
requests in progress (429), then the body is read with a cap and a deadline (413, 408),
decoded and validated (400), and only then forwarded (202 or 503). Nothing is sent to Kafka
unless the whole batch is valid, and 202 means the broker acknowledged every event.

Hardened against hostile or broken clients (issue 14): a connection that does not finish
its headers within ``header_timeout_s`` is closed; a body must arrive within
``body_timeout_s``; each account may have ``max_requests_per_key`` requests in progress (a
flood of large invalid batches from one client cannot starve the others, and every CPU-heavy
step runs in threads so the event loop keeps answering); a coding other than gzip, deflate
or identity is refused before the body is read; a 503 comes by the ack deadline, never
later. ``/healthz`` reports whether the producer is delivering.

Status codes and bodies (all JSON; builders in :mod:`streams.collector.answers`):

* 202: ``[{"index", "event_id", "status": "accepted", "partition", "offset"}, ...]``
* 400: ``{"error": "invalid_batch", "message", "problems": [{"index", "event_id", "path",
  "code", "reason"}, ...], "problems_not_shown"?}``; ``index`` null means the body as a
  whole (``invalid_json``, ``too_deep``, ``invalid_encoding``, ...)
* 401: ``{"error": "unauthorized", "message"}`` with ``WWW-Authenticate: Bearer``
* 408: ``{"error": "request_timeout", "message"}``
* 413: ``{"error": "body_too_large", "message", "max_body_bytes"}``
* 415: ``{"error": "unsupported_media_type" | "unsupported_content_encoding", ...}``
* 429: ``{"error": "too_many_requests", "message"}`` with ``Retry-After``
* 503: ``{"error": "broker_unavailable", "message", "not_acknowledged": [{"index",
  "event_id", "reason"}], "acknowledged": [<as in 202>]}`` with ``Retry-After``
* ``/healthz``: 200 ``{"status": "ok"}``, or 503 ``{"status": "unavailable", "reason"}``
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.streams import StreamReader

from schemas.bounds import DEFAULT_TIME_BOUNDS, TimeBounds
from schemas.events import Event
from streams.collector import answers
from streams.collector.answers import Refusal
from streams.collector.batch import (
    SUPPORTED_MEDIA_TYPES,
    PrivacySignals,
    check_batch,
    decode_batch,
    keep_declared,
)
from streams.collector.cors import allow_origins
from streams.collector.delivery import Delivery, EventSender, deliver
from streams.collector.encoding import (
    DecodedTooLarge,
    UndecodableBody,
    content_encoding,
    decode_body,
)
from streams.collector.keys import WriteKeys
from streams.collector.metrics import CollectorMetrics, measuring
from streams.collector.segment import BATCH, CALLS, segment_items
from streams.privacy.custom_events import CustomEvents

log = logging.getLogger(__name__)

EVENTS_PATH: Final = "/v1/events"
# Segment's Tracking API: /v1/batch and one path per call.
SEGMENT_PATHS: Final = {f"/v1/{call}": call for call in (BATCH, *CALLS)}
HEALTH_PATH: Final = "/healthz"
DEFAULT_ACK_TIMEOUT_S: Final = 10.0
DEFAULT_HEADER_TIMEOUT_S: Final = 10.0
DEFAULT_BODY_TIMEOUT_S: Final = 30.0
DEFAULT_MAX_REQUESTS_PER_KEY: Final = 4
# How far past its ack deadline a request may be answered: the thread that waits for the
# acknowledgements returns at the deadline; this only covers scheduling.
ANSWER_GRACE_S: Final = 1.0
# Threads that wait for acknowledgements (cheap: they sleep); kept apart from the threads
# that check batches, so requests waiting on a slow broker never delay the checking.
DELIVERY_THREADS: Final = 32


@dataclass
class CollectorConfig:
    """What the handlers need; one per application (no process-global state)."""

    producer: EventSender
    write_keys: WriteKeys
    max_body_bytes: int
    ack_timeout_s: float
    body_timeout_s: float
    max_requests_per_key: int
    time_bounds: TimeBounds
    clock: Callable[[], float]  # wall clock, seconds since the epoch: the arrival of events
    metrics: CollectorMetrics
    # The policy's custom event declarations: which properties a Segment call may keep.
    custom_events: CustomEvents = field(default_factory=CustomEvents)
    in_progress: Counter[str] = field(default_factory=Counter)  # requests per account
    delivery_threads: ThreadPoolExecutor | None = None


CONFIG: Final = web.AppKey("collector_config", CollectorConfig)


def create_collector_app(
    *,
    producer: EventSender,
    write_keys: WriteKeys | Mapping[str, Sequence[str]],
    max_body_bytes: int,
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    max_requests_per_key: int = DEFAULT_MAX_REQUESTS_PER_KEY,
    time_bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
    clock: Callable[[], float] = time.time,
    metrics: CollectorMetrics | None = None,
    custom_events: CustomEvents | None = None,
    cors_origins: Sequence[str] = (),
) -> web.Application:
    """A collector application; the caller owns ``producer`` (flushes and closes it).

    ``write_keys`` is a loaded :class:`WriteKeys` or the file's mapping of account ids to
    keys. ``ack_timeout_s`` bounds how long one request waits for the broker's
    acknowledgements before it answers 503. ``time_bounds`` is the window around the
    request's arrival (``clock``) that each ``occurred_at`` must lie in, as in the worker.
    ``metrics`` counts and times every answer (the caller serves its registry elsewhere).
    ``custom_events``: the policy's declarations (None: none, every property is dropped).
    ``cors_origins``: web origins whose pages may post (``*``: any; empty: no browser).
    """
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive, not {max_body_bytes}")
    if max_requests_per_key < 1:
        raise ValueError(f"max_requests_per_key must be positive, not {max_requests_per_key}")
    if not isinstance(write_keys, WriteKeys):
        write_keys = WriteKeys(write_keys)
    if metrics is None:
        metrics = CollectorMetrics.create()
    app = web.Application(
        middlewares=[measuring(metrics)],
        # client_max_size also caps aiohttp's own body readers, should anything use them.
        client_max_size=max_body_bytes,
        handler_args={
            # aiohttp (3.14.5+) starts this timer when a connection opens and again after
            # each answer, and closes the connection if no complete request head has arrived
            # when it fires: that is the header timeout (tested with half-open sockets).
            "keepalive_timeout": header_timeout_s,
            # Bodies are decoded here (streams.collector.encoding), not by aiohttp.
            "auto_decompress": False,
        },
    )
    app[CONFIG] = CollectorConfig(
        producer=producer,
        write_keys=write_keys,
        max_body_bytes=max_body_bytes,
        ack_timeout_s=ack_timeout_s,
        body_timeout_s=body_timeout_s,
        max_requests_per_key=max_requests_per_key,
        time_bounds=time_bounds,
        clock=clock,
        metrics=metrics,
        custom_events=custom_events or CustomEvents(),
    )
    app.cleanup_ctx.append(_delivery_threads)
    app.router.add_post(EVENTS_PATH, post_events, expect_handler=_expect_events)
    for path, call in SEGMENT_PATHS.items():
        handler = functools.partial(post_events, segment_call=call)
        app.router.add_post(path, handler, expect_handler=_expect_events)
    if cors_origins:
        allow_origins(app, cors_origins, (EVENTS_PATH, *SEGMENT_PATHS))
    app.router.add_get(HEALTH_PATH, healthz)
    return app


async def _delivery_threads(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    config.delivery_threads = ThreadPoolExecutor(DELIVERY_THREADS, "sieve-collector-delivery")
    yield
    # A thread still waiting for acknowledgements returns by its deadline; not waited for.
    config.delivery_threads.shutdown(wait=False, cancel_futures=True)


async def healthz(request: web.Request) -> web.Response:
    """Whether the producer delivers: 200, or 503 with the reason (the broker is away, or
    came back and the producer is being replaced)."""
    state = request.app[CONFIG].producer.health()
    if state.ok:
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "unavailable", "reason": state.reason}, status=503)


async def post_events(request: web.Request, *, segment_call: str | None = None) -> web.Response:
    """Accept a batch of events (or of Segment calls: ``segment_call`` names the path's
    call) for the write key's account; see the module docstring."""
    config = request.app[CONFIG]
    try:
        account_id, media_type, coding = _precheck(request, config)
    except Refusal as refusal:
        return refusal.response()
    if config.in_progress[account_id] >= config.max_requests_per_key:
        return answers.busy(config.max_requests_per_key).response()
    config.in_progress[account_id] += 1
    try:
        return await _accept(request, config, account_id, (media_type, coding), segment_call)
    finally:
        config.in_progress[account_id] -= 1
        if not config.in_progress[account_id]:
            del config.in_progress[account_id]


async def _accept(
    request: web.Request,
    config: CollectorConfig,
    account_id: str,
    media: tuple[str, str],
    segment_call: str | None,
) -> web.Response:
    try:
        async with asyncio.timeout(config.body_timeout_s):
            raw = await read_capped(request.content, config.max_body_bytes)
    except TimeoutError:
        return answers.too_slow(config.body_timeout_s).response()
    except Refusal as refusal:
        return refusal.response()
    received_at_ms = int(config.clock() * 1000)
    signals = PrivacySignals.from_headers(request.headers)
    check = functools.partial(
        _check_body, raw, media, account_id, signals, received_at_ms, config, segment_call
    )
    # In a thread: decoding and checking a large batch of invalid events takes a while of
    # CPU; on the event loop it would stall every other request.
    outcome = await asyncio.get_running_loop().run_in_executor(None, check)
    if isinstance(outcome, web.Response):
        return outcome
    return await _forward(config, outcome, account_id)


def _check_body(
    raw: bytes,
    media: tuple[str, str],
    account_id: str,
    signals: PrivacySignals,
    received_at_ms: int,
    config: CollectorConfig,
    segment_call: str | None,
) -> list[Event] | web.Response:
    """The batch's events, or the answer that refuses it (413, 400). Runs in a thread."""
    media_type, coding = media
    try:
        body = decode_body(raw, coding, config.max_body_bytes)
    except DecodedTooLarge:
        return answers.too_large(config.max_body_bytes).response()
    except UndecodableBody as undecodable:
        return answers.undecodable(str(undecodable))
    if segment_call is None:
        items, body_problem = decode_batch(body, media_type)
        # Custom events posted as events meet the policy's declarations as Segment's do.
        declared = keep_declared(items, config.custom_events)
        items, dropped = declared.items, (declared.undeclared, declared.declared_dropped)
    else:
        mapped, body_problem = segment_items(
            body, segment_call, account_id, received_at_ms, config.custom_events
        )
        items, dropped = mapped.items, (mapped.undeclared, mapped.declared_dropped)
    if body_problem is not None:
        return answers.invalid([body_problem], batch_size=None)
    events, problems = check_batch(
        items, account_id, signals, received_at_ms=received_at_ms, bounds=config.time_bounds
    )
    if problems:
        return answers.invalid(problems, batch_size=len(items))
    # Counted once the batch is checked: these properties are gone before anything is sent.
    config.metrics.dropped(undeclared=dropped[0], declared_dropped=dropped[1])
    return events


async def _forward(config: CollectorConfig, events: list[Event], account_id: str) -> web.Response:
    deadline = time.monotonic() + config.ack_timeout_s
    waiting = asyncio.get_running_loop().run_in_executor(
        config.delivery_threads, deliver, config.producer, events, deadline
    )
    try:
        # shield: a late thread is left to finish (it sends nothing past the deadline).
        deliveries = await asyncio.wait_for(
            asyncio.shield(waiting), config.ack_timeout_s + ANSWER_GRACE_S
        )
    except TimeoutError:
        late = "no acknowledgement within the request's deadline"
        deliveries = [Delivery(i, e.event_id, error=late) for i, e in enumerate(events)]
    failed = [d for d in deliveries if d.error is not None]
    config.metrics.events_accepted.inc(len(deliveries) - len(failed))
    if not failed:
        return web.json_response([d.as_result() for d in deliveries], status=202)
    log.warning(
        "broker did not acknowledge %d of %d events of account %s: %s",
        len(failed),
        len(deliveries),
        account_id,
        failed[0].error,
    )
    return answers.not_delivered(deliveries)


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
            raise answers.too_large(max_bytes)


async def _expect_events(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: refuse before the client sends a body we would not read
    (a 429 too, so a well-behaved client reads it rather than a reset mid-upload). aiohttp
    answers such a refusal without the middlewares, so it is counted here."""
    started = time.perf_counter()
    config = request.app[CONFIG]
    refused: web.Response | None = None
    try:
        account_id, _, _ = _precheck(request, config)
    except Refusal as refusal:
        refused = refusal.response()
    else:
        if config.in_progress[account_id] >= config.max_requests_per_key:
            refused = answers.busy(config.max_requests_per_key).response()
    if refused is not None:
        config.metrics.answered(request, refused.status, time.perf_counter() - started)
        return refused
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


def _precheck(request: web.Request, config: CollectorConfig) -> tuple[str, str, str]:
    """The account, media type and content coding of a request, or a refusal (401, 415,
    413)."""
    account_id = _authenticate(request, config.write_keys)
    media_type = request.content_type
    if media_type not in SUPPORTED_MEDIA_TYPES:
        # aiohttp reports a missing Content-Type as application/octet-stream.
        sent = repr(media_type) if hdrs.CONTENT_TYPE in request.headers else "(none)"
        raise answers.unsupported_media_type(sent)
    coding = content_encoding(request.headers.get(hdrs.CONTENT_ENCODING))
    if coding is None:
        raise answers.unsupported_encoding()
    declared = request.content_length
    if declared is not None and declared > config.max_body_bytes:
        raise answers.too_large(config.max_body_bytes)
    return account_id, media_type, coding


def _authenticate(request: web.Request, write_keys: WriteKeys) -> str:
    # Never log the header: it is the key.
    scheme, _, presented = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    key = presented.strip()
    if scheme.lower() == "basic":
        key = _basic_user(key)
    elif scheme.lower() != "bearer":
        key = ""
    account_id = write_keys.authenticate(key) if key else None
    if account_id is None:
        raise answers.unauthorized()
    return account_id


def _basic_user(credentials: str) -> str:
    """The user name of HTTP Basic credentials (Segment's SDKs send ``<key>:``); the
    password is ignored. Empty when the credentials do not decode."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[0]
