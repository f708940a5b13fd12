"""A worker whose faust stop hangs still exits, cleanly, once its own work has stopped.

Seen in CI: a worker stopped right after it was resumed from a stall logged its raw-topic
service's stop, then faust's own consumer thread "Stopping..." and nothing more, until the
test SIGKILLed it 60 s later (faust caught in a rebalance of its own group). The test runs
the real worker in a process whose faust consumer thread never finishes stopping (patched
in that process only, before the command starts), then stops it: the watchdog
(streams.worker.stop_watchdog) must end it with exit 0, every range committed.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from streams.generate.commands import generate_to_topic
from streams.topics import TopicSpec, create_topics
from streams.worker.stop_watchdog import STOP_GRACE_S
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.pipeline_truth import traffic_config
from tests.fixtures.worker_harness import WorkerProcess, WorkerSetup, wait_until

# faust's consumer thread hangs as it stops, as it did in CI; the rest is `sieve worker`.
HANGING_FAUST_WORKER = """
import asyncio, logging, sys
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

async def stop_forever(self):
    logging.getLogger("hang").warning("faust consumer thread: stop hangs (test)")
    await asyncio.Event().wait()

AIOKafkaConsumerThread.stop = stop_forever
from streams.cli import cli
cli(["worker", "--loglevel", "info"])
"""
EVENTS = 2_000


def test_a_worker_whose_faust_stop_hangs_exits_cleanly_once_its_work_is_stopped(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    setup = WorkerSetup(
        kafka.bootstrap_servers,
        f"test.hang.raw.{suffix}",
        f"test.hang.dead.{suffix}",
        tmp_path,
        f"g-{suffix}",
    )
    create_topics(kafka.bootstrap_servers, [TopicSpec(setup.raw_topic, 2, {})])
    generate_to_topic(traffic_config(EVENTS, seed=9), kafka.bootstrap_servers, setup.raw_topic)
    worker = WorkerProcess(
        setup, "hanging", command=[sys.executable, "-c", HANGING_FAUST_WORKER]
    ).start()
    try:
        wait_until(
            lambda: setup.committed_raw() >= EVENTS, 120, "every event committed", workers=[worker]
        )
    finally:
        worker.stop(timeout=STOP_GRACE_S + 30)

    log = worker.log_path.read_text()
    assert "stop hangs (test)" in log  # the fault was injected
    assert worker.process is not None and worker.process.returncode == 0, worker.exit_report()
    assert "exiting with 0" in log
    assert setup.committed_raw() == EVENTS
