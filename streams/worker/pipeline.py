"""One input partition's processing: decode, dedup, consent, enrich, split, buffer.

No Kafka here: the consumer service hands in batches of records in offset order (aiokafka's
own ``ConsumerRecord``s, or :class:`RawRecord`s in tests: anything shaped like
:class:`KafkaRecord`) and takes back dead letters and, when a range is due, a
:class:`PendingRange` to commit.
Everything the range's outputs depend on comes from the records themselves and the
committed state, so replaying a range after a crash produces the same rows.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas import arrow as schemas_arrow
from schemas.bounds import DEFAULT_TIME_BOUNDS, TimeBounds, is_backfill
from schemas.commits import CommitMarker, RangeCounts
from schemas.decode import Rejection, decode_batch
from schemas.events import Event
from streams.enrich.geo import GeoLocator, resolve_countries
from streams.enrich.useragent import UserAgentParser
from streams.privacy.consent import ConsentState, StateChange, batch_consent_keys, decide
from streams.privacy.keyring import Keyring
from streams.privacy.pseudonymize import event_keys
from streams.privacy.retention import RetentionPolicy
from streams.privacy.split import Enrichment, split
from streams.worker.deadletter import PROCESSING_ERROR, DeadLetter, dead_letter
from streams.worker.dedup import Deduplicator, PendingKeys

logger = logging.getLogger(__name__)


class KafkaRecord(Protocol):
    """What the pipeline reads of a raw-topic record (aiokafka's ``ConsumerRecord`` has it).

    The service hands aiokafka's records in as they are: copying them into a dataclass of
    our own cost ~0.9 µs an event, about a tenth of the whole pipeline (bench/README.md).
    """

    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...  # Kafka record timestamp, ms since the epoch; -1 if none
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True)
class RawRecord:
    """One raw-topic record as plain data (tests, benchmarks, replays of stored records)."""

    offset: int
    timestamp: int
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True)
class PipelineContext:
    """What every partition pipeline of a worker shares (built once at start)."""

    keyring: Keyring
    policy: RetentionPolicy
    user_agents: UserAgentParser
    geolocator: GeoLocator
    honour_dnt: bool
    honour_gpc: bool
    dedup_horizon_seconds: int
    worker_version: str
    # How far occurred_at may lie from the record's arrival (schemas.bounds); the defaults
    # are the settings' defaults, so tests and benches that build a context keep them.
    time_bounds: TimeBounds = DEFAULT_TIME_BOUNDS


@dataclass(frozen=True)
class PendingRange:
    """A buffered offset range ready to be written and committed."""

    first_offset: int
    last_offset: int
    identifiable: pa.Table
    facts: pa.Table
    counts: RangeCounts
    watermark: str | None
    consent_changes: list[tuple[str, str]]


@dataclass
class _Buffer:
    first_offset: int | None = None
    last_offset: int | None = None
    identifiable: list[pa.Table] = field(default_factory=list)
    facts: list[pa.Table] = field(default_factory=list)
    raw: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    identifiable_by_class: Counter[str] = field(default_factory=Counter)
    fact_rows: int = 0
    consent_changes: list[tuple[str, str]] = field(default_factory=list)


class _StageFailed(Exception):
    """A pipeline stage raised on a batch; ``stage`` names it for the dead letter."""

    def __init__(self, stage: str, error: Exception) -> None:
        super().__init__(stage)
        self.stage = stage
        self.error = error


@dataclass
class _Outcome:
    """What (part of) one batch decided; applied to the pipeline only once complete."""

    consent: ConsentState  # the consent state after it
    letters: list[DeadLetter] = field(default_factory=list)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    accepted: int = 0
    identifiable: list[pa.Table] = field(default_factory=list)
    facts: list[pa.Table] = field(default_factory=list)
    identifiable_by_class: Counter[str] = field(default_factory=Counter)
    consent_changes: list[StateChange] = field(default_factory=list)
    # The dedup decisions of every accepted event so far (check() covers the whole prefix).
    pending: PendingKeys | None = None
    accepted_keys: list[str] = field(default_factory=list)
    accepted_hours: list[int] = field(default_factory=list)

    @staticmethod
    def start(consent: ConsentState) -> _Outcome:
        return _Outcome(consent=consent)

    def reject(self, code: str, letter: DeadLetter) -> None:
        self.dead_lettered[code] += 1
        self.letters.append(letter)

    def then(self, later: _Outcome) -> _Outcome:
        """This outcome followed by ``later`` (decided after it)."""
        return _Outcome(
            consent=later.consent,
            letters=self.letters + later.letters,
            dead_lettered=self.dead_lettered + later.dead_lettered,
            duplicates=self.duplicates + later.duplicates,
            accepted=self.accepted + later.accepted,
            identifiable=self.identifiable + later.identifiable,
            facts=self.facts + later.facts,
            identifiable_by_class=self.identifiable_by_class + later.identifiable_by_class,
            consent_changes=self.consent_changes + later.consent_changes,
            pending=later.pending if later.pending is not None else self.pending,
            accepted_keys=self.accepted_keys + later.accepted_keys,
            accepted_hours=self.accepted_hours + later.accepted_hours,
        )


class PartitionPipeline:
    """Stateful processing of one partition; state = what its committed ranges imply."""

    def __init__(
        self,
        topic: str,
        partition: int,
        context: PipelineContext,
        next_offset: int | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        # The offset this pipeline must see next (None: the first record it is given; the
        # worker always knows it, from the markers or the log start). Records before it are
        # committed already; a record after it means the fetch skipped some, and the caller
        # must rewind.
        self.next_offset = next_offset
        self._context = context
        self._dedup = Deduplicator(context.dedup_horizon_seconds)
        self._consent = ConsentState()
        self._buffer = _Buffer()
        # Set while a batch's outcome is applied; stays set if that fails half way.
        self.broken = False

    # --- recovery ------------------------------------------------------------------------
    def restore(
        self, filesystem: pafs.FileSystem, root: str, markers: Sequence[CommitMarker]
    ) -> None:
        """Rebuild dedup and consent state from the partition's committed ranges."""
        changes = [change for marker in markers for change in marker.consent_changes]
        self._consent = ConsentState().with_changes(changes)
        watermark_text = next((m.watermark for m in reversed(markers) if m.watermark), None)
        if watermark_text is None:
            return
        watermark = int(datetime.fromisoformat(watermark_text).timestamp())
        floor = watermark - self._context.dedup_horizon_seconds
        # Only facts dated within the horizon can still match (the partition's files are
        # listed by its markers, so nothing uncommitted is read).
        first_day = _day_floor(floor)
        recent = [
            path
            for marker in markers
            for path in marker.files
            if path.startswith("facts/") and _date_of(path) >= first_day
        ]
        keys: list[str] = []
        hours: list[int] = []
        for path in recent:
            table = pq.read_table(
                f"{root}/{path}", filesystem=filesystem, columns=["event_key", "occurred_hour"]
            )
            keys.extend(table["event_key"].to_pylist())
            hours.extend(pc.cast(table["occurred_hour"], pa.int64()).to_pylist())
        self._dedup.seed(keys, hours, watermark)

    # --- processing ----------------------------------------------------------------------
    def process(self, records: Sequence[KafkaRecord]) -> list[DeadLetter]:
        """Take a batch in offset order into the buffer; return its dead letters.

        All or nothing: the batch's outcome is computed first, and the buffer, counters,
        ``next_offset``, dedup and consent state change only once it is complete. A record
        that makes a stage raise (any exception: a value nested too deep, a date a stage
        cannot represent, a bug) is found by bisecting the batch and dead-lettered with
        ``processing_error``; the rest is processed as usual. Each part is decided against
        the state left by the parts before it, so the outcome is the one a batch holding
        only the good records would have had, however the records were batched: a replay
        after a crash writes the same outputs. A batch that raises nowhere costs nothing
        extra. Should applying the outcome itself fail, the pipeline is left ``broken``
        and never hands out a range again (see :meth:`take_range`).
        """
        if self.broken:
            raise RuntimeError(f"partition {self.partition}: the pipeline failed earlier")
        if not records:
            return []
        try:
            outcome = self._decide(records, self._consent, [], [])
        except _StageFailed as failure:
            outcome = self._bisect(records, _Outcome.start(self._consent), failure)
        self.broken = True  # until the outcome is applied whole
        self._apply(records, outcome)
        self.broken = False
        return outcome.letters

    def _decide(
        self,
        records: Sequence[KafkaRecord],
        consent: ConsentState,
        earlier_keys: list[str],
        earlier_hours: list[int],
    ) -> _Outcome:
        """The outcome of ``records`` after ``earlier_keys`` (accepted earlier in the same
        batch, not yet recorded); changes nothing. Raises :class:`_StageFailed`."""
        stage = "decode"
        try:
            outcome = _Outcome.start(consent)
            decoded = decode_batch(
                [r.value for r in records],
                received_at_ms=[r.timestamp for r in records],
                backfill=[is_backfill(r.headers) for r in records],
                bounds=self._context.time_bounds,
            )
            for rejection in decoded.rejections:
                outcome.reject(rejection.code, self._letter(rejection, records[rejection.index]))
            positions = [i for i, event in enumerate(decoded.events) if event is not None]
            if not positions:
                return outcome
            stage = "dedup"
            events: list[Event] = [decoded.events[i] for i in positions]  # type: ignore[misc]
            keys = event_keys([e.event_id for e in events], self._context.keyring)
            hours = [_hour_epoch(e.occurred_at) for e in events]
            if earlier_keys:  # a later part of a bisected batch
                fresh, outcome.pending = self._dedup.check(
                    earlier_keys + keys, earlier_hours + hours
                )
                fresh = fresh[len(earlier_keys) :]
            else:
                fresh, outcome.pending = self._dedup.check(keys, hours)
            chosen = [i for i, ok in enumerate(fresh) if ok]
            outcome.duplicates = len(fresh) - len(chosen)
            if not chosen:
                return outcome
            events = [events[i] for i in chosen]
            keys = [keys[i] for i in chosen]
            outcome.accepted_keys = keys
            outcome.accepted_hours = [hours[i] for i in chosen]
            records_kept = [records[positions[i]] for i in chosen]

            stage = "consent"
            person_keys, account_keys = batch_consent_keys(events, self._context.keyring)
            keep, outcome.consent, outcome.consent_changes = decide(
                events,
                person_keys=person_keys,
                account_keys=account_keys,
                state=consent,
                honour_dnt=self._context.honour_dnt,
                honour_gpc=self._context.honour_gpc,
            )
            stage = "user_agent"
            user_agents = self._context.user_agents.parse_many([e.user_agent for e in events])
            stage = "geo"
            countries = resolve_countries(
                [e.geo.country if e.geo else None for e in events],
                [e.ip for e in events],
                self._context.geolocator,
            )
            stage = "split"
            result = split(
                events,
                keep_identifiable=keep,
                received_at_ms=[r.timestamp for r in records_kept],
                partition=self.partition,
                offsets=[r.offset for r in records_kept],
                enrichment=Enrichment(
                    country=countries,
                    device_class=[u.device_class for u in user_agents],
                    browser_family=[u.browser_family for u in user_agents],
                    os_family=[u.os_family for u in user_agents],
                    is_bot=[u.is_bot for u in user_agents],
                ),
                policy=self._context.policy,
                keyring=self._context.keyring,
                event_keys_of_events=keys,
            )
            outcome.accepted = len(events)
            outcome.identifiable.append(result.identifiable)
            outcome.facts.append(result.facts)
            if result.identifiable.num_rows:
                outcome.identifiable_by_class.update(
                    Counter(result.identifiable["retention_class"].to_pylist())
                )
            return outcome
        except MemoryError:
            raise  # the process, not a record: stop the worker with nothing committed
        except Exception as error:
            raise _StageFailed(stage, error) from error

    def _isolate(self, records: Sequence[KafkaRecord], before: _Outcome) -> _Outcome:
        """``before`` (the parts of the batch decided so far) followed by ``records``."""
        try:
            part = self._decide(
                records, before.consent, before.accepted_keys, before.accepted_hours
            )
        except _StageFailed as failure:
            return self._bisect(records, before, failure)
        return before.then(part)

    def _bisect(
        self, records: Sequence[KafkaRecord], before: _Outcome, failure: _StageFailed
    ) -> _Outcome:
        """``records`` made a stage raise: decide each half after the one before it, down
        to the single records that raise, which are dead-lettered. Depth: log2(batch)."""
        if len(records) > 1:
            middle = len(records) // 2
            return self._isolate(records[middle:], self._isolate(records[:middle], before))
        record = records[0]
        # The exception's type and the stage, never its message: it may quote the value.
        reason = f"the {failure.stage} stage failed on this record ({type(failure.error).__name__})"
        logger.warning(
            "partition %s offset %s dead-lettered: the %s stage raised %s",
            self.partition,
            record.offset,
            failure.stage,
            type(failure.error).__name__,
        )
        part = _Outcome.start(before.consent)
        part.reject(
            PROCESSING_ERROR, self._letter(Rejection(0, PROCESSING_ERROR, "$", reason), record)
        )
        return before.then(part)

    def _letter(self, rejection: Rejection, record: KafkaRecord) -> DeadLetter:
        return dead_letter(
            rejection,
            value=record.value,
            original_headers=record.headers or (),
            topic=self.topic,
            partition=self.partition,
            offset=record.offset,
            worker_version=self._context.worker_version,
        )

    def _apply(self, records: Sequence[KafkaRecord], outcome: _Outcome) -> None:
        if outcome.pending is not None:
            self._dedup.record(outcome.pending)
        self._consent = outcome.consent
        buffer = self._buffer
        if buffer.first_offset is None:
            buffer.first_offset = records[0].offset
        buffer.last_offset = records[-1].offset
        buffer.raw += len(records)
        buffer.accepted += outcome.accepted
        buffer.duplicates += outcome.duplicates
        buffer.dead_lettered.update(outcome.dead_lettered)
        buffer.identifiable.extend(outcome.identifiable)
        buffer.facts.extend(outcome.facts)
        buffer.fact_rows += sum(table.num_rows for table in outcome.facts)
        buffer.identifiable_by_class.update(outcome.identifiable_by_class)
        buffer.consent_changes.extend(outcome.consent_changes)
        self.next_offset = records[-1].offset + 1

    @property
    def buffered_records(self) -> int:
        return self._buffer.raw

    @property
    def buffered_rows(self) -> int:
        return self._buffer.fact_rows

    def take_range(self) -> PendingRange | None:
        """Hand over the buffered range (and start a new buffer); None when empty, and
        always None once the pipeline is ``broken`` (its buffer may hold half a batch)."""
        buffer = self._buffer
        if self.broken or buffer.first_offset is None or buffer.last_offset is None:
            return None
        self._buffer = _Buffer()
        watermark = (
            datetime.fromtimestamp(self._dedup.watermark, tz=UTC).isoformat()
            if self._dedup.watermark is not None
            else None
        )
        return PendingRange(
            first_offset=buffer.first_offset,
            last_offset=buffer.last_offset,
            identifiable=_concat(buffer.identifiable, schemas_arrow.IDENTIFIABLE),
            facts=_concat(buffer.facts, schemas_arrow.FACTS),
            counts=RangeCounts(
                raw=buffer.raw,
                accepted=buffer.accepted,
                duplicates=buffer.duplicates,
                dead_lettered=dict(buffer.dead_lettered),
                identifiable=dict(buffer.identifiable_by_class),
                facts=buffer.fact_rows,
                bytes_written=0,
            ),
            watermark=watermark,
            consent_changes=buffer.consent_changes,
        )


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def _hour_epoch(moment: datetime) -> int:
    seconds = int(moment.timestamp())
    return seconds - seconds % 3600


def _date_of(relative_path: str) -> str:
    # facts/date=YYYY-MM-DD/<stem>.parquet
    return relative_path.split("/")[1].removeprefix("date=")


def _day_floor(epoch_seconds: int) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m-%d")
