"""The hot-path batch decoder: raw Kafka values in, typed events and rejections out.

``decode_batch`` accepts exactly what ``schemas.validate`` finds no problem in (a hypothesis
test mutates valid events to hold both to it), and a rejection carries the validator's first
problem, so a dead letter has the same code, field and reason whichever path found it.

Accepting is msgspec's typed decoder plus the two checks it cannot do: IP syntax, once per
distinct address of the batch, and the user agent's UTF-8 length, only when it can be too
long. An event msgspec accepts can fail only those two, so its rejection is worded here;
any other rejection is explained by the validator (~0.2 ms, paid only by bad messages).

Why one msgspec call per message, not one call on ``b"[" + b",".join(values) + b"]"``:
measured on 100k realistic 450-byte events, the joined decode was no faster (CPU time
within 5 % either way; the join alone copies the whole batch) and it is unsafe: values are
not framed, so two malformed values can join into one valid event
(``{"type":"page_view",...`` + ``"path":"/"}``) while a third holding two objects restores
the count, and events would be accepted from messages the validator rejects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from schemas import validate
from schemas.events import MAX_EVENT_BYTES, Event


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why the value at ``index`` of the batch was rejected (its first problem)."""

    index: int
    code: str  # one of schemas.validate.CODES
    field: str  # JSON path of the offending field, as in Problem.path: "$", "$.ip"
    reason: str  # never quotes the value (see schemas.validate)


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """``events`` is aligned with the input: None where the value was rejected."""

    events: list[Event | None]
    rejections: list[Rejection]  # in index order, one per None in ``events``


_DECODER: Final[msgspec.json.Decoder[Event]] = msgspec.json.Decoder(Event)


def decode_batch(values: Sequence[bytes | None]) -> DecodedBatch:
    """Decode one batch of raw values; never raises for bad input."""
    events: list[Event | None] = [None] * len(values)
    rejections: list[Rejection] = []
    decode = _DECODER.decode
    # Addresses repeat within a batch (one client sends many events): parse each once.
    ip_ok: dict[str, bool] = {}
    for index, value in enumerate(values):
        if not value or len(value) > MAX_EVENT_BYTES:
            rejections.append(_explain(index, value))
            continue
        try:
            event = decode(value)
        except msgspec.DecodeError:
            rejections.append(_explain(index, value))
            continue
        ip = event.ip
        if ip is not None:
            valid = ip_ok.get(ip)
            if valid is None:
                valid = ip_ok[ip] = validate.is_valid_ip(ip)
            if not valid:
                rejections.append(_rejection(index, validate.IP_PROBLEM))
                continue
        if event.user_agent is not None and not validate.user_agent_fits(event.user_agent):
            rejections.append(_rejection(index, validate.USER_AGENT_PROBLEM))
            continue
        events[index] = event
    return DecodedBatch(events, rejections)


def _rejection(index: int, problem: validate.Problem) -> Rejection:
    return Rejection(index, problem.code, problem.path, problem.reason)


def _explain(index: int, value: bytes | None) -> Rejection:
    if value is None:
        return Rejection(
            index, validate.EMPTY_MESSAGE, "$", "the message has no value (a tombstone)"
        )
    problems = validate.validate_event_bytes(value)
    if not problems:  # unreachable while decoder and validator agree; never drop silently
        return Rejection(
            index, validate.INVALID_VALUE, "$", "the event does not satisfy the contract"
        )
    return _rejection(index, problems[0])
