"""The one settings object, read from ``SIEVE_*`` environment variables at the edge.

Build it once (``Settings()``) in the command line or a test and pass it (or the plain
values it holds) inward; nothing below the edge reads the environment. Secrets are
never settings values: the settings hold *paths* to key files, and the files are read by
:mod:`streams.privacy.keyring`, which never logs their contents.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.events import (
    DEFAULT_BACKFILL_MAX_BEHIND,
    DEFAULT_EVENT_MAX_AHEAD,
    DEFAULT_EVENT_MAX_BEHIND,
)
from schemas.topic_datasets import DEAD_LETTERS
from streams.origins import check_origins  # the collector's own rule

if TYPE_CHECKING:
    import click

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
        DEAD_LETTERS.default_topic,
        description="Topic of rejected raw messages with error headers.",
    )
    dead_letter_retention_hours: int = Field(
        DEAD_LETTERS.default_retention_hours,
        description="Retention of the dead-letter topic (treated as identifiable data).",
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
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the worker's web server (/metrics) binds: 0.0.0.0 (or one of the"
        " host's addresses) for a Prometheus on another machine or container.",
    )
    status_interval_seconds: float = Field(
        30.0,
        ge=0,
        description="Seconds between the worker's status lines (events/s, lag, committed ranges,"
        " dead letters) when its output is not a terminal; 0 writes none. In a terminal one"
        " live line is redrawn every second instead.",
    )
    roll_max_bytes: int = Field(
        16 << 20,
        gt=0,
        description="Buffered output bytes (Arrow) per partition before files are written,"
        " whatever the record count: a worker's memory for ranges is then bounded by bytes"
        " (writing a range holds about three times its size while it is sorted into files).",
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

    # --- event contract --------------------------------------------------------------------
    event_max_ahead: timedelta = Field(
        DEFAULT_EVENT_MAX_AHEAD,
        description="Furthest an event's occurred_at may lie after its arrival (the Kafka record"
        " timestamp; for the collector, the request). A day covers every time zone and any sane"
        " clock skew; an event claiming next year would turn deduplication off for its"
        " partition. Later events are dead-lettered (the collector answers 400): too_far_ahead.",
    )
    event_max_behind: timedelta = Field(
        DEFAULT_EVENT_MAX_BEHIND,
        description="Furthest an event's occurred_at may lie before its arrival: 400 days takes a"
        " phone that was offline for months and a generator run over last month; older is a"
        " broken clock (dead-lettered: too_far_behind). Backfills get SIEVE_BACKFILL_MAX_BEHIND.",
    )
    backfill_max_behind: timedelta = Field(
        DEFAULT_BACKFILL_MAX_BEHIND,
        description="The same bound for records marked as a backfill (Kafka header"
        " sieve.backfill: 1, which `sieve replay` sets): 50 years, so any old log replays.",
    )
    internal_referrer_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="The service's own hosts, comma separated (example.com also covers its"
        " subdomains): a referrer on one of them is classed internal in the facts, not other.",
    )

    @field_validator("internal_referrer_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: object) -> object:
        if isinstance(value, str):
            value = [host.strip() for host in value.split(",") if host.strip()]
        return value

    # --- collector ------------------------------------------------------------------------
    collector_host: str = Field("127.0.0.1", description="Address the HTTP collector binds.")
    collector_port: int = Field(8080, description="Port of the HTTP collector.")
    collector_max_body_bytes: int = Field(
        1_048_576, description="Largest request body the collector reads (413 above it)."
    )
    collector_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="How long a connection may take to send a request's headers (from when it"
        " opens, or from the previous answer on a kept-alive connection) before the collector"
        " closes it: half-open connections cannot pile up.",
    )
    collector_body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="How long a request may take to send its body once its headers arrived"
        " (408 and the connection closed after).",
    )
    collector_max_requests_per_key: int = Field(
        4,
        ge=1,
        description="Requests one account's write keys may have in progress at once; more are"
        " answered 429 with Retry-After, so one client's flood cannot starve the others.",
    )
    collector_ack_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest a request waits for Kafka's acknowledgements before the collector"
        " answers 503 (also bounds how long sending may block while the broker is away).",
    )
    collector_metrics_host: str = Field(
        "127.0.0.1",
        description="Address the collector's /metrics listener binds (a port of its own, apart"
        " from the one clients post to): 0.0.0.0 for a Prometheus on another machine.",
    )
    collector_metrics_port: int = Field(
        6067, ge=1, le=65535, description="Port of the collector's /metrics listener."
    )
    collector_cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Web origins whose pages may post events from a browser (CORS), comma"
        " separated: https://app.example.com,https://www.example.com; * allows any origin."
        " Empty: no browser access. Credentials (cookies) are never allowed.",
    )

    @field_validator("collector_cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = [origin for origin in value.split(",") if origin.strip()]
        return check_origins(value) if isinstance(value, list | tuple) else value

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
    dp_userless_unit: Literal["account", "session"] = Field(
        "account",
        description="Who stands for a person in the analytics' privacy unit for events with no"
        " user: 'account' (all of an account's user-less events of a day are one unit: covers"
        " every person) or 'session' (each session, else IP address, of a day is a unit: more"
        " useful numbers, but a person with k sessions a day is protected with k times epsilon).",
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

    @property
    def state_folder(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.work_dir / "state"


# The help text is wrapped to fit 80 columns once click indents the epilog by two.
_HELP_WIDTH = 76
_SETTINGS_ATTRIBUTE = "sieve_settings"
CommandT = TypeVar("CommandT", bound="click.Command")


def _shown_default(name: str, default: object) -> str:
    if default is None:
        return "(required)" if "keyring" in name else "(unset)"
    if isinstance(default, Path):
        return str(default)
    if isinstance(default, timedelta):
        return f"{_iso_duration(default)} (an ISO 8601 duration)"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, tuple):  # comma separated, as the variable is written
        default = ",".join(str(item) for item in default)
    return str(default) if default != "" else "''"


def _iso_duration(duration: timedelta) -> str:
    # Days, hours, minutes or seconds only: a year or a month has no fixed length.
    seconds = int(duration.total_seconds())
    for unit, size in (("D", 86_400), ("H", 3_600), ("M", 60)):
        if seconds % size == 0:
            return f"P{seconds // size}D" if unit == "D" else f"PT{seconds // size}{unit}"
    return f"PT{seconds}S"


def describe_environment(names: Iterable[str] | None = None) -> str:
    """The variables of ``names`` (every setting if None), in the order of :class:`Settings`:
    each its default, then what it is for, wrapped to 80 columns (for ``--help``)."""
    chosen = set(Settings.model_fields if names is None else names)
    lines = []
    for name, field in Settings.model_fields.items():
        if name not in chosen:
            continue
        lines.append(f"{ENV_PREFIX}{name.upper()}={_shown_default(name, field.default)}")
        lines.extend(
            textwrap.wrap(
                field.description or "",
                _HELP_WIDTH,
                initial_indent="    ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


def environment_help(names: Iterable[str]) -> str:
    """A click epilog listing the variables of ``names`` (``\\b``: click keeps its lines)."""
    listed = describe_environment(names)
    if not listed:
        return "Reads no SIEVE_* environment variable."
    return "Environment variables it reads:\n\n\b\n" + listed


def reads_settings(*names: str) -> Callable[[CommandT], CommandT]:
    """Declare the settings a command reads; its ``--help`` then lists exactly their
    variables. Put it above ``@click.command``.

    A declaration can drift from the code, so tests/unit/test_command_settings.py reads each
    command's code (and every function its settings reach) and requires the two to match.
    """
    unknown = sorted(set(names) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"not settings: {', '.join(unknown)}")

    def declare(command: CommandT) -> CommandT:
        if not callable(getattr(command, "get_help", None)):
            raise TypeError("@reads_settings goes above @click.command (it takes the command)")
        command.epilog = environment_help(names)
        setattr(command, _SETTINGS_ATTRIBUTE, frozenset(names))
        return command

    return declare


def declared_settings(command: object) -> frozenset[str] | None:
    """The settings ``command`` declared with :func:`reads_settings`, None if it did not."""
    declared = getattr(command, _SETTINGS_ATTRIBUTE, None)
    return declared if isinstance(declared, frozenset) else None
