"""Bulk records to a Kafka topic through aiokafka's batch API, from synchronous code.

Why not the SDK (:class:`streams.producer.EventProducer`, kafka-python): it spends Python
time on every record (a future, callbacks, the accumulator's locks) and tops out at
~33,000-44,000 records/s on this 2-core machine, which made generation the demo's slow
step. Appending to aiokafka ``BatchBuilder`` objects and handing whole batches to
``send_batch`` measured ~360,000/s (``bench/generate_throughput.py`` compares the two).

Why a child process rather than a thread: generating records is CPU-bound Python, and a
producer thread beside it starves for the GIL. Measured here (200,000 records, 6
partitions): the traffic model alone 55,000/s, this sink alone 92,000/s, both in one
process with the producer on a thread 16,000-23,000/s. So the caller's process only batches
records into chunks (msgpack, C code) and writes them to a pipe; a child process
(``python -m streams.generate.topic_sink``, not multiprocessing, which would re-run the
caller's main script) owns the event loop and the producer, and uses the second core.

Contract, the same as the SDK's:

* **Keys and partitions.** A record goes to ``murmur2(key) % partitions``, the partitioner
  of kafka-python, aiokafka and the Java client, so an account lands on the partition every
  other Sieve producer would pick. A keyless record goes to a random partition.
* **Order.** Records of one partition are sent in the order :meth:`TopicSink.send` got them:
  one pipe, read in order; one FIFO queue and one sender task per partition; and aiokafka
  keeps at most one batch of a partition in flight.
* **Delivery.** ``acks="all"`` and idempotence: a batch retried after a lost answer is
  written once. :meth:`TopicSink.close` returns only when every record is acknowledged and
  raises :class:`TransientError` if any was not, or if the child process died.
* **No topic is created here**: a missing topic is a :class:`ConfigurationError` at once (a
  ``--topic`` typo must not make a new topic); ``open_sink(create_topic=True)`` creates it
  first.

Backpressure: the pipe blocks the caller when the child falls behind, and the child's
per-partition queues are bounded, so memory stays bounded at any generation rate. Records
are never held back long: the caller ships a chunk at least every ``linger_s``, and the
child sends partly filled batches whenever the pipe has been idle that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO, Any, Final

import msgspec

from streams.errors import ConfigurationError, SieveError, TransientError

# A batch per request, under the broker's default message.max.bytes (1 MiB).
BATCH_BYTES: Final = 512 * 1024
CHUNK_BYTES: Final = 256 * 1024  # records per pipe message, by value size
# A chunk goes to the child at least this often, and the child sends partly filled batches
# after the pipe was idle this long (paced generation, a trickle of replayed lines); a bulk
# run fills chunks and batches long before.
LINGER_S: Final = 0.2
QUEUED_BATCHES: Final = 4  # full batches waiting per partition in the child
START_TIMEOUT_S: Final = 60.0
CLOSE_TIMEOUT_S: Final = 300.0
REQUEST_TIMEOUT_MS: Final = 60_000
_FRAME: Final = struct.Struct(">I")  # the length of the chunk that follows; 0: the end

_ERRORS: Final[dict[str, type[SieveError]]] = {
    "configuration": ConfigurationError,
    "transient": TransientError,
}


class TopicSink:
    """Sends (key, value) records to ``topic`` in large batches; see the module docstring."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        client_id: str,
        *,
        batch_bytes: int = BATCH_BYTES,
        linger_s: float = LINGER_S,
    ) -> None:
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.failures = 0
        self._linger_s = linger_s
        self._pending: list[tuple[bytes | None, bytes, Sequence[tuple[str, bytes]]]] = []
        self._pending_bytes = 0
        self._shipped_at = time.monotonic()
        self._encode = msgspec.msgpack.Encoder().encode
        options = {
            "bootstrap_servers": bootstrap_servers,
            "topic": topic,
            "client_id": client_id,
            "batch_bytes": batch_bytes,
            "linger_s": linger_s,
        }
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._to_child: IO[bytes] = self._process.stdin
        self._from_child: IO[bytes] = self._process.stdout
        self.partitions: list[int] = self._answer(START_TIMEOUT_S, "start")["partitions"]

    def send(
        self, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> None:
        """Queue one record; its record timestamp is when the child appends it (received_at).
        ``headers`` (Kafka record headers) go with it, e.g. replay's backfill mark."""
        self._pending.append((key, value, headers or ()))
        self._pending_bytes += len(value)
        # A clock read per record (~50 ns) keeps a paced trickle (--rate) flowing; records
        # after the last send of a pause wait for the next send or close().
        if (
            self._pending_bytes >= CHUNK_BYTES
            or time.monotonic() - self._shipped_at >= self._linger_s
        ):
            self._ship()

    def close(self) -> None:
        """Send what is left, wait for every acknowledgement, stop; raise if any was lost."""
        try:
            self._ship()
            self._write(_FRAME.pack(0))  # the end: the child flushes, stops and answers
            self._to_child.close()
            answer = self._answer(CLOSE_TIMEOUT_S, "close")
        finally:
            self._stop()
        self.failures = answer["failures"]
        if self.failures:
            raise TransientError(
                f"{self.failures} records were not delivered to {self.topic}: {answer['first']}"
            )

    def _ship(self) -> None:
        self._shipped_at = time.monotonic()
        if not self._pending:
            return
        chunk = self._encode(self._pending)
        self._write(_FRAME.pack(len(chunk)) + chunk)
        self._pending, self._pending_bytes = [], 0

    def _write(self, data: bytes) -> None:
        try:
            self._to_child.write(data)
            self._to_child.flush()
        except OSError:  # BrokenPipeError: the child is gone; its last answer says why
            self._answer(1.0, "take records")
            raise TransientError(f"the producer process of {self.topic} stopped") from None

    def _answer(self, timeout_s: float, step: str) -> dict[str, Any]:
        """The child's next answer (one JSON line); its error raised as the caller's."""
        ready, _, _ = select.select([self._from_child], [], [], timeout_s)
        if not ready:
            self._stop()
            raise TransientError(f"the producer of {self.topic} did not {step} in {timeout_s:g} s")
        line = self._from_child.readline()
        if not line:
            self._stop()
            raise TransientError(
                f"the producer process of {self.topic} died (exit code {self._process.returncode})"
            )
        answer: dict[str, Any] = json.loads(line)
        if answer["kind"] in _ERRORS:
            self._stop()
            raise _ERRORS[answer["kind"]](answer["message"])
        return answer

    def _stop(self) -> None:
        for stream in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):  # a broken pipe: nothing left to flush
                stream.close()
        try:
            self._process.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


