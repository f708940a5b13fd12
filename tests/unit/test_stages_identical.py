"""The stages write what the worker wrote before them, byte for byte, on the same records.

``bench.legacy_pipeline`` is the batch decision as it was before the stages (decoding
record by record, per-event consent replay and enrichment, columns built inside the split);
everything else of the pipeline is shared. Both run here on the same generated traffic
(duplicates, late and malformed records, consent and lifecycle changes, DNT and GPC), in
several batch sizes, with and without a record that makes a stage raise, over two ranges
so that state carries across: dead letters, counts, both tables, consent changes, dedup
logs and watermarks must be equal. The one column the old path never had,
``referrer_class``, is compared apart (null there).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import msgspec
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.legacy_pipeline import LegacyPartitionPipeline
from schemas.events import Event, encode
from streams.enrich.useragent import UserAgentInfo, UserAgentParser
from streams.privacy.keyring import Keyring
from streams.privacy.retention import parse_policy, policy_text
from streams.worker.deadletter import DeadLetter
from streams.worker.pipeline import PartitionPipeline, PendingRange, PipelineContext, RawRecord
from streams.worker.state.folder import StateFolder
from tests.fixtures.consent_events import batch_events
from tests.fixtures.pipeline_context import default_context
from tests.fixtures.pipeline_truth import TRAFFIC_ARRIVAL_MS, traffic_config

POISON_UA = "PoisonAgent/6.6"


class _RaisingParser:
    """A user-agent parser that raises on one user agent (a stage bug on one record)."""

    def __init__(self) -> None:
        self._real = UserAgentParser()

    def parse_many(self, user_agents: Sequence[str | None]) -> list[UserAgentInfo]:
        if POISON_UA in user_agents:
            raise OverflowError("cannot take it")
        return self._real.parse_many(user_agents)


_ENVELOPE = {"schema_version", "occurred_at", "account_id", "user_id", "session_id", "ip"}
_DECLARED = """
[custom_events."Video Played"]
retention_class = "traffic"
properties = { genre = "dimension", seconds = "metric", email = "identifiable" }
"""


@pytest.fixture(scope="module")
def context() -> PipelineContext:
    # The worker's own context, with custom events declared in its policy.
    return replace(
        default_context(Keyring.generate()),
        policy=parse_policy(policy_text(None)[0] + _DECLARED),
    )


@pytest.fixture(scope="module")
def values() -> list[bytes]:
    from streams.generate.model import TrafficModel

    config = traffic_config(
        3_000, seed=5, accounts=12, duplicate_share=0.05, late_share=0.05, malformed_share=0.03
    )
    generated = [record.value for record in TrafficModel(config)]
    # An opt-out of a whole account early on: the account's later events, in this range and
    # the next, are decided against it (the in-order path), the other batches in bulk.
    first = json.loads(next(v for v in generated if v.startswith(b'{"') and v.endswith(b"}")))
    opt_out = {
        "schema_version": 1,
        "type": "consent",
        "event_id": "opt-out-account",
        "occurred_at": first["occurred_at"],
        "account_id": first["account_id"],
        "choice": "opt_out",
    }
    poison = first | {"event_id": "poison", "user_agent": POISON_UA}
    # Custom events, declared and not, with properties the policy drops: a direct producer's.
    envelope = {k: v for k, v in first.items() if k in _ENVELOPE}
    customs = [
        envelope
        | {
            "type": "custom",
            "event_id": f"custom-{i}",
            "name": "Video Played" if i % 3 else "Undeclared",
            "properties": {"genre": "drama", "seconds": i, "email": "a@b.example", "x": 1},
        }
        for i in range(30)
    ]
    return [
        generated[0],
        json.dumps(opt_out).encode(),
        *[json.dumps(event).encode() for event in customs[:15]],
        *generated[1:],
        *[json.dumps(event).encode() for event in customs[15:]],
        json.dumps(poison).encode(),
    ]


def _run(
    pipeline: PartitionPipeline, values: list[bytes], batch: int
) -> tuple[list[DeadLetter], list[PendingRange]]:
    records = [RawRecord(i, TRAFFIC_ARRIVAL_MS + i, v) for i, v in enumerate(values)]
    letters: list[DeadLetter] = []
    ranges: list[PendingRange] = []
    middle = len(records) // 2
    for part in (records[:middle], records[middle:]):
        for start in range(0, len(part), batch):
            letters += pipeline.process(part[start : start + batch])
        pending = pipeline.take_range()
        assert pending is not None
        ranges.append(pending)
    return letters, ranges


@pytest.mark.parametrize("batch", [10_000, 257, 31])
@pytest.mark.parametrize("poisoned", [False, True])
def test_stages_write_what_the_previous_pipeline_wrote(
    context: PipelineContext, values: list[bytes], batch: int, poisoned: bool
) -> None:
    if poisoned:
        context = replace(context, user_agents=_RaisingParser())  # type: ignore[arg-type]
    else:
        values = values[:-1]
    old = LegacyPartitionPipeline("raw", 0, replace(context, state=StateFolder()))
    new = PartitionPipeline("raw", 0, replace(context, state=StateFolder()))

    old_letters, old_ranges = _run(old, values, batch)
    new_letters, new_ranges = _run(new, values, batch)

    assert new_letters == old_letters
    assert any(letter.headers for letter in old_letters)  # malformed records were there
    for was, now in zip(old_ranges, new_ranges, strict=True):
        assert (now.first_offset, now.last_offset) == (was.first_offset, was.last_offset)
        assert now.counts == was.counts
        assert now.watermark == was.watermark
        assert now.consent_changes == was.consent_changes
        assert now.tables["identifiable"].equals(was.tables["identifiable"], check_metadata=True)
        assert (
            now.tables["facts"]
            .drop_columns(["referrer_class"])
            .equals(was.tables["facts"].drop_columns(["referrer_class"]), check_metadata=True)
        )
        assert was.tables["facts"]["referrer_class"].null_count == was.tables["facts"].num_rows
        assert now.dedup_log is not None and was.dedup_log is not None
        assert now.dedup_log.event_keys == was.dedup_log.event_keys
        assert np.array_equal(now.dedup_log.arrivals, was.dedup_log.arrivals)
        assert now.dedup_log.arrival_max == was.dedup_log.arrival_max
    # The traffic exercised what it is meant to: duplicates, opted-out identifiable records.
    total = new_ranges[0].counts
    assert total.duplicates > 0 and total.dead_lettered
    assert new_ranges[0].consent_changes
    assert all(r.counts.properties_dropped for r in new_ranges)  # custom events were there
    facts = pa.concat_tables([r.tables["facts"] for r in new_ranges])
    assert facts.num_rows == sum(r.counts.accepted for r in new_ranges)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(batch_events(), min_size=1, max_size=3), dnt=st.booleans(), gpc=st.booleans()
)
def test_consent_in_columns_decides_what_the_replay_decides(
    context: PipelineContext, batches: list[list[Event]], dnt: bool, gpc: bool
) -> None:
    # Consent and lifecycle changes of people and whole accounts, in any order, across
    # batches (the later ones start from the state the earlier ones recorded).
    context = replace(context, honour_dnt=dnt, honour_gpc=gpc)
    old = LegacyPartitionPipeline("raw", 0, replace(context, state=StateFolder()))
    new = PartitionPipeline("raw", 0, replace(context, state=StateFolder()))
    offset = 0
    for number, events in enumerate(batches):
        records = []
        for event in events:
            document = msgspec.json.decode(encode(event))
            document["event_id"] = f"b{number}-{document['event_id']}"
            records.append(RawRecord(offset, -1, msgspec.json.encode(document)))
            offset += 1
        assert new.process(records) == old.process(records)
    was, now = old.take_range(), new.take_range()
    if was is None or now is None:
        assert was is None and now is None
        return
    assert now.consent_changes == was.consent_changes
    assert now.counts == was.counts
    assert now.tables["identifiable"].equals(was.tables["identifiable"])
