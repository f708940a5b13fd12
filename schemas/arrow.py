"""Explicit Arrow schemas of every dataset Sieve writes, versioned with the event schema.

Writers cast to these schemas and fail on a missing column (``conform``): a dropped field
is an error, never a silent null column. Readers (DuckDB views, the retention sweep) rely
on the column names here.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

OUTPUT_SCHEMA_VERSION: Final = "1"
# The version of the facts dataset, stamped on every facts file. 2 added referrer_class
# (files of version 1 read as "unknown") and unit_key (read as null); 3 added the custom
# event columns event_name, dimensions and metrics (older files read them as null).
FACTS_VERSION: Final = "3"

_UTC_US = pa.timestamp("us", tz="UTC")
_UTC_MS = pa.timestamp("ms", tz="UTC")

# One row per accepted event whose identifiable record is kept (consent allows it).
# Written under identifiable/retention_class=<c>/region=<r>/date=<occurred date>/, encrypted.
IDENTIFIABLE: Final = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("occurred_at", _UTC_US, nullable=False),
        # The Kafka record timestamp: when the event reached the raw topic (same on replay).
        pa.field("received_at", _UTC_MS, nullable=False),
        pa.field("account_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("ip", pa.string()),
        pa.field("user_agent", pa.string()),
        pa.field("geo_country", pa.string()),
        pa.field("geo_region", pa.string()),
        pa.field("geo_city", pa.string()),
        pa.field("geo_lat", pa.float64()),
        pa.field("geo_lon", pa.float64()),
        # The type-specific fields as canonical JSON (schemas.events), so one schema fits all types.
        pa.field("properties", pa.string(), nullable=False),
        pa.field("retention_class", pa.string(), nullable=False),
        # Null when the class lasts "while the account lives": the sweep computes it from the
        # account's termination (see streams/privacy/policy.toml).
        pa.field("expires_at", _UTC_US),
        pa.field("region", pa.string(), nullable=False),
        pa.field("policy_version", pa.string(), nullable=False),
        pa.field("source_partition", pa.int32(), nullable=False),
        pa.field("source_offset", pa.int64(), nullable=False),
    ],
    metadata={"sieve.dataset": "identifiable", "sieve.schema_version": OUTPUT_SCHEMA_VERSION},
)

# One row per accepted event (consent never removes it: the anonymized fact is still counted).
# No IP, no user agent string, no user or session id. Written under facts/date=<date>/.
FACTS: Final = pa.schema(
    [
        # HMAC-SHA256(event key, event_id), hex, truncated to 128 bits: dedup and exactly-once
        # checks without the raw id.
        pa.field("event_key", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        # Event time coarsened to the hour: the finest window Sieve publishes.
        pa.field("occurred_hour", pa.timestamp("s", tz="UTC"), nullable=False),
        # The customer (the business account), needed for exact per-account metering.
        pa.field("account_id", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("device_class", pa.string(), nullable=False),
        pa.field("browser_family", pa.string(), nullable=False),
        pa.field("os_family", pa.string(), nullable=False),
        pa.field("is_bot", pa.bool_(), nullable=False),
        # Upload/download size, or response size of a request; 0 for other types.
        pa.field("bytes", pa.int64(), nullable=False),
        # Session length on logout events; 0 otherwise.
        pa.field("session_seconds", pa.float64(), nullable=False),
        # Pseudonymous person key for distinct counts: HMAC under a per-day key derived from
        # the keyring, so it cannot be joined across days. Null when the event names no user.
        pa.field("subject_key", pa.string()),
        pa.field("key_id", pa.string(), nullable=False),
        # Where the request or page view came from, as a class only (search, social, direct,
        # internal, other: streams.enrich.referrer); never the URL or host. Null for types
        # that have no referrer; "unknown" in facts written before version 2.
        pa.field("referrer_class", pa.string()),
        # The privacy unit of the analytics (issue 8): the subject key for an event with a
        # user; else an HMAC under the same per-day key of the account and session, or else of
        # the account and IP address (streams.privacy.pseudonymize.userless_unit_keys); null
        # when the event has none of them. Made with the key ``key_id`` names.
        pa.field("unit_key", pa.string()),
        # A custom event's name when the policy declares it; null otherwise and for the
        # other types (an undeclared name is the product's free text: it stays out).
        pa.field("event_name", pa.string()),
        # Its declared dimension properties (as text) and metric properties. Maps, so the
        # schema is the same whatever a policy declares: a new property is no new column,
        # and files written before these columns read them as null.
        pa.field("dimensions", pa.map_(pa.string(), pa.string())),
        pa.field("metrics", pa.map_(pa.string(), pa.float64())),
    ],
    metadata={"sieve.dataset": "facts", "sieve.schema_version": FACTS_VERSION},
)


class SchemaMismatchError(ValueError):
    """A table does not carry the columns its dataset schema requires."""


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` cast to ``schema`` (order and types); missing or extra columns are errors."""
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing or extra:
        raise SchemaMismatchError(
            f"table does not match dataset {schema.metadata.get(b'sieve.dataset', b'?').decode()}:"
            f" missing {missing}, unexpected {extra}"
        )
    return table.select(schema.names).cast(schema)
