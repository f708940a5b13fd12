"""Dead letters: a rejected raw message, byte for byte, with headers that say why.

The key is the message's source coordinates (``<topic>+<partition>+<offset>``): a range
replayed after a crash re-sends the same key, so the dead-letter topic (compact,delete)
holds each rejected message once for readers, and erasure can remove one with a
tombstone. Reasons never echo the rejected value (schemas.validate builds them from the
field name and the rule), since dead letters are identifiable data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.datasets import DEAD_LETTERS
from schemas.decode import Rejection
from schemas.events import BACKFILL_HEADER

HEADER_PREFIX = "sieve."
# The code of a record that made a pipeline stage raise (streams.worker.pipeline): the
# decoder and validator let it through, a later stage could not place it.
PROCESSING_ERROR = "processing_error"
# On a dead letter cut to fit its topic: how many bytes the original value had.
TRUNCATED_HEADER = HEADER_PREFIX + "truncated.original_bytes"
# On a dead letter whose original headers alone were too large: how many were dropped.
DROPPED_HEADERS_HEADER = HEADER_PREFIX + "truncated.dropped_headers"
# A record batch's own header (61 bytes) plus one record's framing (length, attributes,
# timestamp and offset deltas, key and value lengths, header count: varints of at most 5
# bytes each), with room to spare; each header adds its two lengths (2 varints).
_RECORD_OVERHEAD = 61 + 7 * 5 + 64
_HEADER_OVERHEAD = 10


@dataclass(frozen=True)
class DeadLetter:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def source_key(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}+{partition}+{offset}".encode()


def dead_letter(
    rejection: Rejection,
    *,
    value: bytes | None,
    original_headers: Sequence[tuple[str, bytes]],
    topic: str,
    partition: int,
    offset: int,
    worker_version: str,
) -> DeadLetter:
    """The dead letter of one rejected message; its original headers are kept after ours."""
    ours = (
        rejection.code,
        rejection.field,
        rejection.reason,
        topic,
        str(partition),
        str(offset),
        worker_version,
    )
    # In the declaration's order (schemas.datasets.DEAD_LETTERS.headers).
    headers = [(name, v.encode()) for name, v in zip(DEAD_LETTERS.headers, ours, strict=True)]
    # A client's own "sieve.*" headers could pass for ours (error, source), so they go; the
    # backfill mark is the one a client may set, and it tells a replayed record from a live
    # one (its time window differs: schemas.bounds).
    headers.extend(
        (name, data)
        for name, data in original_headers
        if not name.startswith(HEADER_PREFIX) or name == BACKFILL_HEADER
    )
    return DeadLetter(key=source_key(topic, partition, offset), value=value or b"", headers=headers)


def record_size(letter: DeadLetter) -> int:
    """An upper bound of the bytes ``letter`` takes as a record batch of its own."""
    headers = sum(len(n.encode()) + len(v) + _HEADER_OVERHEAD for n, v in letter.headers)
    return _RECORD_OVERHEAD + len(letter.key) + len(letter.value) + headers


def fit_to_size(letter: DeadLetter, max_bytes: int) -> DeadLetter:
    """``letter``, its value cut so that it fits a topic of ``max.message.bytes`` =
    ``max_bytes``, with a header saying so and how long the value was; unchanged if it fits.

    Its headers are kept (they say why and where from); only if they alone cannot fit are
    the original message's own headers dropped too, and a header counts them. A raw
    message at the raw topic's limit is always a little too large here: our headers come
    on top.
    """
    if record_size(letter) <= max_bytes:
        return letter
    ours = [(n, v) for n, v in letter.headers if n.startswith(HEADER_PREFIX)]
    theirs = [(n, v) for n, v in letter.headers if not n.startswith(HEADER_PREFIX)]
    headers = [*ours, (TRUNCATED_HEADER, str(len(letter.value)).encode()), *theirs]
    room = max_bytes - record_size(DeadLetter(letter.key, b"", headers))
    if room < 0:
        headers = [*ours, (TRUNCATED_HEADER, str(len(letter.value)).encode())]
        headers.append((DROPPED_HEADERS_HEADER, str(len(theirs)).encode()))
        room = max(0, max_bytes - record_size(DeadLetter(letter.key, b"", headers)))
    return DeadLetter(key=letter.key, value=letter.value[:room], headers=headers)