# --- the child process ---------------------------------------------------------------------------


def _child_main(options: dict[str, Any]) -> None:
    out = sys.stdout.buffer

    def answer(document: dict[str, Any]) -> None:
        out.write(json.dumps(document).encode() + b"\n")
        out.flush()

    try:
        asyncio.run(_produce(answer, **options))
    except SieveError as error:
        kind = "configuration" if isinstance(error, ConfigurationError) else "transient"
        answer({"kind": kind, "message": str(error)})
    except BaseException as error:  # reported, then the caller raises TransientError
        message = f"the producer of {options['topic']} failed: {type(error).__name__}: {error}"
        answer({"kind": "transient", "message": message})


def _read_chunk(source: IO[bytes]) -> bytes:
    """The next chunk from the caller; b"" at the end (or when the caller is gone)."""
    head = source.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return b""
    (size,) = _FRAME.unpack(head)
    return source.read(size) if size else b""


async def _produce(
    answer: Any,
    bootstrap_servers: str,
    topic: str,
    client_id: str,
    batch_bytes: int,
    linger_s: float,
) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        max_batch_size=batch_bytes,
        max_request_size=2 * batch_bytes,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )
    try:
        await producer.start()
    except KafkaError as away:
        await producer.stop()
        raise TransientError(f"no Kafka broker answered at {bootstrap_servers}: {away}") from None
    try:
        try:
            cluster = await producer.client.fetch_all_metadata()
        except KafkaError as failed:
            raise TransientError(
                f"reading topics at {bootstrap_servers} failed: {failed}"
            ) from None
        partitions = sorted(cluster.partitions_for_topic(topic) or ())
        if not partitions:
            raise ConfigurationError(
                f"topic {topic!r} does not exist at {bootstrap_servers}; create Sieve's topics"
                " with `sieve topics`, or pass --create-topic to create this one"
            )
        answer({"kind": "ready", "partitions": partitions})
        batches = _Batches(producer, topic, partitions)
        decode = msgspec.msgpack.Decoder(
            list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
        ).decode
        loop = asyncio.get_running_loop()
        source = sys.stdin.buffer
        while True:
            reading = loop.run_in_executor(None, _read_chunk, source)
            done, _ = await asyncio.wait({reading}, timeout=linger_s)
            if not done:  # the pipe is idle: what waits in partly filled batches goes now
                await batches.hand_over_all()
            chunk = await reading
            if not chunk:
                break
            await batches.add_all(decode(chunk))
        failures, first = await batches.finish()
    finally:
        await producer.stop()  # sends what is queued and waits for the answers
    answer({"kind": "done", "failures": failures, "first": first})


