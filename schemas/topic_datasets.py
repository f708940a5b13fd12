"""The datasets Sieve keeps in Kafka topics rather than in files: the dead letters.

Apart from :mod:`schemas.datasets` (which re-exports them) so that the settings, which give
their defaults, import no pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class TopicDataset:
    """A dataset Sieve keeps in a Kafka topic, not in files: the dead letters.

    The topic's name and retention are settings (``SIEVE_DEAD_LETTER_TOPIC``,
    ``SIEVE_DEAD_LETTER_RETENTION_HOURS``) whose defaults are these; ``sieve topics`` and
    the worker create the topic with :attr:`cleanup_policy`, and the worker's dead-letter
    writer puts :attr:`headers` first on every record, in this order.
    """

    name: str
    default_topic: str
    default_retention_hours: int
    cleanup_policy: str  # Kafka's cleanup.policy
    key: str  # what a record's key is
    headers: tuple[str, ...]
    # Access and erasure reach it (streams.subject); its records go with the topic's retention.
    personal: bool


# Compacted and deleted: a dead letter sent again (a replay after a crash) replaces the
# earlier copy under the same key, a tombstone erases one, and everything still goes after
# the retention (a rejected message may hold personal data).
DEAD_LETTERS: Final = TopicDataset(
    name="dead_letters",
    default_topic="sieve.dead-letter",
    default_retention_hours=168,
    cleanup_policy="compact,delete",
    key="<topic>+<partition>+<offset> of the rejected raw message",
    headers=(
        "sieve.error.code",
        "sieve.error.field",
        "sieve.error.reason",
        "sieve.source.topic",
        "sieve.source.partition",
        "sieve.source.offset",
        "sieve.worker.version",
    ),
    personal=True,
)
