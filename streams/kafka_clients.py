"""kafka-python's admin client and consumer, without the thread a failed start leaves behind.

kafka-python 3 starts a client's IO thread (``kafka-io-<client id>``) in the constructor,
*before* it bootstraps; when the bootstrap fails (no broker yet, a broker killed or paused),
the constructor raises and nothing ever stops that thread. It lives on with the process,
reconnecting and logging a "Connection lost" error now and then, and every retry of a start
(the worker waiting for its broker, the local broker's readiness probe) adds one more. A
worker stopped later exits with those threads still writing to its log.

:func:`admin_client` and :func:`kafka_consumer` construct the same clients and, when the
constructor raises, stop the IO thread it started before re-raising. kafka-python is imported
late: ``sieve --help`` stays fast.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from kafka import KafkaAdminClient, KafkaConsumer

# How long a failed constructor's IO thread is given to finish its current poll.
STOP_TIMEOUT_MS: Final = 2000


def admin_client(**config: Any) -> KafkaAdminClient:
    """``KafkaAdminClient(**config)``; no thread left running if it raises."""
    from kafka import KafkaAdminClient

    class _StoppedOnFailure(KafkaAdminClient):
        def __init__(self, **configs: Any) -> None:
            try:
                super().__init__(**configs)
            except BaseException:
                _stop_io(self)
                raise

    client: KafkaAdminClient = _StoppedOnFailure(**config)
    return client


def kafka_consumer(*topics: str, **config: Any) -> KafkaConsumer:
    """``KafkaConsumer(*topics, **config)``; no thread left running if it raises."""
    from kafka import KafkaConsumer

    class _StoppedOnFailure(KafkaConsumer):
        def __init__(self, *names: str, **configs: Any) -> None:
            try:
                super().__init__(*names, **configs)
            except BaseException:
                _stop_io(self)
                raise

    consumer: KafkaConsumer = _StoppedOnFailure(*topics, **config)
    return consumer


def _stop_io(half_built: object) -> None:
    # Only what the constructor got to: its connections, then its IO loop. A failure here
    # must not hide the constructor's own error, which the caller re-raises.
    client = getattr(half_built, "_client", None)
    net = getattr(half_built, "_net", None)
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()
    if net is not None:
        with contextlib.suppress(Exception):
            net.stop(timeout_ms=STOP_TIMEOUT_MS)
