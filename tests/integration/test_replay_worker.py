"""The real access log through ``sieve replay`` and a real worker: 10,000 accepted requests.

The issue's acceptance line: "Replaying the access log through `sieve replay` and the worker
yields 10,000 accepted request events". The log is replayed with the command's core
(:func:`streams.replay.run_replay` into a topic sink), a worker subprocess drains the topic,
and the committed counters and fact rows are checked against what this test reads from the
log itself (its own timestamp regex and ``strptime``, not the replay parser).
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from streams.generate.sinks import TopicSink
from streams.replay import CLIENT_ID, run_replay
from tests.fixtures.kafka import KafkaBroker, TopicFactory
from tests.fixtures.pipeline_truth import read_identifiable
from tests.fixtures.worker_harness import WorkerProcess, WorkerSetup, wait_until

LOG: Final = Path(__file__).resolve().parent.parent / "data" / "access-log-sample.log"
LINES: Final = 10_000
# The bracketed timestamp of a combined line, e.g. [17/May/2015:10:05:03 +0000].
_STAMP: Final = re.compile(r"^\S+ \S+ \S+ \[([^\]]+)\] ")


def hours_in_log(path: Path) -> Counter[datetime]:
    """Requests per UTC hour, read from the log's timestamps (independent of the replay)."""
    hours: Counter[datetime] = Counter()
    for line in path.read_text("utf-8").splitlines():
        match = _STAMP.match(line)
        assert match is not None, line
        stamp = datetime.strptime(match.group(1), "%d/%b/%Y:%H:%M:%S %z")
        hours[stamp.astimezone(UTC).replace(minute=0, second=0)] += 1
    return hours


def agents_in_log(path: Path) -> Counter[str | None]:
    """User agents per line, by splitting on quotes: the sixth field, or for a line cut
    inside it (no closing quote) everything after its opening quote. "-" is no agent."""
    agents: Counter[str | None] = Counter()
    for line in path.read_text("utf-8").splitlines():
        fields = line.split('"')
        assert len(fields) in (6, 7), line  # 7 for a whole line, 6 for one cut in the agent
        agents[None if fields[5] == "-" else fields[5]] += 1
    return agents


def repeated_lines(path: Path) -> int:
    """How many lines repeat an earlier line byte for byte."""
    counts = Counter(path.read_bytes().splitlines())
    return sum(n - 1 for n in counts.values())


def test_the_access_log_replays_to_ten_thousand_accepted_requests(
    kafka: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    raw, dead = topic_factory(partitions=3), topic_factory(partitions=1)
    setup = WorkerSetup(kafka.bootstrap_servers, raw, dead, tmp_path, f"g-{uuid.uuid4().hex[:8]}")

    report = run_replay(LOG, TopicSink(kafka.bootstrap_servers, raw, CLIENT_ID))
    assert (report.lines, report.sent, report.unparsed) == (LINES, LINES, 0)

    worker = WorkerProcess(setup, "worker").start()
    try:
        wait_until(
            lambda: setup.committed_raw() >= LINES,
            timeout=240,
            what=f"{LINES} raw records committed",
            workers=[worker],
        )
    finally:
        worker.stop()

    totals = setup.totals()
    # The log repeats some lines byte for byte (the same client fetching the same thing in
    # the same second). They are still separate requests, and replay's event ids include the
    # line number, so the worker must not take them for duplicates of each other.
    assert repeated_lines(LOG) > 0
    assert totals["raw"] == LINES
    assert totals["accepted"] == LINES
    assert totals["duplicates"] == 0
    assert totals["dead_lettered"] == 0
    assert totals["facts"] == LINES

    facts = setup.fact_rows()
    types = facts.aggregate("type, count(*)", "type").fetchall()
    assert types == [("request", LINES)]
    ((rows, distinct_keys),) = facts.aggregate("count(*), count(DISTINCT event_key)").fetchall()
    assert rows == distinct_keys == LINES
    per_hour = Counter(
        {
            hour.astimezone(UTC): count
            for hour, count in facts.aggregate(
                "occurred_hour, count(*)", "occurred_hour"
            ).fetchall()
        }
    )
    expected = hours_in_log(LOG)
    assert len(expected) > 24  # the log spans days: the comparison is per hour, not a total
    assert per_hour == expected

    # Every request keeps its identifiable traffic record, user agent included; the line
    # cut inside its agent (8,899) is there with the rest of its line as the agent.
    identifiable = read_identifiable(setup.data_root, setup.keyring_file)
    assert identifiable.num_rows == LINES
    assert Counter(identifiable["user_agent"].to_pylist()) == agents_in_log(LOG)
    cut = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html"
    assert cut in identifiable["user_agent"].to_pylist()
