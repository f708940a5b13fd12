"""Dead letters sent as their batch is processed, and confirmed one by one before the range
that counts them is committed (docs/architecture.md, "Dead letters").

``producer.flush()`` only waits: a delivery that failed (a message too large, a topic that
is gone) would pass it, and the range's marker would count dead letters that were never
written. Here every send's own future is awaited. A failure the broker may get over (it is
away, a leader moved, a batch expired in the outage) is sent again, as often as it takes:
the dead-letter topic is keyed by source offset and compacted, so a copy sent twice is one
for readers. Any other failure fails the range: nothing of it is committed, and the worker
stops so that a restart replays it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiokafka.errors as kafka_errors

from streams.errors import SieveError
from streams.worker.deadletter import DeadLetter, fit_to_size

logger = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


class Producer(Protocol):
    """What is used of aiokafka's ``AIOKafkaProducer``."""

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]: ...


class DeadLetterDeliveryError(SieveError):
    """A dead letter could not be written: the range counting it must not be committed."""


@dataclass
class SentLetter:
    """One dead letter on its way; ``delivery`` resolves once the broker has it."""

    letter: DeadLetter
    delivery: asyncio.Future[Any]


class DeadLetterSender:
    """Sends dead letters to one topic, cut to fit it, and confirms each delivery."""

    def __init__(self, producer: Producer, topic: str, max_message_bytes: int) -> None:
        self._producer = producer
        self.topic = topic
        self.max_message_bytes = max_message_bytes
        self.truncated = 0  # dead letters cut to fit, since start

    async def send(self, letters: Sequence[DeadLetter]) -> list[SentLetter]:
        """Start sending ``letters`` (in order); confirm them later with :meth:`confirm`."""
        sent = []
        for letter in letters:
            fitted = fit_to_size(letter, self.max_message_bytes)
            if fitted is not letter:
                self.truncated += 1
                logger.warning(
                    "dead letter %s cut from %d to %d bytes to fit %s",
                    letter.key.decode(errors="replace"),
                    len(letter.value),
                    len(fitted.value),
                    self.topic,
                )
            sent.append(SentLetter(fitted, await self._send(fitted)))
        return sent

    async def confirm(self, sent: Sequence[SentLetter]) -> None:
        """Return once the broker has every one of ``sent``; raise DeadLetterDeliveryError
        for one it will not take. Retried failures log one line per letter, not per try."""
        for item in sent:
            attempt = 0
            while True:
                try:
                    await item.delivery
                    break
                except (kafka_errors.KafkaTimeoutError, kafka_errors.KafkaError) as error:
                    retriable = error.retriable or isinstance(error, kafka_errors.KafkaTimeoutError)
                    if not retriable:
                        raise DeadLetterDeliveryError(
                            f"dead letter {item.letter.key.decode(errors='replace')} was not"
                            f" written to {self.topic}: {type(error).__name__}"
                        ) from error
                    if attempt == 0:
                        logger.warning(
                            "dead letter %s not delivered yet (%s); sending it again",
                            item.letter.key.decode(errors="replace"),
                            type(error).__name__,
                        )
                    await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
                    attempt += 1
                    item.delivery = await self._send(item.letter)

    async def _send(self, letter: DeadLetter) -> asyncio.Future[Any]:
        try:
            return await self._producer.send(
                self.topic, value=letter.value, key=letter.key, headers=letter.headers
            )
        except kafka_errors.KafkaError as error:
            # Refused before it was queued (too large, no metadata in time): the same as a
            # failed delivery, which :meth:`confirm` decides about.
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(error)
            return failed
