"""Custom events in the worker's split: the facts hold only what the policy declares for
the facts (name, dimensions, metrics), the identifiable record only the declared
identifiable properties with the declared class, and nothing undeclared reaches either, even
from a producer that wrote to Kafka without the collector."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.commits import RangeCounts
from schemas.events import Custom, Event, PageView
from streams.privacy.keyring import Keyring
from streams.privacy.retention import parse_policy, policy_text
from streams.privacy.split import Enrichment, SplitResult, split

DECLARED = """
[custom_events."Video Played"]
retention_class = "traffic"
properties = { genre = "dimension", seconds = "metric", email = "identifiable", title = "dropped" }
"""
POLICY = parse_policy(policy_text(None)[0] + DECLARED)
KEYRING = Keyring.generate()
WHEN = datetime(2026, 5, 4, 12, 30, tzinfo=UTC)


def custom(name: str, properties: dict[str, object], index: int = 0) -> Custom:
    return Custom(
        schema_version=1,
        event_id=f"e-{index}",
        occurred_at=WHEN,
        account_id="acct-1",
        user_id="u-1",
        name=name,
        properties=properties,
    )


def split_of(events: list[Event]) -> SplitResult:
    size = len(events)
    return split(
        events,
        keep_identifiable=[True] * size,
        received_at_ms=[int(WHEN.timestamp() * 1000)] * size,
        partition=0,
        offsets=list(range(size)),
        enrichment=Enrichment(
            country=["DE"] * size,
            device_class=["desktop"] * size,
            browser_family=["Firefox"] * size,
            os_family=["Linux"] * size,
            is_bot=[False] * size,
        ),
        policy=POLICY,
        keyring=KEYRING,
    )


def test_declared_properties_go_where_the_policy_says() -> None:
    page = PageView(schema_version=1, event_id="p", occurred_at=WHEN, account_id="acct-1", path="/")
    played = custom(
        "Video Played",
        {"genre": "drama", "seconds": 42, "email": "a@b.example", "title": "t", "extra": 1},
    )
    result = split_of([played, custom("Undeclared", {"genre": "x"}, 1), page])
    facts = (
        result.tables["facts"].select(["type", "event_name", "dimensions", "metrics"]).to_pylist()
    )
    assert facts == [
        {
            "type": "custom",
            "event_name": "Video Played",
            "dimensions": [("genre", "drama")],
            "metrics": [("seconds", 42.0)],
        },
        {"type": "custom", "event_name": None, "dimensions": [], "metrics": []},
        {"type": "page_view", "event_name": None, "dimensions": None, "metrics": None},
    ]
    # title (dropped), extra (undeclared), and the undeclared event's genre.
    assert result.properties_dropped == 3
    records = {
        (row["source_offset"], row["retention_class"]): msgspec.json.decode(row["properties"])
        for row in result.tables["identifiable"].to_pylist()
    }
    assert records[(0, "traffic")] == {
        "name": "Video Played",
        "properties": {"email": "a@b.example"},
    }
    assert records[(1, "activity")] == {"name": "Undeclared", "properties": {}}


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="none", use_dictionary=False)
    return sink.getvalue()


# "zq": no column name or metadata of the outputs holds it, so a hit is the property itself.
_names = st.from_regex(r"zq[a-z0-9_]{4,20}", fullmatch=True)


@settings(max_examples=50, deadline=None)
@given(name=_names, value=st.from_regex(r"ZQ[A-Za-z0-9]{10,40}", fullmatch=True))
def test_an_undeclared_property_reaches_no_output(name: str, value: str) -> None:
    events: list[Event] = [
        custom("Video Played", {"genre": "drama", name: value}),
        custom("Video Played", {"seconds": 1, name: 7}, 1),
        custom("Undeclared", {name: value, "genre": value}, 2),
    ]
    result = split_of(events)
    written = _parquet_bytes(result.tables["facts"]) + _parquet_bytes(result.tables["identifiable"])
    assert name.encode() not in written
    assert value.encode() not in written
    assert b"drama" in written  # what is declared is there to be found
    assert result.properties_dropped == 4


def test_a_range_without_dropped_properties_writes_the_marker_counts_it_always_wrote() -> None:
    plain = {
        "raw": 3,
        "accepted": 3,
        "duplicates": 0,
        "dead_lettered": {},
        "outputs": {"identifiable": {"rows": 0}, "facts": {"rows": 3}},
        "bytes_written": 10,
    }
    typed = msgspec.convert(plain, RangeCounts)
    assert msgspec.json.decode(msgspec.json.encode(typed)) == plain
    dropped = msgspec.structs.replace(typed, properties_dropped=2)
    assert msgspec.json.decode(msgspec.json.encode(dropped), type=RangeCounts) == dropped
