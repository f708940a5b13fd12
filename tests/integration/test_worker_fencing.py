"""Fencing: a worker that lost its partitions can never get a range counted.

Two `sieve worker` processes share four partitions of a broker of the test's own. First
the broker is paused (SIGSTOP) for longer than the session timeout and the clients' request
timeout, so every session expires and the group rebalances while each worker still holds
ranges it cut before the pause (issue 14: such a worker wrote its markers anyway, after the
new owner's, and 27 facts were doubled). Then one worker is paused while the other goes
on: it wakes up as a zombie with a range in hand, which the group must refuse. Afterwards,
from the outputs: live markers tile every partition from offset 0, fact rows equal
distinct event keys equal the truth, identifiable (event id, class) pairs are unique, and
the counts equal the generator's.
"""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas.commits import read_markers, resolve_markers
from streams.generate.commands import generate_to_topic
from streams.storage import open_data_root
from streams.topics import TopicSpec, create_topics
from tests.fixtures.pipeline_truth import traffic_config
from tests.fixtures.worker_harness import (
    WorkerProcess,
    WorkerSetup,
    assert_exactly_once,
    keep_running_for,
    own_broker,
    wait_until,
)

SESSION_TIMEOUT_S = 6  # the harness's SIEVE_SESSION_TIMEOUT_SECONDS (the broker's minimum)
# aiokafka's request timeout is 40 s: a pause shorter than that lets the hung heartbeats
# through on resume, before the broker expires anyone.
BROKER_PAUSE_S = 45
CHUNK = 20_000
# A chunk over about 10 s, while a worker is frozen and the other takes its partitions over.
TRICKLE_PER_S = 2_000


def _later(days: int) -> datetime:
    return datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=days)


def test_two_workers_through_a_broker_pause_and_a_stalled_worker(tmp_path: Path) -> None:
    with own_broker(tmp_path / "broker") as broker:
        suffix = uuid.uuid4().hex[:8]
        raw, dead = f"test.fence.raw.{suffix}", f"test.fence.dead.{suffix}"
        create_topics(broker.bootstrap_servers, [TopicSpec(raw, 4, {}), TopicSpec(dead, 4, {})])
        setup = WorkerSetup(broker.bootstrap_servers, raw, dead, tmp_path, f"g-{suffix}")
        # Small fetches and ranges: ranges are cut and in flight all the time, so each
        # fault catches the workers between cutting a range and committing it.
        setup.extra_env.update(SIEVE_BATCH_MAX_RECORDS="500", SIEVE_ROLL_MAX_RECORDS="2000")
        by_kind: Counter[str] = Counter()
        produced = 0

        def produce(seed: int, days_later: int, rate: float = 0.0) -> None:
            nonlocal produced
            config = traffic_config(CHUNK, seed=seed, end=_later(days_later))
            report = generate_to_topic(config, broker.bootstrap_servers, raw, rate=rate)
            by_kind.update(report.truth.by_kind)
            produced += CHUNK

        produce(41, 0)
        produce(42, 3)
        first, second = workers = [WorkerProcess(setup, n).start() for n in ("first", "second")]
        try:
            wait_until(
                lambda: setup.committed_raw() >= CHUNK // 2, 180, "under way", workers=workers
            )
            broker.pause()
            keep_running_for(BROKER_PAUSE_S, workers)
            broker.resume()
            produce(43, 6)
            before = setup.committed_raw()
            wait_until(
                lambda: setup.committed_raw() > before,
                180,
                "progress after the pause",
                workers=workers,
            )
            # The zombie: the first worker frozen while it holds a range. The input trickles
            # in meanwhile, as in a live stream, so the workers are never caught up (a
            # caught-up worker commits its range at once and holds nothing). Whether it had
            # one in hand when frozen is still timing, so the fault is repeated (at most
            # three times) until a range was refused or superseded; outputs are checked
            # after all.
            for cycle in range(3):
                before = setup.committed_raw()
                with ThreadPoolExecutor(max_workers=1) as feeder:
                    fed = feeder.submit(produce, 44 + cycle, 9 + 3 * cycle, TRICKLE_PER_S)
                    wait_until(
                        lambda before=before: setup.committed_raw() > before,
                        180,
                        "the new input under way",
                        workers=workers,
                    )
                    first.pause()
                    keep_running_for(2 * SESSION_TIMEOUT_S, [second])
                    first.resume()
                    fed.result()
                wait_until(
                    lambda: setup.committed_raw() >= produced,
                    300,
                    f"{produced} records committed",
                    workers=workers,
                )
                if _faults_seen(setup, raw, workers) > 0:
                    break
        finally:
            for worker in workers:
                if worker.alive():
                    worker.resume()  # a stopped process cannot handle SIGTERM
                worker.stop()
        assert [w.process.returncode for w in workers if w.process] == [0, 0], [
            w.log_tail() for w in workers
        ]
        assert_exactly_once(setup, by_kind, produced)
        # The faults did what they are for: a worker held a range the group had given away.
        assert _faults_seen(setup, raw, workers) > 0


def _faults_seen(setup: WorkerSetup, raw: str, workers: list[WorkerProcess]) -> int:
    """Ranges a worker cut and the group refused: superseded markers, abandoned ranges."""
    opened = open_data_root(str(setup.data_root), create=True)
    filesystem, root = opened.fs, opened.path
    live, superseded = resolve_markers(read_markers(filesystem, root, raw))
    abandoned = sum(w.log_path.read_text().count("belongs to another worker") for w in workers)
    print(
        f"live ranges {len(live)} in generations {sorted({m.generation for m in live})},"
        f" superseded {len(superseded)}, ranges abandoned after a refused commit {abandoned}"
    )
    return abandoned + len(superseded)
