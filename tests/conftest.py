"""Session fixtures: one real Kafka broker per pytest session, unique topics per test.

``kafka`` (session) starts a real Apache Kafka broker (KRaft, one node) on free loopback
ports with its data in a temporary folder; only the jars are shared, from the repository's
``.sieve/broker/lib``, so they are fetched once per machine. A broker that cannot start is
a test error, never a skip: locally and in CI (``CI`` set) alike.

``topic_factory`` (per test) creates topics with unique names, so tests never see each
other's records and need no cleanup.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator, Mapping

import pytest
from hypothesis import HealthCheck, settings

from streams.broker.control import broker_version, start_on_free_ports
from streams.errors import ConfigurationError, SieveError
from streams.topics import TopicSpec, create_topics
from tests.fixtures.kafka import (
    JAR_CACHE,
    PORT_ATTEMPTS,
    START_TIMEOUT_S,
    KafkaBroker,
    TopicFactory,
)

# CI machines are shared and slow: no per-example deadline, no "too slow" health check (one
# failed a full run once), and a fixed derandomized run so a CI failure reproduces locally
# with `HYPOTHESIS_PROFILE=ci`. Locally the default profile keeps exploring new examples.
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

BROKER_KEY = pytest.StashKey[KafkaBroker]()


@pytest.fixture(scope="session")
def kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaBroker]:
    """One real Kafka broker for the whole session, stopped at its end."""
    try:
        local = start_on_free_ports(
            tmp_path_factory.mktemp("kafka"), JAR_CACHE, START_TIMEOUT_S, PORT_ATTEMPTS
        )
    except SieveError as error:
        pytest.fail(f"the Kafka broker did not start: {error}", pytrace=False)
    info = KafkaBroker(
        bootstrap_servers=local.bootstrap_servers,
        version=broker_version(local.lib_dir),
        port=local.port,
        broker=local,
    )
    request.config.stash[BROKER_KEY] = info
    try:
        yield info
    finally:
        local.stop()


def _slug(text: str, limit: int = 60) -> str:
    # Kafka topic names allow [a-zA-Z0-9._-] only (and at most 249 characters).
    return re.sub(r"[^a-zA-Z0-9_-]+", "-", text).strip("-")[:limit] or "test"


@pytest.fixture
def topic_factory(kafka: KafkaBroker, request: pytest.FixtureRequest) -> TopicFactory:
    """``make(partitions=1, configs=None) -> name``: creates a fresh topic for this test."""

    def make(partitions: int = 1, configs: Mapping[str, str] | None = None) -> str:
        name = f"test.{_slug(request.node.name)}.{uuid.uuid4().hex[:10]}"
        create_topics(kafka.bootstrap_servers, [TopicSpec(name, partitions, dict(configs or {}))])
        return name

    return make


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3.0 loads its protocol schemas with importlib.resources' legacy API:
    # 200+ identical warnings per session that hide our own. Only those calls are silenced.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:read_text is deprecated:DeprecationWarning:kafka.protocol.schemas.load_json",
    )
    config.addinivalue_line(
        "filterwarnings",
        "ignore:open_text is deprecated:DeprecationWarning:importlib.resources._legacy",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Whatever uses the broker is an integration test, marked or not, so
    # `-m "not integration"` reliably runs without Kafka.
    for item in items:
        if "kafka" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def pytest_report_header() -> str:
    try:
        return f"kafka broker jars: {broker_version(JAR_CACHE)} ({JAR_CACHE})"
    except ConfigurationError:
        return f"kafka broker jars: not cached yet (fetched into {JAR_CACHE} on first use)"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    started = config.stash.get(BROKER_KEY, None)
    if started is not None:
        terminalreporter.write_line(
            f"Kafka broker {started.version} at {started.bootstrap_servers}"
        )
