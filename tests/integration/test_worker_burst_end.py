"""A burst that ended is committed at once, its tail however small, not after the roll
interval: a real worker on the session broker, with a roll interval no test waits for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from schemas.commits import iter_markers
from streams.storage import open_data_root
from tests.fixtures.kafka import KafkaBroker
from tests.fixtures.worker_harness import (
    WorkerProcess,
    assert_exactly_once,
    drain_then_stop,
    prepared,
)

# Far beyond the drain timeout: a range committed within it was cut because the burst
# ended, never by its age.
ROLL_INTERVAL_S = 3_600
DRAIN_TIMEOUT_S = 120
ROLL_MAX_RECORDS = 5_000


def test_the_small_tail_of_a_burst_is_committed_once_the_worker_is_caught_up(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    # Fetches of up to 10,000 records, ranges cut from 5,000 rows: whatever the fetches'
    # sizes, the records after the last such cut are a tail of under 5,000 rows (under a
    # fetch). The worker used to cut a caught-up range only from a whole fetch's worth of
    # records, so such a tail waited for the roll interval.
    count = 20_300
    setup, truth = prepared(kafka, tmp_path, count, partitions=1, seed=23)
    setup.extra_env.update(
        SIEVE_BATCH_MAX_RECORDS="10000",
        SIEVE_ROLL_MAX_RECORDS=str(ROLL_MAX_RECORDS),
        SIEVE_ROLL_INTERVAL_SECONDS=str(ROLL_INTERVAL_S),
    )
    worker = WorkerProcess(setup, "worker").start()
    drain_then_stop(setup, worker, count, DRAIN_TIMEOUT_S)
    assert worker.process is not None and worker.process.returncode == 0, worker.exit_report()
    assert_exactly_once(setup, Counter(truth.by_kind), count)
    opened = open_data_root(str(setup.data_root))
    ranges = [
        (m.first_offset, m.last_offset, m.counts.accepted)
        for m in iter_markers(opened.fs, opened.path, setup.raw_topic)
    ]
    # The last range is the tail: smaller than any range cut for its size.
    assert len(ranges) >= 2, ranges
    assert ranges[-1][2] < ROLL_MAX_RECORDS, ranges