class _Batches:
    """Per-partition batch builders, queues and sender tasks of the child's producer."""

    def __init__(self, producer: Any, topic: str, partitions: list[int]) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        self.producer, self.topic, self.partitions = producer, topic, partitions
        self.partitioner = DefaultPartitioner()
        self.partition_of: dict[bytes, int] = {}
        self.builders: dict[int, Any] = {}
        self.deliveries: list[asyncio.Future[Any]] = []
        self.queues = {p: asyncio.Queue[Any](maxsize=QUEUED_BATCHES) for p in partitions}
        self.senders = [asyncio.create_task(self._send_all(p)) for p in partitions]
        self.failures = 0
        self.first_failure = ""

    async def add_all(
        self, records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
    ) -> None:
        """Append ``records`` in order; a full batch is handed to its sender on the way.

        One loop awaiting only when a batch is full, not a coroutine per record: this
        child's time per record is a fifth of the traffic model's and shares its core.
        """
        builders, partition_of = self.builders, self.partition_of
        for key, value, headers in records:
            partition = partition_of.get(key) if key is not None else None
            if partition is None:
                partition = self._partition(key)
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = self.producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                await self._hand_over(partition)
                builder = builders[partition] = self.producer.create_batch()
                builder.append(key=key, value=value, timestamp=None, headers=headers)

    async def hand_over_all(self) -> None:
        for partition in list(self.builders):
            await self._hand_over(partition)

    async def finish(self) -> tuple[int, str]:
        await self.hand_over_all()
        for queue in self.queues.values():
            await queue.put(None)
        await asyncio.gather(*self.senders)
        for delivery in self.deliveries:
            try:
                await delivery
            except Exception as error:  # counted in the answer, never raised here
                self._failed(error, 0)
        return self.failures, self.first_failure

    def _partition(self, key: bytes | None) -> int:
        if key is None:
            return int(self.partitioner(None, self.partitions, self.partitions))
        partition = self.partition_of.get(key)
        if partition is None:
            # Pure-Python murmur2: once per key (accounts are few).
            partition = self.partition_of[key] = self.partitioner(
                key, self.partitions, self.partitions
            )
        return partition

    async def _hand_over(self, partition: int) -> None:
        builder = self.builders.pop(partition)
        if builder.record_count():
            await self.queues[partition].put(builder)

    async def _send_all(self, partition: int) -> None:
        queue = self.queues[partition]
        while (builder := await queue.get()) is not None:
            count = builder.record_count()
            try:
                delivery = await self.producer.send_batch(builder, self.topic, partition=partition)
            except Exception as error:  # counted; the caller's close() raises with the first
                self._failed(error, count)
                continue
            delivery.add_done_callback(lambda done, n=count: self._delivered(done, n))
            self.deliveries.append(delivery)

    def _delivered(self, done: asyncio.Future[Any], count: int) -> None:
        if done.cancelled():
            self._failed(asyncio.CancelledError(), count)
        elif (error := done.exception()) is not None:
            self._failed(error, count)

    def _failed(self, error: BaseException, count: int) -> None:
        self.failures += count
        if not self.first_failure:
            self.first_failure = f"{type(error).__name__}: {error}"


if __name__ == "__main__":
    # The child: its options as JSON in argv, records on stdin, answers on stdout.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _child_main(json.loads(sys.argv[1]))
