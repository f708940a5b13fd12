"""kafka-python's admin client and consumer, without the thread a failed start leaves behind.

kafka-python 3 starts a client's IO thread (``kafka-io-<client id>``) in the constructor,
*before* it bootstraps; when the bootstrap fails (no broker yet, a broker killed or paused),
the constructor raises and nothing ever stops that thread. It lives on with the process,
reconnecting and logging a "Connection lost" error now and then, and every retry of a start
(the worker waiting for its broker, the local broker's readiness probe) adds one more. A
worker stopped later exits with those threads still writing to its log.

:func:`admin_client` and :func:`kafka_consumer` construct the same clients and, when the
constructor raises, stop the IO thread it started before re-raising; they also cap the
reconnect backoff (:data:`RECONNECT_BACKOFF_MAX_MS`). kafka-python is imported
late: ``sieve --help`` stays fast.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from kafka import KafkaAdminClient, KafkaConsumer

Client = TypeVar("Client")

# kafka-python doubles its reconnect backoff up to 30 s: a client started while its broker
# was away (a worker waiting for it) noticed its return up to 30 s late. One second is
# plenty for clients that live for one request or a few.
RECONNECT_BACKOFF_MAX_MS: Final = 1000
# How long a failed constructor's IO thread is given to finish its current poll.
STOP_TIMEOUT_MS: Final = 2000


def admin_client(**config: Any) -> KafkaAdminClient:
    """``KafkaAdminClient(**config)``; no thread left running if it raises."""
    from kafka import KafkaAdminClient

    return _constructed(KafkaAdminClient, (), config)


def kafka_consumer(*topics: str, **config: Any) -> KafkaConsumer:
    """``KafkaConsumer(*topics, **config)``; no thread left running if it raises."""
    from kafka import KafkaConsumer

    return _constructed(KafkaConsumer, topics, config)


def _constructed(cls: type[Client], args: tuple[str, ...], config: dict[str, Any]) -> Client:
    # Allocated first and initialised apart, so that a constructor that raises still leaves
    # us the half-built client whose thread must be stopped.
    config = {"reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS, **config}
    client = cls.__new__(cls)
    try:
        client.__init__(*args, **config)  # type: ignore[misc]
    except BaseException:
        _stop_io(client)
        raise
    return client


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
