"""Synthesized facts for bench.aggregations: a population of accounts and their days.

Vectorized with pyarrow.compute and seeded: the same options give the same facts, and each
day's facts depend on the seed and the day only (a day can be written in two parts: its
first hours with one run's input, the rest with the next). Every account-hour has usage: at
least one request (a monitoring probe, the pattern that makes hourly metering dense), plus a
geometric number of further events whose mean is ``rate`` times the account's weight
(log-normal across accounts: a few large ones, a long tail of small ones) times a diurnal and
weekly profile. Events mix requests, page views, logins and logouts (session time with
microsecond precision), uploads and downloads (log-normal sizes), payments; half of the
requests name no person (API calls), the other events one of the account's users (1 to 400
per account). They are written the way a worker commits them
(``tests.fixtures.facts.write_committed_facts``: a facts file per date and a commit marker per
range), one range per call and input partition (3 partitions, accounts keyed onto them as
Kafka would).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from schemas.arrow import FACTS
from tests.fixtures.facts import write_committed_facts

END: Final = datetime(2026, 11, 1, tzinfo=UTC)
TOPIC: Final = "bench.raw"
PARTITIONS: Final = 3
GRACE: Final = timedelta(hours=1)
# Hours of traffic after the period, to close its last windows (see synthesize).
NEXT_HOURS: Final = 2

# Event types and their share of the events after each account-hour's first request.
_TYPES: Final = (
    ("request", 0.52),
    ("page_view", 0.26),
    ("login", 0.055),
    ("logout", 0.05),
    ("upload", 0.05),
    ("download", 0.06),
    ("payment", 0.005),
)
# Relative activity per UTC hour (business hours in Europe and the Americas) and weekday.
_DIURNAL: Final = (
    0.30, 0.25, 0.20, 0.20, 0.25, 0.35, 0.55, 0.80, 1.10, 1.40, 1.55, 1.60,
    1.55, 1.60, 1.65, 1.60, 1.50, 1.35, 1.20, 1.05, 0.90, 0.70, 0.50, 0.40,
)  # fmt: skip
_WEEKLY: Final = (1.1, 1.15, 1.15, 1.1, 1.0, 0.55, 0.5)  # Monday first
_COUNTRIES: Final = ("DE", "FR", "US", "GB", "NL", "ES", "IT", "BR", "IN", "JP", "--")
_DEVICES: Final = ("desktop", "mobile", "tablet", "bot", "other")
_BROWSERS: Final = ("Chrome", "Firefox", "Safari", "Edge", "curl", "Other")
_OS: Final = ("Windows", "Mac OS X", "Linux", "Android", "iOS", "Other")
# How many equal buckets the categorical draws are made with (a lookup table per draw).
_BUCKETS: Final = 1_000


# --- synthesis -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Population:
    """Per account: its id, hourly rate weight, number of users and input partition."""

    ids: pa.Array
    weights: pa.Array  # float64
    users: pa.Array  # int64, >= 1
    partitions: pa.Array  # int64


def make_population(accounts: int, seed: int) -> Population:
    rng = random.Random(seed)
    # Log-normal weights normalised to mean 1, so --rate is the mean extra events per hour.
    raw = [rng.lognormvariate(0.0, 1.2) for _ in range(accounts)]
    mean = sum(raw) / accounts
    weights = [w / mean for w in raw]
    users = [max(1, min(400, round(10 * w * rng.uniform(0.5, 2.0)))) for w in weights]
    ids = [f"acct-{i:05d}" for i in range(accounts)]
    return Population(
        ids=pa.array(ids, pa.string()),
        weights=pa.array(weights, pa.float64()),
        users=pa.array(users, pa.int64()),
        partitions=pa.array([i % PARTITIONS for i in range(accounts)], pa.int64()),
    )


class _Uniform:
    """Seeded uniform draws in [0, 1), a fresh stream per call (pyarrow's generator)."""

    def __init__(self, seed: int) -> None:
        self._next = seed * 1_000_003

    def __call__(self, n: int) -> pa.Array:
        self._next += 1
        return pc.random(n, initializer=self._next)


def _lookup(choices: Sequence[tuple[str, float]] | Sequence[str]) -> pa.Array:
    """A table of _BUCKETS entries where each choice fills its share (equal if unweighted)."""
    pairs = [(c, 1.0) if isinstance(c, str) else c for c in choices]
    total = sum(weight for _, weight in pairs)
    table: list[str] = []
    for name, weight in pairs:
        table += [name] * round(weight / total * _BUCKETS)
    table = (table + [pairs[0][0]] * _BUCKETS)[:_BUCKETS]
    return pa.array(table, pa.string())


_TYPE_TABLE: Final = _lookup(_TYPES)


def _pick(table: pa.Array, uniform: pa.Array) -> pa.Array:
    return table.take(pc.cast(pc.floor(pc.multiply(uniform, len(table))), pa.int64()))


def _lognormal(draw: _Uniform, n: int, mu: float, sigma: float) -> pa.Array:
    """Box-Muller: exp(mu + sigma * z) with z standard normal (ln of 1 - u, never of 0)."""
    radius = pc.sqrt(pc.multiply(pc.ln(pc.subtract(1.0, draw(n))), -2.0))
    z = pc.multiply(radius, pc.cos(pc.multiply(draw(n), 2 * math.pi)))
    return pc.exp(pc.add(mu, pc.multiply(z, sigma)))


def day_facts(
    population: Population, day: date, draw: _Uniform, rate: float, first_key: int
) -> pa.Table:
    """Every fact of one UTC day (rows ordered by account, then hour)."""
    accounts = len(population.ids)
    cells = accounts * 24
    cell = pa.array(range(cells), pa.int64())
    account_of_cell = pc.divide(cell, 24)
    hour_of_cell = pc.subtract(cell, pc.multiply(account_of_cell, 24))
    profile = pa.array(_DIURNAL, pa.float64()).take(hour_of_cell)
    mean = pc.multiply(
        pc.multiply(population.weights.take(account_of_cell), profile),
        rate * _WEEKLY[day.weekday()],
    )
    # Geometric extra events with this mean: floor(ln u / ln(mean / (1 + mean))).
    ratio = pc.ln(pc.divide(mean, pc.add(mean, 1.0)))
    extra = pc.cast(pc.floor(pc.divide(pc.ln(pc.subtract(1.0, draw(cells))), ratio)), pa.int64())
    per_cell = pc.add(extra, 1)  # + the account-hour's first request
    offsets = pc.cumulative_sum(per_cell)
    n = offsets[-1].as_py()
    starts = pa.concat_arrays([pa.array([0], pa.int64()), offsets]).cast(pa.int32())
    parent = pc.list_parent_indices(pa.ListArray.from_arrays(starts, pa.nulls(n, pa.int8())))
    parent = pc.cast(parent, pa.int64())
    account = pc.divide(parent, 24)
    hour = pc.subtract(parent, pc.multiply(account, 24))
    first_of_cell = pc.equal(
        pa.array(range(n), pa.int64()), pc.subtract(offsets, per_cell).take(parent)
    )
    types = pc.if_else(first_of_cell, "request", _pick(_TYPE_TABLE, draw(n)))

    is_upload = pc.equal(types, "upload")
    is_download = pc.equal(types, "download")
    transfer = pc.cast(pc.round(_lognormal(draw, n, 14.0, 1.5)), pa.int64())  # ~1.2 MB median
    response = pc.cast(pc.round(_lognormal(draw, n, 8.5, 1.0)), pa.int64())  # ~5 kB median
    is_request = pc.equal(types, "request")
    nbytes = pc.if_else(
        pc.or_(is_upload, is_download), transfer, pc.if_else(is_request, response, 0)
    )
    # Session time with microsecond precision, as logouts carry it (~10 minutes median).
    duration = pc.round(_lognormal(draw, n, 6.4, 1.1), 6)
    seconds = pc.if_else(pc.equal(types, "logout"), duration, 0.0)
    # One of the account's users, as a per-day pseudonym (like subject keys); half of the
    # requests name no one (API calls).
    user = pc.cast(pc.floor(pc.multiply(draw(n), population.users.take(account))), pa.int64())
    account_user = pc.add(pc.multiply(account, 1_000), user)
    person = pc.add(pc.multiply(account_user, 1_000), day.toordinal() % 1_000)
    anonymous = pc.and_(is_request, pc.less(draw(n), 0.5))
    subject = pc.if_else(anonymous, pa.scalar(None, pa.string()), pc.cast(person, pa.string()))

    midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    occurred = pc.add(pc.multiply(hour, 3_600), midnight).cast(pa.timestamp("s", tz="UTC"))
    keys = pc.binary_join_element_wise(
        "ev", pc.cast(pa.array(range(first_key, first_key + n), pa.int64()), pa.string()), "-"
    )
    return pa.table(
        {
            "event_key": keys,
            "type": types,
            "occurred_hour": occurred,
            "account_id": population.ids.take(account),
            "country": _pick(_lookup(_COUNTRIES), draw(n)),
            "device_class": _pick(_lookup(_DEVICES), draw(n)),
            "browser_family": _pick(_lookup(_BROWSERS), draw(n)),
            "os_family": _pick(_lookup(_OS), draw(n)),
            "is_bot": pc.less(draw(n), 0.05),
            "bytes": nbytes,
            "session_seconds": seconds,
            "subject_key": subject,
            "key_id": pa.repeat(pa.scalar("k1", pa.string()), n),
            "referrer_class": pa.nulls(n, FACTS.field("referrer_class").type),
            "unit_key": subject,
            "event_name": pa.nulls(n, FACTS.field("event_name").type),
            "dimensions": pa.nulls(n, FACTS.field("dimensions").type),
            "metrics": pa.nulls(n, FACTS.field("metrics").type),
            "_partition": population.partitions.take(account),
        }
    )


def facts_of_day(population: Population, day: date, rate: float, seed: int) -> pa.Table:
    """Every fact of ``day``: a function of the seed and the day alone."""
    draw = _Uniform(seed * 100_000 + day.toordinal() % 100_000)
    return day_facts(population, day, draw, rate, day.toordinal() * 10_000_000)


@dataclass
class Writer:
    """Writes spans of synthesized time as committed ranges, offsets running on per
    partition across calls."""

    data_root: Path
    population: Population
    rate: float
    seed: int
    offsets: list[int] = field(default_factory=lambda: [0] * PARTITIONS)
    files: int = 0

    def write(self, start: datetime, end: datetime, pieces: int = 1) -> int:
        """Commit the facts of [start, end) as ``pieces`` ranges per partition, one after the
        other, each of an equal span of time; their number."""
        parts: dict[int, list[pa.Table]] = {p: [] for p in range(PARTITIONS)}
        day = start.date()
        while datetime(day.year, day.month, day.day, tzinfo=UTC) < end:
            table = facts_of_day(self.population, day, self.rate, self.seed)
            hours = table["occurred_hour"]
            table = table.filter(
                pc.and_(pc.greater_equal(hours, pa.scalar(start, hours.type)),
                        pc.less(hours, pa.scalar(end, hours.type)))
            )  # fmt: skip
            for partition in range(PARTITIONS):
                parts[partition].append(
                    table.filter(pc.equal(table["_partition"], partition)).drop_columns(
                        ["_partition"]
                    )
                )
            day += timedelta(days=1)
        written = 0
        bounds = [start + (end - start) * i / pieces for i in range(pieces)] + [end]
        for partition, tables in parts.items():
            part = pa.concat_tables(tables)
            hours = part["occurred_hour"]
            for low, high in pairwise(bounds):
                piece = part.filter(
                    pc.and_(pc.greater_equal(hours, pa.scalar(low, hours.type)),
                            pc.less(hours, pa.scalar(high, hours.type)))
                )  # fmt: skip
                if piece.num_rows == 0:
                    continue
                write_committed_facts(
                    self.data_root,
                    piece,
                    first_offset=self.offsets[partition],
                    topic=TOPIC,
                    partition=partition,
                )
                self.offsets[partition] += piece.num_rows
                self.files += 1
                written += piece.num_rows
        return written
