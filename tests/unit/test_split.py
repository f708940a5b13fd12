"""The identifiable / anonymized split.

Most properties use local strategies: they plant recognisable values (``user-…``,
``sess-…``, ``UA-…``, ``city-…``) so a leak into the facts is found by searching every
cell, and keep account ids apart from them. ``tests/fixtures/strategies.py`` (any valid event, edges
included) checks the record rules hold for the whole contract.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.arrow import FACTS, IDENTIFIABLE
from schemas.events import (
    EVENT_TYPES,
    AccountLifecycle,
    ConsentChange,
    Custom,
    Download,
    Event,
    Geo,
    Login,
    Logout,
    PageView,
    Payment,
    Request,
    Upload,
    type_specific_fields,
)
from streams.privacy.custom_events import parts_of
from streams.privacy.keyring import Keyring
from streams.privacy.pseudonymize import event_keys, subject_keys
from streams.privacy.retention import load_policy
from streams.privacy.split import Enrichment, SplitResult, split
from tests.fixtures.strategies import events as shared_events

POLICY = load_policy()
KEYRING = Keyring.generate()
TRAFFIC = POLICY.traffic_class
ENRICH_COUNTRIES = ["DE", "US", "ZZ", "JP", "GB", "CA"]

# --- strategies ------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Integers rendered as tokens: several times cheaper to draw than st.text, and a planted
# value is recognisable by its prefix alone.
_token = st.integers(0, 2**40).map("{:x}".format)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


_zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
)
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda p: "10.%d.%d.%d" % p[1:])  # noqa: UP031
_ipv6 = st.integers(1, 2**64).map(lambda n: f"2001:db8::{n % 65536:x}:{n // 65536 % 65536:x}")
_geo = st.builds(
    Geo,
    country=st.one_of(st.none(), st.sampled_from(["FR", "US", "CH", "BR", "NO"])),
    region=st.one_of(st.none(), _token.map("region-{}".format)),
    city=st.one_of(st.none(), _token.map("city-{}".format)),
    lat=st.one_of(st.none(), st.floats(-90, 90)),
    lon=st.one_of(st.none(), st.floats(-180, 180)),
)

_SPECIFIC: dict[type, dict[str, st.SearchStrategy[Any]]] = {
    Request: {
        "path": _token.map("/path/{}".format),
        "status": st.integers(100, 599),
        "response_bytes": st.integers(0, 1 << 40),
    },
    PageView: {"path": _token.map("/page/{}".format)},
    Login: {"method": st.sampled_from(["password", "sso", "api_key"])},
    Logout: {"session_duration_s": st.floats(0, 31 * 24 * 3600)},
    Upload: {"bytes": st.integers(0, 1 << 40), "source": st.sampled_from(["device", "cloud"])},
    Download: {"bytes": st.integers(0, 1 << 40), "content_type": st.just("image/png")},
    Payment: {
        "amount": st.sampled_from(["10.00", "0.5", "1999.99"]),
        "currency": st.sampled_from(["USD", "EUR"]),
        "provider": st.just("stripe"),
        "provider_reference": _token.map("ch_{}".format),
    },
    AccountLifecycle: {"action": st.sampled_from(["registered", "disabled", "terminated"])},
    ConsentChange: {"choice": st.sampled_from(["opt_out", "opt_in"])},
    Custom: {
        "name": st.sampled_from(["Video Played", "identify"]),
        "properties": st.dictionaries(
            st.sampled_from(["genre", "seconds"]), st.integers(0, 99) | _token, max_size=2
        ),
    },
}


_ENVELOPE: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.just(1),
    "event_id": _token.map("evt-{}".format),
    "occurred_at": st.builds(
        lambda us, zone: (_EPOCH + timedelta(microseconds=us)).astimezone(zone),
        st.integers(
            _micros(datetime(2001, 1, 1, tzinfo=UTC)), _micros(datetime(2080, 1, 1, tzinfo=UTC))
        ),
        _zones,
    ),
    "account_id": st.sampled_from(["acct-1", "acct-2", "acct-3"]),
    "user_id": st.one_of(st.none(), _token.map("user-{}".format)),
    "session_id": st.one_of(st.none(), _token.map("sess-{}".format)),
    "ip": st.one_of(st.none(), _ipv4, _ipv6),
    "user_agent": st.one_of(st.none(), _token.map("Mozilla/5.0 UA-{}".format)),
    "geo": st.one_of(st.none(), _geo),
    "dnt": st.booleans(),
    "gpc": st.booleans(),
}
# Built once: constructing strategies inside a draw costs more than the split under test.
events_of = {cls: st.builds(cls, **_ENVELOPE, **specific) for cls, specific in _SPECIFIC.items()}
any_event: st.SearchStrategy[Event] = st.one_of(*events_of.values())


@dataclass
class Batch:
    events: list[Event]
    keep: list[bool]
    received_at_ms: list[int]
    offsets: list[int]
    enrichment: Enrichment
    partition: int

    def split(self, keyring: Keyring = KEYRING) -> SplitResult:
        return split(
            self.events,
            keep_identifiable=self.keep,
            received_at_ms=self.received_at_ms,
            partition=self.partition,
            offsets=self.offsets,
            enrichment=self.enrichment,
            policy=POLICY,
            keyring=keyring,
        )


@st.composite
def batches(draw: st.DrawFn, min_size: int = 0, max_size: int = 12) -> Batch:
    size = draw(st.integers(min_size, max_size))
    events = draw(st.lists(any_event, min_size=size, max_size=size))
    # Arrival after the event (a late event up to a day): the usual case.
    delays = draw(st.lists(st.integers(0, 86_400_000), min_size=size, max_size=size))
    first_offset = draw(st.integers(0, 1 << 40))
    return Batch(
        events=events,
        keep=draw(st.lists(st.booleans(), min_size=size, max_size=size)),
        received_at_ms=[_ms(e.occurred_at) + d for e, d in zip(events, delays, strict=True)],
        offsets=list(range(first_offset, first_offset + size)),
        enrichment=Enrichment(
            country=draw(st.lists(st.sampled_from(ENRICH_COUNTRIES), min_size=size, max_size=size)),
            device_class=["desktop"] * size,
            browser_family=["Firefox"] * size,
            os_family=["Linux"] * size,
            is_bot=draw(st.lists(st.booleans(), min_size=size, max_size=size)),
        ),
        partition=draw(st.integers(0, 63)),
    )


def _ms(moment: datetime) -> int:
    """Milliseconds since the epoch, rounded up (a Kafka timestamp is not before its event)."""
    return -((_EPOCH - moment) // timedelta(milliseconds=1))


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _tag(event: Event) -> str:
    return event.__struct_config__.tag  # type: ignore[return-value]


def _expected_rows(batch: Batch) -> Counter[tuple[int, str]]:
    """(offset, class) of every identifiable record the policy and consent call for."""
    rows: Counter[tuple[int, str]] = Counter()
    for event, keep, offset in zip(batch.events, batch.keep, batch.offsets, strict=True):
        cls = POLICY.class_of(_tag(event))
        if keep or cls.keep_despite_opt_out:
            rows[(offset, cls.name)] += 1
        if keep and cls.name != TRAFFIC and (event.ip is not None or event.user_agent is not None):
            rows[(offset, TRAFFIC)] += 1
    return rows


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


# --- example helpers -------------------------------------------------------------------------

T0 = datetime(2024, 6, 1, 12, 30, tzinfo=UTC)


def _envelope(**fields: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "evt-1",
        "occurred_at": T0,
        "account_id": "acct-1",
        "user_id": "user-1",
    }
    envelope.update(fields)
    return envelope


def _view(**fields: Any) -> PageView:
    return PageView(path="/", **_envelope(**fields))


def _request(**fields: Any) -> Request:
    return Request(path="/api", **_envelope(**fields))


def _example_batch(
    events: list[Event],
    *,
    keep: list[bool] | None = None,
    received: list[datetime] | None = None,
    countries: list[str] | None = None,
) -> Batch:
    size = len(events)
    return Batch(
        events=events,
        keep=[True] * size if keep is None else keep,
        received_at_ms=[_ms(m) for m in (received or [e.occurred_at for e in events])],
        offsets=list(range(100, 100 + size)),
        enrichment=Enrichment(
            country=countries or ["DE"] * size,
            device_class=["desktop"] * size,
            browser_family=["Firefox"] * size,
            os_family=["Linux"] * size,
            is_bot=[False] * size,
        ),
        partition=3,
    )


# --- facts -----------------------------------------------------------------------------------


@given(batches())
def test_one_fact_per_event_with_the_facts_schema(batch: Batch) -> None:
    facts = batch.split().tables["facts"]
    assert facts.schema.equals(FACTS, check_metadata=True)
    assert facts.num_rows == len(batch.events)
    assert facts["type"].to_pylist() == [_tag(e) for e in batch.events]
    assert facts["account_id"].to_pylist() == [e.account_id for e in batch.events]


@given(batches(min_size=1))
@settings(max_examples=200)
def test_facts_hold_no_ip_user_agent_user_session_or_geo_values(batch: Batch) -> None:
    planted = {
        value
        for event in batch.events
        for value in (
            event.ip,
            event.user_agent,
            event.user_id,
            event.session_id,
            event.geo.city if event.geo else None,
            event.geo.region if event.geo else None,
        )
        if value is not None
    }
    # Nor may the planted prefixes alone (a truncated value is still a leak) in any text.
    prefixes = {"user-", "sess-", "UA-", "city-", "region-", "10.", "2001:db8"}
    facts = batch.split().tables["facts"]
    for column in facts.columns:
        cells = [str(value) for value in column.to_pylist()]
        searched = planted | prefixes if pa.types.is_string(column.type) else planted
        for cell in cells:
            for value in searched:
                assert value not in cell, f"{value!r} leaked into facts cell {cell!r}"


@given(batches())
def test_fact_columns_carry_the_coarse_measures(batch: Batch) -> None:
    facts = batch.split().tables["facts"]
    hours = [_utc(e.occurred_at).replace(minute=0, second=0, microsecond=0) for e in batch.events]
    assert facts["occurred_hour"].to_pylist() == hours
    expected_bytes = [
        e.bytes
        if isinstance(e, Upload | Download)
        else e.response_bytes
        if isinstance(e, Request)
        else 0
        for e in batch.events
    ]
    assert facts["bytes"].to_pylist() == expected_bytes
    assert facts["session_seconds"].to_pylist() == [
        e.session_duration_s if isinstance(e, Logout) else 0.0 for e in batch.events
    ]
    assert facts["country"].to_pylist() == batch.enrichment.country
    assert facts["is_bot"].to_pylist() == batch.enrichment.is_bot
    assert facts["event_key"].to_pylist() == event_keys([e.event_id for e in batch.events], KEYRING)
    days = [_utc(e.occurred_at).date() for e in batch.events]
    assert facts["subject_key"].to_pylist() == subject_keys(
        [e.account_id for e in batch.events], [e.user_id for e in batch.events], days, KEYRING
    )
    assert set(facts["key_id"].to_pylist()) <= {KEYRING.pseudonymization_key_id}


# Few accounts, users and days, so batches repeat people: the split hashes each distinct
# (account, user, UTC day) once. Zones shift the UTC day; 1969 is a negative day number.
_subject_events = st.builds(
    lambda account, user, moment, zone: _view(
        account_id=account, user_id=user, occurred_at=moment.astimezone(zone)
    ),
    st.sampled_from(["acct-1", "acct-2"]),
    st.sampled_from([None, "user-1", "user-2"]),
    st.sampled_from(
        [
            T0,
            T0 + timedelta(hours=12),
            T0 + timedelta(days=1),
            datetime(1969, 12, 31, 23, tzinfo=UTC),
        ]
    ),
    _zones,
)


@given(st.lists(_subject_events, max_size=30))
def test_subject_keys_of_repeated_people_are_those_of_subject_keys(events: list[Event]) -> None:
    facts = _example_batch(events).split().tables["facts"]
    assert facts["subject_key"].to_pylist() == subject_keys(
        [e.account_id for e in events],
        [e.user_id for e in events],
        [_utc(e.occurred_at).date() for e in events],
        KEYRING,
    )


def test_facts_ignore_consent() -> None:
    batch = _example_batch([_request(ip="10.0.0.1"), _view()], keep=[False, False])
    result = batch.split()
    assert result.tables["facts"].num_rows == 2
    assert result.tables["identifiable"].num_rows == 0


# --- identifiable ----------------------------------------------------------------------------


@given(batches())
def test_identifiable_records_are_exactly_those_policy_and_consent_allow(batch: Batch) -> None:
    identifiable = batch.split().tables["identifiable"]
    assert identifiable.schema.equals(IDENTIFIABLE, check_metadata=True)
    got = Counter(
        zip(
            identifiable["source_offset"].to_pylist(),
            identifiable["retention_class"].to_pylist(),
            strict=True,
        )
    )
    assert got == _expected_rows(batch)


@given(batches())
def test_ip_and_user_agent_live_only_in_traffic_records(batch: Batch) -> None:
    by_offset = dict(zip(batch.offsets, batch.events, strict=True))
    for row in _rows(batch.split().tables["identifiable"]):
        event = by_offset[row["source_offset"]]
        if row["retention_class"] != TRAFFIC:
            assert row["ip"] is None and row["user_agent"] is None
            continue
        assert (row["ip"], row["user_agent"]) == (event.ip, event.user_agent)
        if _tag(event) != "request":  # a detached traffic record: IP and UA, no content
            assert row["properties"] == "{}"
            assert [row[f"geo_{f}"] for f in ("country", "region", "city", "lat", "lon")] == [
                None
            ] * 5


@given(batches())
def test_every_record_carries_its_events_envelope(batch: Batch) -> None:
    position = {offset: i for i, offset in enumerate(batch.offsets)}
    for row in _rows(batch.split().tables["identifiable"]):
        i = position[row["source_offset"]]
        event = batch.events[i]
        assert row["event_id"] == event.event_id
        assert row["type"] == _tag(event)
        assert row["occurred_at"] == _utc(event.occurred_at)
        assert row["received_at"] == datetime.fromtimestamp(batch.received_at_ms[i] / 1000, UTC)
        assert (row["account_id"], row["user_id"], row["session_id"]) == (
            event.account_id,
            event.user_id,
            event.session_id,
        )
        assert row["source_partition"] == batch.partition
        assert row["policy_version"] == "2014-03-04"


@given(batches())
def test_own_class_records_hold_geo_and_canonical_properties(batch: Batch) -> None:
    by_offset = dict(zip(batch.offsets, batch.events, strict=True))
    for row in _rows(batch.split().tables["identifiable"]):
        event = by_offset[row["source_offset"]]
        if row["retention_class"] != POLICY.class_of(_tag(event)).name:
            continue
        # Geolocation only on activity/traffic records; longer-lived classes keep the region.
        geo = (event.geo or Geo()) if row["retention_class"] in ("activity", "traffic") else Geo()
        assert (row["geo_country"], row["geo_region"], row["geo_city"]) == (
            geo.country,
            geo.region,
            geo.city,
        )
        assert (row["geo_lat"], row["geo_lon"]) == (geo.lat, geo.lon)
        fields = type_specific_fields(_tag(event))
        expected = {name: msgspec.to_builtins(getattr(event, name)) for name in fields}
        if isinstance(event, Custom):  # its name and what the policy declares identifiable
            kept = parts_of(POLICY.custom_events, event.name, event.properties).identifiable
            expected = {"name": event.name, "properties": kept}
        assert msgspec.json.decode(row["properties"]) == expected
        assert list(msgspec.json.decode(row["properties"])) == sorted(fields)  # canonical order


@given(batches())
def test_expiry_is_the_class_period_after_the_event_or_null_when_account_bound(
    batch: Batch,
) -> None:
    by_offset = dict(zip(batch.offsets, batch.events, strict=True))
    for row in _rows(batch.split().tables["identifiable"]):
        cls = POLICY.classes[row["retention_class"]]
        event = by_offset[row["source_offset"]]
        if cls.account_bound:
            assert row["expires_at"] is None
        else:  # arrival is never earlier than the event in these batches
            assert row["expires_at"] == _utc(event.occurred_at) + timedelta(days=cls.days)
            assert row["expires_at"] == POLICY.expires_at(cls.name, event.occurred_at)


def test_expiry_counts_from_arrival_when_the_event_claims_a_later_time() -> None:
    # A client clock years ahead must not keep its IP address for years.
    future = datetime(2090, 1, 1, tzinfo=UTC)
    arrived = datetime(2024, 1, 1, tzinfo=UTC)
    batch = _example_batch([_request(ip="10.0.0.1", occurred_at=future)], received=[arrived])
    (row,) = _rows(batch.split().tables["identifiable"])
    assert row["expires_at"] == arrived + timedelta(days=30)


def test_a_record_without_kafka_timestamp_expires_from_event_time() -> None:
    batch = _example_batch([_request(ip="10.0.0.1")])
    batch.received_at_ms = [-1]
    (row,) = _rows(batch.split().tables["identifiable"])
    assert row["expires_at"] == T0 + timedelta(days=30)


@given(batches())
def test_region_follows_client_geo_country_else_the_ip_country(batch: Batch) -> None:
    position = {offset: i for i, offset in enumerate(batch.offsets)}
    for row in _rows(batch.split().tables["identifiable"]):
        i = position[row["source_offset"]]
        geo = batch.events[i].geo
        country = (
            geo.country
            if geo is not None and geo.country is not None
            else batch.enrichment.country[i]
        )
        assert row["region"] == POLICY.region_of(country)


@pytest.mark.parametrize(
    ("geo_country", "ip_country", "region"),
    [
        (None, "DE", "eu"),
        (None, "US", "us"),
        (None, "ZZ", "global"),
        ("FR", "US", "eu"),
        ("US", "DE", "us"),
        ("BR", "DE", "global"),
    ],
)
def test_region_examples(geo_country: str | None, ip_country: str, region: str) -> None:
    event = _view(geo=Geo(country=geo_country, city="Paris"))
    batch = _example_batch([event], countries=[ip_country])
    assert batch.split().tables["identifiable"]["region"].to_pylist() == [region]


# --- examples of the record table ------------------------------------------------------------


def test_activity_event_with_ip_yields_an_activity_record_and_a_traffic_record() -> None:
    batch = _example_batch(
        [_view(ip="10.1.2.3", user_agent="Mozilla/5.0 UA-x", geo=Geo(city="Oslo"))]
    )
    rows = _rows(batch.split().tables["identifiable"])
    assert [(r["retention_class"], r["ip"], r["user_agent"], r["geo_city"]) for r in rows] == [
        ("activity", None, None, "Oslo"),
        ("traffic", "10.1.2.3", "Mozilla/5.0 UA-x", None),
    ]
    assert rows[0]["expires_at"] - rows[0]["occurred_at"] == timedelta(days=90)
    assert rows[1]["expires_at"] - rows[1]["occurred_at"] == timedelta(days=30)


def test_request_yields_one_traffic_record_with_its_properties() -> None:
    batch = _example_batch([_request(ip="10.0.0.9")])
    (row,) = _rows(batch.split().tables["identifiable"])
    assert (row["retention_class"], row["ip"]) == ("traffic", "10.0.0.9")
    assert msgspec.json.decode(row["properties"])["path"] == "/api"


def test_event_without_ip_or_ua_yields_no_traffic_record() -> None:
    batch = _example_batch([_view()])
    assert batch.split().tables["identifiable"]["retention_class"].to_pylist() == ["activity"]


def test_payment_is_kept_for_billing_after_opt_out_but_not_its_ip() -> None:
    payment: Event = Payment(
        amount="9.99",
        currency="EUR",
        provider="stripe",
        provider_reference="ch_1",
        **_envelope(ip="10.0.0.7", user_agent="UA-pay"),
    )
    rows = _rows(_example_batch([payment], keep=[False]).split().tables["identifiable"])
    assert [(r["retention_class"], r["ip"], r["expires_at"] is not None) for r in rows] == [
        ("billing", None, True)
    ]


@pytest.mark.parametrize(
    "event",
    [
        ConsentChange(choice="opt_out", **_envelope(ip="10.0.0.5", user_agent="UA-c")),
        AccountLifecycle(action="terminated", **_envelope(user_id=None, ip="10.0.0.5")),
        AccountLifecycle(action="disabled", **_envelope(user_agent="UA-c")),
    ],
)
def test_consent_and_lifecycle_records_are_proof_kept_without_ip(event: Event) -> None:
    rows = _rows(_example_batch([event], keep=[False]).split().tables["identifiable"])
    assert [(r["retention_class"], r["ip"], r["user_agent"], r["expires_at"]) for r in rows] == [
        ("account", None, None, None)
    ]


def test_kept_consent_event_also_yields_its_traffic_record() -> None:
    event = ConsentChange(choice="opt_in", **_envelope(ip="10.0.0.5"))
    rows = _rows(_example_batch([event], keep=[True]).split().tables["identifiable"])
    assert [r["retention_class"] for r in rows] == ["account", "traffic"]


def test_rows_come_in_event_order_then_detached_traffic_records() -> None:
    events: list[Event] = [_view(ip="10.0.0.1"), _request(ip="10.0.0.2"), _view(ip="10.0.0.3")]
    rows = _rows(_example_batch(events).split().tables["identifiable"])
    assert [(r["source_offset"], r["retention_class"]) for r in rows] == [
        (100, "activity"),
        (101, "traffic"),
        (102, "activity"),
        (100, "traffic"),
        (102, "traffic"),
    ]


# --- determinism and contract ----------------------------------------------------------------


@st.composite
def contract_batches(draw: st.DrawFn) -> Batch:
    """Any valid events (the shared strategies: Unicode, IPv6, far dates and offsets)."""
    events = draw(st.lists(shared_events(), max_size=8))
    size = len(events)
    return Batch(
        events=events,
        keep=draw(st.lists(st.booleans(), min_size=size, max_size=size)),
        received_at_ms=[_ms(event.occurred_at) for event in events],
        offsets=list(range(size)),
        enrichment=Enrichment(
            country=["ZZ"] * size,
            device_class=["other"] * size,
            browser_family=["Other"] * size,
            os_family=["Other"] * size,
            is_bot=[False] * size,
        ),
        partition=0,
    )


@given(contract_batches())
def test_every_valid_event_splits_by_the_rules(batch: Batch) -> None:
    result = batch.split()
    assert result.tables["facts"].num_rows == len(batch.events)
    rows = Counter(
        zip(
            result.tables["identifiable"]["source_offset"].to_pylist(),
            result.tables["identifiable"]["retention_class"].to_pylist(),
            strict=True,
        )
    )
    assert rows == _expected_rows(batch)
    again = batch.split()
    assert all(result.tables[name].equals(again.tables[name]) for name in ("identifiable", "facts"))


@given(contract_batches())
def test_properties_are_the_sorted_key_json_of_the_type_specific_fields(batch: Batch) -> None:
    # The split encodes a struct per type, declared in sorted field order, not a dict: the
    # text must stay exactly the sorted-key encoding (escapes, number formats, nulls).
    canonical = msgspec.json.Encoder(order="sorted")
    by_offset = dict(zip(batch.offsets, batch.events, strict=True))
    for row in _rows(batch.split().tables["identifiable"]):
        event = by_offset[row["source_offset"]]
        if row["retention_class"] != POLICY.class_of(_tag(event)).name:
            continue
        fields = type_specific_fields(_tag(event))
        expected = canonical.encode({name: getattr(event, name) for name in fields})
        if isinstance(event, Custom):  # its name and what the policy declares identifiable
            kept = parts_of(POLICY.custom_events, event.name, event.properties).identifiable
            expected = canonical.encode({"name": event.name, "properties": kept})
        assert row["properties"] == expected.decode()


@given(batches())
def test_same_input_gives_equal_tables(batch: Batch) -> None:
    first = batch.split()
    # A keyring loaded again from the same file is a different object with the same keys.
    second = batch.split(Keyring.from_json(KEYRING.to_json()))
    assert first.tables["identifiable"].equals(second.tables["identifiable"], check_metadata=True)
    assert first.tables["facts"].equals(second.tables["facts"], check_metadata=True)


def test_another_key_changes_every_pseudonym() -> None:
    batch = _example_batch([_view(user_id="user-1")])
    mine, theirs = batch.split().tables["facts"], batch.split(Keyring.generate()).tables["facts"]
    assert mine["event_key"].to_pylist() != theirs["event_key"].to_pylist()
    assert mine["subject_key"].to_pylist() != theirs["subject_key"].to_pylist()


def test_empty_batch_gives_empty_tables_with_the_schemas() -> None:
    result = _example_batch([]).split()
    assert result.tables["identifiable"].num_rows == result.tables["facts"].num_rows == 0
    assert result.tables["identifiable"].schema.equals(IDENTIFIABLE)
    assert result.tables["facts"].schema.equals(FACTS)


def test_misaligned_inputs_are_rejected_naming_them() -> None:
    batch = _example_batch([_view(), _view()])
    batch.offsets = batch.offsets[:1]
    with pytest.raises(ValueError, match="offsets"):
        batch.split()
    batch = _example_batch([_view()])
    batch.enrichment = Enrichment(["DE"], [], ["x"], ["y"], [False])
    with pytest.raises(ValueError, match=r"enrichment\.device_class"):
        batch.split()


def test_every_event_type_is_covered_by_the_strategies() -> None:
    assert set(_SPECIFIC) == set(EVENT_TYPES.values())
