"""The identifiable / anonymized split of one batch: a pure function returning both tables.

- **facts**: one row per event, whether or not consent allows identifiable records (the
  anonymized fact is always counted). Only the account, coarse time (hour), coarse
  enrichment (country, device class, browser and OS family) and keyed pseudonyms: never an
  IP address, user agent, user id, session id or geolocation.
- **identifiable**: the records the policy and consent allow, each stamped with retention
  class, expiry, storage region and policy version. IP address and user agent always go to
  the policy's traffic class: an event of another class that carries them yields its own
  record with both nulled plus a traffic record holding them (and nothing else of the
  event's content), so they are never kept longer than the traffic period.

Which records exist (``keep_identifiable`` comes from ``consent.decide``):

=====================================  =========================  ==========================
event                                  consent allows             consent stops
=====================================  =========================  ==========================
traffic class (``request``)            1 traffic record           nothing
other class                            1 record, + 1 traffic      nothing
                                       record if it has ip or UA
other class, ``keep_despite_opt_out``  same as above              1 record (no ip, no UA)
=====================================  =========================  ==========================

Rows come in event order: first the records of each event's own class, then the detached
traffic records. Same input, equal tables (no clock, no randomness), so a replayed range
writes the same files.

Expiry is counted from the earlier of event time and arrival time (the Kafka record
timestamp; event time alone when the record has none, -1): a client clock set years ahead
must not stretch how long its IP address is kept, and both instants are in the input, so
replays agree.

Columns are built once per field with comprehensions over the batch and handed to Arrow
with explicit types; per-row Python work is kept to attribute reads (the hot path: about
10k events per call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Final

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from schemas.arrow import FACTS, IDENTIFIABLE, conform
from schemas.events import (
    EVENT_TYPES,
    Download,
    Event,
    Logout,
    Request,
    Upload,
    type_specific_fields,
)
from streams.privacy.keyring import Keyring
from streams.privacy.pseudonymize import event_keys, subject_keys
from streams.privacy.retention import RetentionClass, RetentionPolicy

_UTC_US: Final = pa.timestamp("us", tz="UTC")
_UTC_MS: Final = pa.timestamp("ms", tz="UTC")
_UTC_S: Final = pa.timestamp("s", tz="UTC")
_US_PER_DAY: Final = 86_400 * 1_000_000
_US_PER_MS: Final = 1_000
_EMPTY_PROPERTIES: Final = "{}"
# Classes whose records may carry the event's geolocation (not longer than activity's 90 days).
_GEOLOCATION_CLASSES: Final = frozenset({"traffic", "activity"})

_TAG: Final[dict[type, str]] = {cls: tag for tag, cls in EVENT_TYPES.items()}
# Sorted keys, so equal properties are equal strings whatever the field order in the input.
_PROPERTIES_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_PROPERTY_FIELDS: Final[dict[type, tuple[str, ...]]] = {
    cls: type_specific_fields(tag) for tag, cls in EVENT_TYPES.items()
}
_BYTES: Final[dict[type, Callable[[Any], int]]] = {
    Upload: attrgetter("bytes"),
    Download: attrgetter("bytes"),
    Request: attrgetter("response_bytes"),
}


@dataclass(frozen=True, slots=True)
class Enrichment:
    """Per-event coarse attributes computed by the worker (streams.enrich), aligned with events."""

    # Country of the IP address (ISO2), "ZZ" when unknown.
    country: list[str]
    device_class: list[str]
    browser_family: list[str]
    os_family: list[str]
    is_bot: list[bool]


@dataclass(frozen=True, slots=True)
class SplitResult:
    """Both outputs of one batch, conformed to their dataset schemas."""

    identifiable: pa.Table  # schemas.arrow.IDENTIFIABLE
    facts: pa.Table  # schemas.arrow.FACTS


def split(
    events: Sequence[Event],
    *,
    keep_identifiable: Sequence[bool],
    received_at_ms: Sequence[int],
    partition: int,
    offsets: Sequence[int],
    enrichment: Enrichment,
    policy: RetentionPolicy,
    keyring: Keyring,
    event_keys_of_events: Sequence[str] | None = None,
) -> SplitResult:
    """Split a batch of accepted events into identifiable records and anonymized facts.

    ``keep_identifiable[i]``: consent allows identifiable records of event i
    (``consent.decide``). ``received_at_ms`` / ``offsets``: the Kafka record timestamp and
    offset of each event in input ``partition``. ``event_keys_of_events``: the events'
    :func:`~streams.privacy.pseudonymize.event_keys`, when the caller has them already
    (the worker computes them for dedup); computed here otherwise.
    """
    _check_aligned(
        len(events),
        keep_identifiable=keep_identifiable,
        received_at_ms=received_at_ms,
        offsets=offsets,
        **({} if event_keys_of_events is None else {"event_keys": event_keys_of_events}),
        **{f"enrichment.{f.name}": getattr(enrichment, f.name) for f in fields(Enrichment)},
    )
    occurred = pa.array([event.occurred_at for event in events], _UTC_US)
    return SplitResult(
        identifiable=_identifiable(
            events,
            occurred,
            keep_identifiable,
            received_at_ms,
            partition,
            offsets,
            enrichment.country,
            policy,
        ),
        facts=_facts(events, occurred, enrichment, keyring, event_keys_of_events),
    )


def _facts(
    events: Sequence[Event],
    occurred: pa.Array,
    enrichment: Enrichment,
    keyring: Keyring,
    known_event_keys: Sequence[str] | None,
) -> pa.Table:
    account_ids = [event.account_id for event in events]
    days = occurred.cast(pa.date32()).to_pylist()  # UTC dates: the subject key's day
    subjects = subject_keys(account_ids, [event.user_id for event in events], days, keyring)
    pseudonyms = (
        known_event_keys
        if known_event_keys is not None
        else event_keys([event.event_id for event in events], keyring)
    )
    columns = {
        "event_key": pa.array(pseudonyms, pa.string()),
        "type": pa.array([_TAG[type(event)] for event in events], pa.string()),
        "occurred_hour": pc.floor_temporal(occurred, unit="hour").cast(_UTC_S),
        "account_id": pa.array(account_ids, pa.string()),
        "country": pa.array(enrichment.country, pa.string()),
        "device_class": pa.array(enrichment.device_class, pa.string()),
        "browser_family": pa.array(enrichment.browser_family, pa.string()),
        "os_family": pa.array(enrichment.os_family, pa.string()),
        "is_bot": pa.array(enrichment.is_bot, pa.bool_()),
        "bytes": pa.array([_BYTES.get(type(event), _zero)(event) for event in events], pa.int64()),
        "session_seconds": pa.array(
            [event.session_duration_s if type(event) is Logout else 0.0 for event in events],
            pa.float64(),
        ),
        "subject_key": pa.array(subjects, pa.string()),
        "key_id": pa.array([keyring.pseudonymization_key_id] * len(events), pa.string()),
    }
    return conform(pa.table(columns), FACTS)


def _identifiable(
    events: Sequence[Event],
    occurred: pa.Array,
    keep: Sequence[bool],
    received_at_ms: Sequence[int],
    partition: int,
    offsets: Sequence[int],
    enriched_country: Sequence[str],
    policy: RetentionPolicy,
) -> pa.Table:
    classes = {tag: policy.class_of(tag) for tag in EVENT_TYPES}
    traffic = policy.classes[policy.traffic_class]
    tags = [_TAG[type(event)] for event in events]
    # Own-class records: consent allows them, or the class is kept regardless.
    own = [i for i, tag in enumerate(tags) if keep[i] or classes[tag].keep_despite_opt_out]
    # Detached traffic records: consent allows them and there is an IP address or UA to hold.
    detached = [
        i
        for i, tag in enumerate(tags)
        if keep[i]
        and classes[tag].name != traffic.name
        and (events[i].ip is not None or events[i].user_agent is not None)
    ]
    rows = own + detached
    own_events = [events[i] for i in own]
    detached_events = [events[i] for i in detached]
    row_events = own_events + detached_events
    own_classes = [classes[tags[i]] for i in own]
    row_classes = own_classes + [traffic] * len(detached)
    # IP and UA stay only on records of the traffic class.
    holds_traffic = [cls.name == traffic.name for cls in own_classes] + [True] * len(detached)
    # Geolocation is activity data (policy: 90 days): records of longer-lived classes
    # (billing 7 years, content and account while the account lives) keep only the region.
    geos = [
        event.geo if cls.name in _GEOLOCATION_CLASSES else None
        for event, cls in zip(own_events, own_classes, strict=True)
    ] + [None] * len(detached)
    regions = [
        policy.region_of(
            event.geo.country
            if event.geo is not None and event.geo.country is not None
            else enriched_country[i]
        )
        for i, event in zip(rows, row_events, strict=True)
    ]
    row_index = pa.array(rows, pa.int64())
    received = pa.array(received_at_ms, pa.int64()).take(row_index)

    columns = {
        "event_id": pa.array([event.event_id for event in row_events], pa.string()),
        "type": pa.array([tags[i] for i in rows], pa.string()),
        "occurred_at": occurred.take(row_index),
        "received_at": received.cast(_UTC_MS),
        "account_id": pa.array([event.account_id for event in row_events], pa.string()),
        "user_id": pa.array([event.user_id for event in row_events], pa.string()),
        "session_id": pa.array([event.session_id for event in row_events], pa.string()),
        "ip": pa.array(
            [e.ip if t else None for e, t in zip(row_events, holds_traffic, strict=True)],
            pa.string(),
        ),
        "user_agent": pa.array(
            [e.user_agent if t else None for e, t in zip(row_events, holds_traffic, strict=True)],
            pa.string(),
        ),
        "geo_country": pa.array([None if g is None else g.country for g in geos], pa.string()),
        "geo_region": pa.array([None if g is None else g.region for g in geos], pa.string()),
        "geo_city": pa.array([None if g is None else g.city for g in geos], pa.string()),
        "geo_lat": pa.array([None if g is None else g.lat for g in geos], pa.float64()),
        "geo_lon": pa.array([None if g is None else g.lon for g in geos], pa.float64()),
        "properties": pa.array(
            [_properties(event) for event in own_events] + [_EMPTY_PROPERTIES] * len(detached),
            pa.string(),
        ),
        "retention_class": pa.array([cls.name for cls in row_classes], pa.string()),
        "expires_at": _expiry(occurred.take(row_index), received, row_classes),
        "region": pa.array(regions, pa.string()),
        "policy_version": pa.array([policy.version] * len(rows), pa.string()),
        "source_partition": pa.array([partition] * len(rows), pa.int32()),
        "source_offset": pa.array([offsets[i] for i in rows], pa.int64()),
    }
    return conform(pa.table(columns), IDENTIFIABLE)


def _expiry(occurred: pa.Array, received_ms: pa.Array, classes: list[RetentionClass]) -> pa.Array:
    # Anchor: the earlier of event and arrival time (see the module docstring). Integer
    # microseconds: Arrow has no element-wise min over timezone-aware timestamps.
    occurred_us = occurred.cast(pa.int64())
    received_us = pc.multiply_checked(received_ms, _US_PER_MS)
    anchor = pc.min_element_wise(occurred_us, received_us)
    # Kafka reports a record without a timestamp as -1: that is no arrival time, not 1969.
    anchor = pc.if_else(pc.less(received_ms, 0), occurred_us, anchor)
    periods = pa.array(
        [None if cls.account_bound else cls.days * _US_PER_DAY for cls in classes], pa.int64()
    )
    return pc.add_checked(anchor, periods).cast(_UTC_US)


def _properties(event: Event) -> str:
    names = _PROPERTY_FIELDS[type(event)]
    return _PROPERTIES_ENCODER.encode({name: getattr(event, name) for name in names}).decode()


def _zero(_event: Event) -> int:
    return 0


def _check_aligned(count: int, **columns: Sequence[object]) -> None:
    wrong = {name: len(column) for name, column in columns.items() if len(column) != count}
    if wrong:
        raise ValueError(f"split: {count} events but misaligned inputs {wrong}")
