"""The one settings object, read from ``SIEVE_*`` environment variables at the edge.

Build it once (``Settings()``) in the command line or a test and pass it (or the plain
values it holds) inward; nothing below the edge reads the environment. Secrets are
never settings values: the settings hold *paths* to key files, and the files are read by
:mod:`streams.privacy.keyring`, which never logs their contents.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SIEVE_"


class Settings(BaseSettings):
    """Everything Sieve can be configured with. Every field is a ``SIEVE_<NAME>`` variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # --- local working folder -------------------------------------------------------------
    work_dir: Path = Field(
        Path(".sieve"),
        description="Ignored working folder: broker jars and logs, keys made by the demo.",
    )
    data_root: str = Field(
        ".sieve/data",
        description="Where output datasets live: a local path or a pyarrow filesystem URI.",
    )

    # --- Kafka --------------------------------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated."
    )
    broker_port: int = Field(9092, description="Port of the local broker (`sieve broker`).")
    broker_controller_port: int = Field(
        9093, description="KRaft controller port of the local broker."
    )
    raw_topic: str = Field("sieve.raw", description="Topic of raw events, keyed by account.")
    raw_partitions: int = Field(6, description="Partitions of the raw topic when Sieve creates it.")
    raw_retention_hours: int = Field(
        72, description="Retention of the raw topic (it holds raw personal data: keep it short)."
    )
    dead_letter_topic: str = Field(
        "sieve.dead-letter", description="Topic of rejected raw messages with error headers."
    )
    dead_letter_retention_hours: int = Field(
        168, description="Retention of the dead-letter topic (treated as identifiable data)."
    )
    consumer_group: str = Field("sieve-worker", description="Consumer group of the workers.")

    # --- worker -------------------------------------------------------------------------
    batch_max_records: int = Field(10_000, description="Records fetched per getmany call.")
    roll_max_records: int = Field(
        200_000, description="Buffered accepted events per partition before files are written."
    )
    roll_interval_seconds: float = Field(
        5.0,
        description="Longest time a partition's buffer waits before it is written (a buffer of"
        " at least a batch is written at once when the worker has caught up).",
    )
    dedup_horizon: timedelta = Field(
        timedelta(hours=24), description="How far back (event time) duplicate event ids are caught."
    )
    session_timeout_seconds: float = Field(
        30.0,
        ge=6.0,
        description="How long the group waits for a silent worker before its partitions move"
        " to the others (the broker's minimum is 6).",
    )
    metrics_port: int = Field(6066, description="Port of the worker's web server (/metrics).")
    honour_dnt: bool = Field(True, description="Keep no identifiable record of DNT events.")
    honour_gpc: bool = Field(True, description="Keep no identifiable record of GPC events.")
    policy_file: Path | None = Field(
        None,
        description="Retention policy TOML; the packaged streams/privacy/policy.toml if unset.",
    )
    geoip_database: Path | None = Field(
        None, description="A MaxMind-format (.mmdb) database to use instead of the packaged one."
    )

    # --- secrets (paths only) --------------------------------------------------------------
    keyring_file: Path | None = Field(
        None,
        description="JSON key file for pseudonymization and encryption keys (see README). Required"
        " by the worker; `sieve demo` makes one in the work folder.",
    )
    write_keys_file: Path | None = Field(
        None, description="JSON file mapping account ids to collector write keys."
    )

    # --- collector ------------------------------------------------------------------------
    collector_host: str = Field("127.0.0.1", description="Address the HTTP collector binds.")
    collector_port: int = Field(8080, description="Port of the HTTP collector.")
    collector_max_body_bytes: int = Field(
        1_048_576, description="Largest request body the collector reads (413 above it)."
    )

    # --- aggregations ---------------------------------------------------------------------
    grace_period: timedelta = Field(
        timedelta(hours=1), description="How long after a window ends late events still update it."
    )
    price_plan_file: Path | None = Field(
        None, description="Price plan TOML; the packaged aggregations/price_plan.toml if unset."
    )
    dp_epsilon: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Differential privacy: epsilon per person per UTC day, over every analytics"
        " number of that day (every dimension, grain and late batch together).",
    )
    dp_delta: float = Field(
        1e-6,
        gt=0,
        lt=1e-3,
        description="Differential privacy: delta per person per UTC day (far below 1 / people).",
    )
    dp_late_batches: int = Field(
        1,
        ge=0,
        le=7,
        description="Analytics batches of a day after its first, for facts committed late.",
    )
    dp_late_share: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of a day's privacy budget kept for its late batches (0 if none).",
    )
    dp_late_interval: timedelta = Field(
        timedelta(days=1),
        description="Late batch n of a day is due n times this after the day closes.",
    )
    dp_max_events_per_person_day: int = Field(
        32,
        ge=1,
        description="Events of one person's day the analytics count (the rest are not counted):"
        " the bound the noise is calibrated to.",
    )
    meters_file: Path | None = Field(
        None,
        description="Meters TOML (what metering counts: event, aggregation, property, unit);"
        " the packaged aggregations/meters.toml if unset.",
    )
    publish_memory_mb: int = Field(
        1024,
        ge=64,
        description="Memory DuckDB may use while publishing (it spills to a temporary folder"
        " beyond it); publish reads the facts in chunks sized to it.",
    )

    @property
    def broker_dir(self) -> Path:
        return self.work_dir / "broker"


def describe_environment() -> str:
    """One line per setting: the variable, its default and what it is for (for ``--help``)."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "(required)" if default is None and "keyring" in name else repr(default)
        if isinstance(default, Path):
            shown = str(default)
        elif isinstance(default, timedelta):
            shown = f"PT{int(default.total_seconds())}S (an ISO 8601 duration, e.g. PT1H)"
        lines.append(f"{ENV_PREFIX}{name.upper()}={shown}  {field.description}")
    return "\n".join(lines)
