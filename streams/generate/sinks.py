"""Where raw records go (a Kafka topic or a JSON-lines file), and how fast.

Shared by ``sieve generate`` and ``sieve replay``: both hand over bytes that are already
the wire value, keyed by account. The topic sink is :class:`streams.generate.topic_sink.TopicSink`
(batches through aiokafka).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Final, Protocol

from streams.errors import ConfigurationError
from streams.generate.topic_sink import TopicSink

__all__ = ["CREATE_TOPIC_HELP", "JsonlSink", "RawSink", "TokenBucket", "TopicSink", "open_sink"]

if TYPE_CHECKING:
    from streams.settings import Settings


Headers = Sequence[tuple[str, bytes]]


class RawSink(Protocol):
    """Accepts (key, value) records, with Kafka headers where the sink has them (replay
    marks its records as a backfill). ``close`` delivers everything or raises."""

    def send(self, key: bytes | None, value: bytes, headers: Headers | None = None) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """One value per line: the format ``sieve replay --format jsonl`` reads back.

    Keys are not written; replay derives them from the value's ``account_id``.
    """

    def __init__(self, out: IO[bytes], *, close_file: bool = False) -> None:
        self._out, self._close_file = out, close_file

    def send(self, key: bytes | None, value: bytes, headers: Headers | None = None) -> None:
        # Headers are not written: a file replayed later gets its headers then.
        self._out.write(value)
        self._out.write(b"\n")

    def close(self) -> None:
        self._out.flush()
        if self._close_file:
            self._out.close()


class TokenBucket:
    """Paces calls to ``rate`` per second on average, allowing bursts of ``burst``.

    ``clock`` and ``sleep`` are injectable so tests need not wait.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ConfigurationError(f"rate must be > 0, not {rate}")
        self.rate = rate
        # A tenth of a second's worth by default: smooth, yet few sleeps.
        self.capacity = burst if burst is not None else max(1.0, rate / 10)
        self.tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._last = clock()

    def take(self) -> None:
        """Return when one more call fits the rate (sleeping if needed)."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens < 1:
            self._sleep((1 - self.tokens) / self.rate)
            now = self._clock()
            self.tokens += (now - self._last) * self.rate
            self._last = now
        self.tokens -= 1


def open_sink(
    out_path: str | None,
    settings: Settings,
    topic: str,
    client_id: str,
    *,
    create_topic: bool = False,
) -> tuple[RawSink, str]:
    """A JSON-lines file (``'-'``: stdout) when ``out_path`` is given, else the topic.

    The topic must exist (``sieve topics`` creates Sieve's): a missing one is a
    ConfigurationError naming it, so a typo in ``--topic`` never makes a new topic. With
    ``create_topic`` (the ``--create-topic`` option) a missing topic is created first, with
    the raw topic's settings (short retention, the configured partitions) rather than the
    broker's defaults; an existing topic is left as it is. Returns the sink and a
    description of where it writes.
    """
    import sys

    if out_path == "-":
        return JsonlSink(sys.stdout.buffer), "stdout"
    if out_path is not None:
        try:
            out = open(out_path, "wb")  # noqa: SIM115 (closed by the sink)
        except OSError as error:
            raise ConfigurationError(f"cannot write {out_path}: {error}") from error
        return JsonlSink(out, close_file=True), out_path
    servers = settings.bootstrap_servers
    if create_topic:
        from streams.topics import create_topics, raw_topic_spec

        spec = raw_topic_spec(topic, settings.raw_partitions, settings.raw_retention_hours)
        create_topics(servers, [spec])
    return TopicSink(servers, topic, client_id), f"{topic} at {servers}"


CREATE_TOPIC_HELP: Final = (
    "Create the topic if it does not exist (with the raw topic's partitions and retention);"
    " without it a missing topic is an error (`sieve topics` creates Sieve's topics)."
)
