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
        timedelta(hours=24),
        description="How long after a record's arrival (the broker's timestamp, whatever the"
        " event time) a resend of its event id is caught as a duplicate.",
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
    state_dir: Path | None = Field(
        None,
        description="Local folder of the worker's partition state (dedup keys, consent): a"
        " cache of the committed ranges, rebuilt from them when lost. Keep it on local disk,"
        " not in the data root. Default: <work_dir>/state.",
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
    k_anonymity: int = Field(
        10,
        ge=2,
        description="Smallest number of distinct people a published analytics cell describes.",
    )
    grace_period: timedelta = Field(
        timedelta(hours=1), description="How long after a window ends late events still update it."
    )
    price_plan_file: Path | None = Field(
        None, description="Price plan TOML; the packaged aggregations/price_plan.toml if unset."
    )

    @property
    def broker_dir(self) -> Path:
        return self.work_dir / "broker"

    @property
    def state_folder(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.work_dir / "state"


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
