"""Session fixtures: one real Kafka broker per pytest session, unique topics per test.

``kafka`` (session) starts a real Apache Kafka broker (KRaft, one node) on free loopback
ports with its data in a temporary folder; only the jars are shared, from the repository's
``.sieve/broker/lib``, so they are fetched once per machine. A broker that cannot start is
a test error, never a skip: locally and in CI (``CI`` set) alike.

Under pytest-xdist (``make test`` runs ``-n 2``) the run still has one broker: the first
worker process that needs it starts it in a folder the controller chose, the others attach
to it (a file lock decides), and the controller stops it when the run ends. Tests that stop,
pause or kill a broker start their own (``own_broker``), never this one.

``topic_factory`` (per test) creates topics with unique names, so tests never see each
other's records and need no cleanup.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from streams.broker.control import LocalBroker, broker_version, start_on_free_ports
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

# Set by the xdist controller for its worker processes: where the run's one broker lives.
SHARED_BROKER_DIR = "SIEVE_TEST_SHARED_BROKER_DIR"


def _shared_broker(folder: Path) -> LocalBroker:
    """The run's broker in ``folder``: started by the first caller, attached to by the rest."""
    record = folder / "broker.json"
    with (folder / "broker.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.exists():
            known = json.loads(record.read_text())
            return LocalBroker(
                folder / "kafka", known["port"], known["controller_port"], lib_dir=JAR_CACHE
            )
        local = start_on_free_ports(folder / "kafka", JAR_CACHE, START_TIMEOUT_S, PORT_ATTEMPTS)
        record.write_text(
            json.dumps({"port": local.port, "controller_port": local.controller_port})
        )
        return local


@pytest.fixture(scope="session")
def kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaBroker]:
    """One real Kafka broker for the whole session (every xdist worker's), stopped at its end."""
    shared = os.environ.get(SHARED_BROKER_DIR)
    try:
        local = (
            _shared_broker(Path(shared))
            if shared
            else start_on_free_ports(
                tmp_path_factory.mktemp("kafka"), JAR_CACHE, START_TIMEOUT_S, PORT_ATTEMPTS
            )
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
        if not shared:  # the controller stops a shared one, after every worker is done
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


def _is_xdist_controller(config: pytest.Config) -> bool:
    return (
        not hasattr(config, "workerinput")
        and config.pluginmanager.hasplugin("xdist")
        and bool(getattr(config.option, "numprocesses", None))
    )


def pytest_configure(config: pytest.Config) -> None:
    if _is_xdist_controller(config):
        # The workers inherit the environment: they share one broker in this folder.
        os.environ[SHARED_BROKER_DIR] = tempfile.mkdtemp(prefix="sieve-test-broker-")
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


def pytest_unconfigure(config: pytest.Config) -> None:
    shared = os.environ.get(SHARED_BROKER_DIR)
    if not shared or not _is_xdist_controller(config):
        return
    record = Path(shared) / "broker.json"
    if record.exists():
        known = json.loads(record.read_text())
        LocalBroker(
            Path(shared) / "kafka", known["port"], known["controller_port"], lib_dir=JAR_CACHE
        ).stop()
    shutil.rmtree(shared, ignore_errors=True)


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
    shared = os.environ.get(SHARED_BROKER_DIR)
    if shared and (Path(shared) / "broker.json").exists():
        port = json.loads((Path(shared) / "broker.json").read_text())["port"]
        terminalreporter.write_line(
            f"Kafka broker {broker_version(JAR_CACHE)} at 127.0.0.1:{port}, shared by the workers"
        )
