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

from schemas.decode import Rejection

HEADER_PREFIX = "sieve."
# The code of a record that made a pipeline stage raise (streams.worker.pipeline): the
# decoder and validator let it through, a later stage could not place it.
PROCESSING_ERROR = "processing_error"


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
    headers = [
        (HEADER_PREFIX + "error.code", rejection.code.encode()),
        (HEADER_PREFIX + "error.field", rejection.field.encode()),
        (HEADER_PREFIX + "error.reason", rejection.reason.encode()),
        (HEADER_PREFIX + "source.topic", topic.encode()),
        (HEADER_PREFIX + "source.partition", str(partition).encode()),
        (HEADER_PREFIX + "source.offset", str(offset).encode()),
        (HEADER_PREFIX + "worker.version", worker_version.encode()),
    ]
    headers.extend(
        (name, data) for name, data in original_headers if not name.startswith(HEADER_PREFIX)
    )
    return DeadLetter(key=source_key(topic, partition, offset), value=value or b"", headers=headers)
