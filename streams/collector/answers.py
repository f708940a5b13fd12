"""Every answer of the collector but 202: the JSON bodies and the headers that go with them.

No answer quotes a value of the request (reasons come from ``schemas.problems``) or a key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from aiohttp import hdrs, web

from streams.collector.batch import SUPPORTED_MEDIA_TYPES, BatchProblem
from streams.collector.delivery import Delivery
from streams.collector.encoding import SUPPORTED_ENCODINGS

# A 400 lists at most this many problems: 1 MB of events each breaking every rule would
# otherwise answer with tens of megabytes. The count of the rest is given.
MAX_PROBLEMS_SHOWN: Final = 1_000
RETRY_AFTER_BUSY_S: Final = 1
RETRY_AFTER_BROKER_S: Final = 5


class Refusal(Exception):
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


def unauthorized() -> Refusal:
    return Refusal(
        401,
        {
            "error": "unauthorized",
            "message": "a valid write key is required: Authorization: Bearer <key>, or"
            " HTTP Basic with the key as user name (as Segment's SDKs send it)",
        },
        {hdrs.WWW_AUTHENTICATE: 'Bearer realm="sieve", Basic realm="sieve"'},
    )


def unsupported_media_type(sent: str) -> Refusal:
    return Refusal(
        415,
        {
            "error": "unsupported_media_type",
            "message": f"Content-Type {sent} is not supported;"
            f" send {' or '.join(SUPPORTED_MEDIA_TYPES)}",
            "supported": list(SUPPORTED_MEDIA_TYPES),
        },
    )


def unsupported_encoding() -> Refusal:
    # The body is never read: the connection cannot carry another request.
    return Refusal(
        415,
        {
            "error": "unsupported_content_encoding",
            "message": "this Content-Encoding is not supported; send one of: "
            + ", ".join(SUPPORTED_ENCODINGS),
            "supported_encodings": list(SUPPORTED_ENCODINGS),
        },
        {hdrs.ACCEPT_ENCODING: ", ".join(SUPPORTED_ENCODINGS)},
        close=True,
    )


def too_large(max_bytes: int) -> Refusal:
    return Refusal(
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


def too_slow(timeout_s: float) -> Refusal:
    return Refusal(
        408,
        {
            "error": "request_timeout",
            "message": f"the body did not arrive within {timeout_s:g} s",
        },
        close=True,
    )


def busy(limit: int) -> Refusal:
    return Refusal(
        429,
        {
            "error": "too_many_requests",
            "message": f"this account already has {limit} requests in progress;"
            f" retry after {RETRY_AFTER_BUSY_S} s",
        },
        {hdrs.RETRY_AFTER: str(RETRY_AFTER_BUSY_S)},
        close=True,  # its body was not read
    )


def undecodable(reason: str) -> web.Response:
    return invalid([BatchProblem(None, "$", "invalid_encoding", reason)], batch_size=None)


def invalid(problems: Sequence[BatchProblem], *, batch_size: int | None) -> web.Response:
    bad_events = len({p.index for p in problems if p.index is not None})
    what = (
        "the body is not a batch of events"
        if batch_size is None
        else f"{bad_events} of {batch_size} events are invalid"
    )
    body: dict[str, Any] = {
        "error": "invalid_batch",
        "message": f"{what}; nothing was sent, fix the problems and send the whole batch again",
        "problems": [problem.as_json() for problem in problems[:MAX_PROBLEMS_SHOWN]],
    }
    if len(problems) > MAX_PROBLEMS_SHOWN:
        body["problems_not_shown"] = len(problems) - MAX_PROBLEMS_SHOWN
    return web.json_response(body, status=400)


def not_delivered(deliveries: Sequence[Delivery]) -> web.Response:
    failed = [d for d in deliveries if d.error is not None]
    acknowledged = [d.as_result() for d in deliveries if d.error is None]
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
        headers={hdrs.RETRY_AFTER: str(RETRY_AFTER_BROKER_S)},
    )
