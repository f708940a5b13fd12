"""Generation into Kafka: the bulk topic sink against the SDK, in the same run; and what
generating costs in CPU, the traffic model's and the sink's.

``sieve generate`` and ``sieve demo`` send through :class:`streams.generate.topic_sink.TopicSink`
(aiokafka batches in a child process). The baseline is the project's SDK,
:class:`streams.producer.EventProducer` (kafka-python, one ``send`` per record, the same
acks=all and idempotence). Both send the same pre-generated records (the traffic model's
own time is left out) to fresh topics of one broker; each is timed from the first send to
the last acknowledgement, and the median of ``--repeat`` runs is compared.

In the demo, generation shares the machine's two cores with the worker, so what it costs
is CPU time rather than wall time: the bench also reports the CPU microseconds per record
of the traffic model alone, and of the whole path (model and sink in this process, the
sink's producer in its child), medians of ``--repeat`` runs. CPU time is also what stays
comparable on a loaded machine: run the bench on two checkouts in one session to compare
them.

    python -m bench.generate_throughput --records 200000 --repeat 3

A small run: ``--records 20000 --repeat 1`` (a few seconds plus the broker's start).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from streams.broker.control import start_on_free_ports
from streams.generate import TrafficConfig, load_user_agents
from streams.generate.commands import generate_to_topic
from streams.generate.model import TrafficModel
from streams.generate.topic_sink import TopicSink
from streams.producer import EventProducer
from streams.topics import create_topics, raw_topic_spec

JAR_CACHE = Path(__file__).resolve().parents[1] / ".sieve" / "broker" / "lib"
START = datetime(2026, 10, 1, tzinfo=UTC)

Records = list[tuple[bytes | None, bytes]]


def _config(count: int, seed: int) -> TrafficConfig:
    # The demo's shape: a month, 8 accounts.
    return TrafficConfig(
        count=count,
        seed=seed,
        start=START,
        end=START + timedelta(days=30),
        user_agents=load_user_agents(None),
        accounts=8,
    )


def _records(count: int, seed: int) -> Records:
    return [(record.key, record.value) for record in TrafficModel(_config(count, seed))]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def model_cpu_us(count: int, seed: int) -> float:
    """CPU microseconds per record of the traffic model alone (records made, then dropped)."""
    started = time.process_time()
    for _ in TrafficModel(_config(count, seed)):
        pass
    return (time.process_time() - started) / count * 1e6


def generation_cpu_us(
    bootstrap: str, count: int, seed: int, partitions: int
) -> tuple[float, float]:
    """CPU microseconds per record of ``generate_to_topic``: (this process, the sink's child)."""
    topic = _topic(bootstrap, partitions)
    started, children = time.process_time(), _children_cpu_s()
    generate_to_topic(_config(count, seed), bootstrap, topic)
    here = time.process_time() - started
    child = _children_cpu_s() - children  # the child has exited: close() waited for it
    return here / count * 1e6, child / count * 1e6


def _topic(bootstrap: str, partitions: int) -> str:
    name = f"bench-generate-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [raw_topic_spec(name, partitions, 24)])
    return name


def run_sink(bootstrap: str, records: Records, partitions: int) -> float:
    topic = _topic(bootstrap, partitions)
    sink = TopicSink(bootstrap, topic, "bench-generate")
    started = time.perf_counter()
    for key, value in records:
        sink.send(key, value)
    sink.close()
    return len(records) / (time.perf_counter() - started)


def run_sdk(bootstrap: str, records: Records, partitions: int) -> float:
    topic = _topic(bootstrap, partitions)
    with EventProducer(bootstrap, topic, client_id="bench-generate") as producer:
        started = time.perf_counter()
        for key, value in records:
            producer.send_raw(key, value)
        producer.flush()
        return len(records) / (time.perf_counter() - started)


def _median(run: Callable[[], float], repeat: int) -> float:
    return statistics.median(run() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bootstrap", help="Use this broker instead of starting one.")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        broker = None
        bootstrap = options.bootstrap
        if bootstrap is None:
            broker = start_on_free_ports(Path(folder), JAR_CACHE, 120.0)
            bootstrap = broker.bootstrap_servers
        try:
            # Generation first, while no pre-generated list is alive (as in the demo).
            model = statistics.median(
                model_cpu_us(options.records, options.seed) for _ in range(options.repeat)
            )
            costs = [
                generation_cpu_us(bootstrap, options.records, options.seed, options.partitions)
                for _ in range(options.repeat)
            ]
            records = _records(options.records, options.seed)
            sdk = _median(lambda: run_sdk(bootstrap, records, options.partitions), options.repeat)
            sink = _median(lambda: run_sink(bootstrap, records, options.partitions), options.repeat)
        finally:
            if broker is not None:
                broker.stop()
    print(f"{len(records):,} records, {options.partitions} partitions, median of {options.repeat}")
    print(f"SDK (kafka-python, per record): {sdk:12,.0f} records/s")
    print(f"topic sink (aiokafka batches):  {sink:12,.0f} records/s")
    print(f"ratio sink / SDK: {sink / sdk:.1f}x")
    here = statistics.median(c[0] for c in costs)
    child = statistics.median(c[1] for c in costs)
    print(f"traffic model alone:            {model:12.2f} CPU us/record")
    print(f"generate_to_topic, this process:{here:12.2f} CPU us/record")
    print(f"generate_to_topic, sink child:  {child:12.2f} CPU us/record")
    print(f"generation in all: {1e6 / (here + child):,.0f} records per CPU second")


if __name__ == "__main__":
    main()
