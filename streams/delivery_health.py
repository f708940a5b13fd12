"""Whether a producer can deliver, from what happened to its records (pure: callers pass
``now``, a monotonic clock reading in seconds).

A producer is *delivering* until a record fails, then *failing* until one is acknowledged
again or the producer is rebuilt. While it fails, the owner probes the broker; a producer
that still fails ``heal_grace_s`` after the broker answers again is stuck, and is rebuilt
(:class:`streams.producer.EventProducer` explains why kafka-python needs that).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class DeliveryState:
    """What ``/healthz`` reports: ``ok``, or why not (never a value, never a key)."""

    ok: bool
    reason: str | None = None


class DeliveryHealth:
    """The delivery state of one producer. Thread-safe: callbacks of kafka-python's sender
    thread, request threads and the healer report to it at once."""

    def __init__(self, heal_grace_s: float) -> None:
        if heal_grace_s < 0:
            raise ValueError("heal_grace_s must not be negative")
        self.heal_grace_s = heal_grace_s
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._answering_since: float | None = None

    def delivered(self) -> None:
        """The broker acknowledged a record: delivering again."""
        with self._lock:
            self._failing_since = None
            self._last_error = None
            self._answering_since = None

    def failed(self, now: float, error: str) -> None:
        """A record was not delivered (or could not be sent); ``error`` names the cause."""
        with self._lock:
            if self._failing_since is None:
                self._failing_since = now
            self._last_error = error

    def broker_answers(self, now: float, answering: bool) -> None:
        """What a probe of the broker found while failing."""
        with self._lock:
            if not answering:
                self._answering_since = None
            elif self._answering_since is None:
                self._answering_since = now

    def rebuilt(self) -> None:
        """A fresh producer replaced the failing one: nothing known against it."""
        self.delivered()

    @property
    def failing(self) -> bool:
        with self._lock:
            return self._failing_since is not None

    def should_rebuild(self, now: float) -> bool:
        """True once the broker has answered for ``heal_grace_s`` while records still fail:
        the producer did not recover by itself (it normally does within seconds)."""
        with self._lock:
            return (
                self._failing_since is not None
                and self._answering_since is not None
                and now - self._answering_since >= self.heal_grace_s
            )

    def state(self, now: float) -> DeliveryState:
        """Delivering, or failing with how long and the last error's name."""
        with self._lock:
            if self._failing_since is None:
                return DeliveryState(True)
            seconds = now - self._failing_since
            broker = (
                "the broker answers again; reconnecting"
                if self._answering_since is not None
                else "the broker does not answer"
            )
            return DeliveryState(
                False,
                f"no record delivered to Kafka for {seconds:.0f} s"
                f" (last error: {self._last_error}); {broker}",
            )
