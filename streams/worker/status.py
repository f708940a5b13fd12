"""What ``sieve status`` reports: committed counts from the markers, lag from Kafka.

The counts come from the commit markers (the truth of what is processed) and need no
broker. The lag needs one and is asked within a deadline (:data:`LAG_DEADLINE_S`): a broker
that is down (nothing listens) is known at once from a refused TCP connection, and one that
accepts connections but does not answer (stopped, overloaded, a wrong port) is given up
when the deadline passes. So ``sieve status`` fails within 5 s either way; it took 31.5 s
before (issue 12.3), kafka-python's bootstrap timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from typing import Any, Final

from rich.table import Table

from streams.errors import TransientError
from streams.kafka_clients import kafka_consumer

# The whole lag query: TCP probe, bootstrap, metadata and offsets. With the interpreter's
# start and the markers' read, `sieve status` stays under 5 s on a loaded machine.
LAG_DEADLINE_S: Final = 2.0
CLIENT_ID: Final = "sieve-status"


class LagUnknownError(TransientError):
    """No broker said how far the workers are behind; the message says why."""


def query_lag(
    bootstrap_servers: str, group: str, topic: str, deadline_s: float = LAG_DEADLINE_S
) -> dict[int, int]:
    """Records of ``topic`` per partition that ``group`` has not committed yet (from the log
    start where it committed nothing). Raises :class:`LagUnknownError` within
    ``deadline_s`` (plus a connection's setup) when no broker answers."""
    deadline = time.monotonic() + deadline_s
    servers = [server.strip() for server in bootstrap_servers.split(",") if server.strip()]
    if not any(_accepts_connections(server, deadline) for server in servers):
        raise LagUnknownError(f"no Kafka broker listens at {bootstrap_servers}: lag unknown")
    # kafka-python bounds bootstrap and offset requests, but not every metadata wait
    # (partitions_for_topic waits without a timeout), so the query runs in a daemon thread
    # the command stops waiting for: a broker that hangs mid-answer cannot hold it past the
    # deadline, and the thread ends with the process.
    outcome: dict[str, Any] = {}

    def ask() -> None:
        try:
            outcome["lag"] = _lag_from_kafka(bootstrap_servers, group, topic, deadline)
        except Exception as error:  # reported by the caller, in the caller's thread
            outcome["error"] = error

    asking = threading.Thread(target=ask, name=CLIENT_ID, daemon=True)
    asking.start()
    asking.join(max(0.0, deadline - time.monotonic()))
    if "lag" in outcome:
        lag: dict[int, int] = outcome["lag"]
        return lag
    error = outcome.get("error")
    if isinstance(error, LagUnknownError):
        raise error
    if error is not None:
        reason = f"{type(error).__name__}: {error}"
    else:
        reason = f"no answer within {deadline_s:g} s"
    raise LagUnknownError(f"the Kafka broker at {bootstrap_servers} did not answer ({reason})")


def _accepts_connections(server: str, deadline: float) -> bool:
    host, _, port = server.rpartition(":")
    timeout_s = max(0.1, deadline - time.monotonic())
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _lag_from_kafka(
    bootstrap_servers: str, group: str, topic: str, deadline: float
) -> dict[int, int]:
    from kafka import TopicPartition  # imported late: kafka-python is slow to load

    def left_ms() -> int:
        return max(100, int((deadline - time.monotonic()) * 1000))

    consumer = kafka_consumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group,
        client_id=CLIENT_ID,
        enable_auto_commit=False,
        allow_auto_create_topics=False,  # asking about a topic must never create it
        bootstrap_timeout_ms=left_ms(),
        request_timeout_ms=left_ms() + 1000,  # above fetch_max_wait_ms, as kafka-python requires
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise LagUnknownError(f"the topic {topic} does not exist at {bootstrap_servers}")
        tps = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        ends = consumer.end_offsets(tps, timeout_ms=left_ms())
        starts = consumer.beginning_offsets(tps, timeout_ms=left_ms())
        lag = {}
        for tp in tps:
            committed = consumer.committed(tp, timeout_ms=left_ms())
            position = starts[tp] if committed is None else max(committed, starts[tp])
            lag[tp.partition] = max(0, ends[tp] - position)
        return lag
    finally:
        consumer.close()


def status_document(
    topic: str,
    totals: Counter[str],
    dead: Counter[str],
    identifiable: Counter[str],
    ranges: int,
    *,
    lag: dict[int, int] | None,
    lag_error: str | None,
) -> dict[str, Any]:
    """Everything ``sieve status`` says, as one JSON-ready document (``--format json``)."""
    return {
        "topic": topic,
        "ranges": ranges,
        "raw": totals["raw"],
        "accepted": totals["accepted"],
        "duplicates": totals["duplicates"],
        "dead_lettered": sum(dead.values()),
        "dead_lettered_by_reason": dict(sorted(dead.items())),
        "identifiable_by_class": dict(sorted(identifiable.items())),
        "facts": totals["facts"],
        "bytes_written": totals["bytes_written"],
        "lag": None
        if lag is None
        else {
            "records": sum(lag.values()),
            "by_partition": {str(partition): n for partition, n in sorted(lag.items())},
        },
        "lag_error": lag_error,
    }


def status_table(document: dict[str, Any]) -> Table:
    """The document as the table a person reads."""
    table = Table(title=f"Committed from {document['topic']}")
    table.add_column("counter")
    table.add_column("value", justify="right")
    table.add_row("ranges", f"{document['ranges']:,}")
    for name in ("raw", "accepted", "duplicates", "dead_lettered"):
        table.add_row(name.replace("_", "-"), f"{document[name]:,}")
    for reason, count in document["dead_lettered_by_reason"].items():
        table.add_row(f"  {reason}", f"{count:,}")
    for cls, count in document["identifiable_by_class"].items():
        table.add_row(f"identifiable: {cls}", f"{count:,}")
    table.add_row("facts", f"{document['facts']:,}")
    table.add_row("bytes written", f"{document['bytes_written']:,}")
    lag = document["lag"]
    table.add_row("lag", "unknown" if lag is None else f"{lag['records']:,} records")
    return table
