"""The local Apache Kafka broker (KRaft, one node) that development and tests run against.

``pom.xml`` pins the broker's version and resolves its jars from Maven Central,
:mod:`streams.broker.control` starts and stops it, :mod:`streams.broker.commands` is
``sieve broker``.
"""

from streams.broker.control import (
    BrokerError,
    BrokerStatus,
    LocalBroker,
    PortTakenError,
    broker_version,
)

__all__ = ["BrokerError", "BrokerStatus", "LocalBroker", "PortTakenError", "broker_version"]
