"""One input partition's processing: the declared stages over each batch
(:mod:`streams.worker.stages`: decode, dedup, consent, enrichment, split), all or nothing,
then the buffer of the range.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from schemas import datasets
from schemas.bounds import DEFAULT_TIME_BOUNDS, TimeBounds
from schemas.commits import CommitMarker, OutputCounts, RangeCounts
from schemas.datasets import Dataset
from schemas.decode import Rejection
from streams.enrich.geo import GeoLocator, make_geolocator
from streams.enrich.referrer import ReferrerClassifier
from streams.enrich.useragent import UserAgentParser
from streams.privacy.keyring import Keyring
from streams.privacy.pseudonymize import event_keys
from streams.privacy.retention import RetentionPolicy, load_policy
from streams.settings import Settings
from streams.worker.deadletter import PROCESSING_ERROR, DeadLetter, dead_letter
from streams.worker.dedup import Deduplicator
from streams.worker.stages import DECODE, STAGES, Outcome, Step, decode
from streams.worker.state.consent import ConsentTracker
from streams.worker.state.folder import StateFolder
from streams.worker.state.range_log import RangeLog, delete_log, is_log_path
from streams.worker.state.recovery import recover_store
from streams.worker.state.store import AppliedRange, PartitionStore, StoreUpdate

logger = logging.getLogger(__name__)

# aiokafka's ConsumerRecord.timestamp_type: 0 = CreateTime (the producer's clock).
CREATE_TIME = 0


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
    @property
    def timestamp_type(self) -> int: ...  # 0: CreateTime (producer), 1: LogAppendTime (broker)


@dataclass(frozen=True)
class RawRecord:
    """One raw-topic record as plain data (tests, benchmarks, replays of stored records)."""

    offset: int
    timestamp: int
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_type: int = 1  # LogAppendTime, as on the raw topic Sieve creates


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
    # Where partition state (dedup keys, consent) lives on local disk; a temporary folder
    # by default (tests, benchmarks): it is rebuilt from the committed ranges when lost.
    state: StateFolder = field(default_factory=StateFolder)
    # The referrer classes of the facts (streams.enrich.referrer); the service's own hosts
    # make a referrer "internal".
    referrers: ReferrerClassifier = field(default_factory=ReferrerClassifier)

    @classmethod
    def from_settings(
        cls, settings: Settings, keyring: Keyring, *, worker_version: str, state: StateFolder
    ) -> PipelineContext:
        """The context a worker runs with: the policy file, GeoIP database, consent signals,
        dedup horizon and time bounds of ``settings``, with the loaded ``keyring``.

        The one place a context is built from configuration (the worker, the benchmarks and
        the tests' default context), so a new stage's setting is read here once. ``state``:
        the worker's ``StateFolder(settings.state_folder)``; a temporary ``StateFolder()``
        for benchmarks and tests.
        """
        return cls(
            keyring=keyring,
            policy=load_policy(settings.policy_file),
            user_agents=UserAgentParser(),
            geolocator=make_geolocator(settings.geoip_database),
            honour_dnt=settings.honour_dnt,
            honour_gpc=settings.honour_gpc,
            dedup_horizon_seconds=int(settings.dedup_horizon.total_seconds()),
            worker_version=worker_version,
            time_bounds=TimeBounds(
                max_ahead=settings.event_max_ahead,
                max_behind=settings.event_max_behind,
                backfill_max_behind=settings.backfill_max_behind,
            ),
            state=state,
            referrers=ReferrerClassifier(settings.internal_referrer_hosts),
        )


@dataclass(frozen=True)
class PendingRange:
    """A buffered offset range ready to be written and committed."""

    first_offset: int
    last_offset: int
    # Every declared dataset's rows (schemas.datasets.WORKER_DATASETS), by dataset name.
    tables: Mapping[str, pa.Table]
    counts: RangeCounts
    watermark: str | None
    consent_changes: list[tuple[str, str]]
    # The range's accepted event keys with their arrivals, written next to its outputs.
    dedup_log: RangeLog | None = None


@dataclass
class _Buffer:
    first_offset: int | None = None
    last_offset: int | None = None
    # By dataset name, every declared one: the tables the batches' split built.
    tables: dict[str, list[pa.Table]] = field(
        default_factory=lambda: {dataset.name: [] for dataset in datasets.WORKER_DATASETS}
    )
    raw: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    arrow_bytes: int = 0  # of the tables above: what the buffer holds in memory
    properties_dropped: int = 0
    consent_changes: list[tuple[str, str]] = field(default_factory=list)


class _StageFailed(Exception):
    """A pipeline stage raised on a batch; ``stage`` names it for the dead letter."""

    def __init__(self, stage: str, error: Exception) -> None:
        super().__init__(stage)
        self.stage = stage
        self.error = error


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
        # Opened by restore (a pipeline that is never restored starts from nothing).
        self._dedup: Deduplicator | None = None
        self._consent: ConsentTracker | None = None
        self._watermark: int | None = None  # the largest accepted event hour (epoch s)
        self._closed = False
        self._filesystem: pafs.FileSystem | None = None  # the data root (restore sets it)
        self._root = ""
        self._buffer = _Buffer()
        # Set while a batch's outcome is applied; stays set if that fails half way.
        self.broken = False

    # --- recovery ------------------------------------------------------------------------
    def restore(
        self, filesystem: pafs.FileSystem, root: str, markers: Sequence[CommitMarker]
    ) -> None:
        """Bring dedup and consent state to what the partition's committed ranges imply.

        The partition's store in the local state folder is reopened and caught up from the
        ranges committed since it was last written, or rebuilt (streams.worker.state.recovery).
        """
        context = self._context
        store = context.state.open(
            self.topic,
            self.partition,
            identity=f"{type(filesystem).__name__}:{root}",
            horizon_ms=context.dedup_horizon_seconds * 1000,
        )
        outcome = recover_store(store, filesystem, root, markers)
        self._filesystem, self._root = filesystem, root
        keyring = context.keyring
        self._dedup = Deduplicator(
            store,
            keyring.pseudonymization_key_id,
            keys_under=lambda key_id, ids: event_keys(ids, keyring, key_id),
        )
        self._consent = ConsentTracker(store)
        watermark_text = next((m.watermark for m in reversed(markers) if m.watermark), None)
        if watermark_text is not None:
            self._watermark = int(datetime.fromisoformat(watermark_text).timestamp())
        logger.info("partition %s: state %s (%s)", self.partition, outcome, store.path)

    def _restored(self) -> tuple[Deduplicator, ConsentTracker]:
        if self._closed:
            raise RuntimeError(f"partition {self.partition}: the pipeline was closed")
        if self._dedup is None or self._consent is None:
            self.restore(pafs.LocalFileSystem(), f"(none)/{self.topic}", [])
        assert self._dedup is not None and self._consent is not None
        return self._dedup, self._consent

    def range_committed(self, pending: PendingRange, marker: CommitMarker) -> None:
        """Called once ``pending``'s commit marker exists: its keys go into the store."""
        dedup, consent = self._restored()
        log = pending.dedup_log
        if log is not None:
            path = next((path for path in marker.files if is_log_path(path)), "")
            dedup.store.apply(
                StoreUpdate(
                    first_offset=pending.first_offset,
                    applied=AppliedRange(pending.last_offset, path, log.arrival_max),
                    key_id=log.key_id,
                    event_keys=log.event_keys,
                    arrivals=log.arrivals,
                    consent_changes=pending.consent_changes,
                )
            )
            if log.arrival_max is not None:
                self._delete_expired_logs(dedup.store, log.arrival_max - dedup.horizon_ms)
        dedup.applied()
        consent.applied()

    def _delete_expired_logs(self, store: PartitionStore, floor_ms: int) -> None:
        # Only a rebuild reads logs, and only those within the horizon of the last range:
        # older ones go (files first, then their entries: a crash in between retries).
        expired = store.expired_logs(floor_ms)
        if expired and self._filesystem is not None:
            for _, path in expired:
                delete_log(self._filesystem, self._root, path)
            store.forget_logs([entry for entry, _ in expired])

    def close(self) -> None:
        """Release the partition's store (another worker process may open it next); its
        dedup filters are saved, so whoever opens it next need not rebuild them. Closing
        again does nothing (the store may belong to the partition's next pipeline by then)."""
        if self._closed:
            return
        if self._dedup is not None:
            self._dedup.save_filters()
        self._context.state.close_partition(self.topic, self.partition)
        self._dedup = self._consent = None
        self._closed = True

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
        dedup, consent = self._restored()
        self._notice_clock(records[0])
        try:
            outcome = self._decide(records, dedup, consent, Outcome())
        except _StageFailed as failure:
            outcome = self._bisect(records, dedup, consent, Outcome(), failure)
        self.broken = True  # until the outcome is applied whole
        self._apply(records, outcome)
        self.broken = False
        return outcome.letters

    def _decide(
        self,
        records: Sequence[KafkaRecord],
        dedup: Deduplicator,
        consent: ConsentTracker,
        before: Outcome,
    ) -> Outcome:
        """The outcome of ``records`` after ``before`` (the parts of the same batch decided
        earlier, not yet recorded); changes nothing. Raises :class:`_StageFailed`."""
        outcome = Outcome()
        step = Step(self._context, self.partition, dedup, consent, before, outcome, self._letter)
        stage = DECODE
        try:
            batch = decode(records, step)
            for name, run in STAGES:
                if not batch:
                    break
                stage = name  # the stage a raise is blamed on
                batch = run(batch, step)
            return outcome
        except MemoryError:
            raise  # the process, not a record: stop the worker with nothing committed
        except Exception as error:
            raise _StageFailed(stage, error) from error

    def _isolate(
        self,
        records: Sequence[KafkaRecord],
        dedup: Deduplicator,
        consent: ConsentTracker,
        before: Outcome,
    ) -> Outcome:
        """``before`` (the parts of the batch decided so far) followed by ``records``."""
        try:
            part = self._decide(records, dedup, consent, before)
        except _StageFailed as failure:
            return self._bisect(records, dedup, consent, before, failure)
        return before.then(part)

    def _bisect(
        self,
        records: Sequence[KafkaRecord],
        dedup: Deduplicator,
        consent: ConsentTracker,
        before: Outcome,
        failure: _StageFailed,
    ) -> Outcome:
        """``records`` made a stage raise: decide each half after the one before it, down
        to the single records that raise, which are dead-lettered. Depth: log2(batch)."""
        if len(records) > 1:
            middle = len(records) // 2
            first = self._isolate(records[:middle], dedup, consent, before)
            return self._isolate(records[middle:], dedup, consent, first)
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
        part = Outcome()
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

    def _apply(self, records: Sequence[KafkaRecord], outcome: Outcome) -> None:
        dedup, consent = self._restored()
        if outcome.pending is not None:
            dedup.record(outcome.pending)
        consent.record(outcome.consent_changes)
        if outcome.watermark is not None:
            self._watermark = max(self._watermark or outcome.watermark, outcome.watermark)
        buffer = self._buffer
        if buffer.first_offset is None:
            buffer.first_offset = records[0].offset
        buffer.last_offset = records[-1].offset
        buffer.raw += len(records)
        buffer.accepted += outcome.accepted
        buffer.duplicates += outcome.duplicates
        buffer.dead_lettered.update(outcome.dead_lettered)
        for tables in outcome.tables:
            for name, table in tables.items():
                buffer.tables[name].append(table)
                buffer.arrow_bytes += table.nbytes
        buffer.properties_dropped += outcome.properties_dropped
        buffer.consent_changes.extend(outcome.consent_changes)
        self.next_offset = records[-1].offset + 1

    @property
    def buffered_records(self) -> int:
        return self._buffer.raw

    @property
    def buffered_rows(self) -> int:
        """The accepted events buffered (what ``roll_max_records`` counts): one fact row
        each, whereas an event may make two identifiable records."""
        return self._buffer.accepted

    @property
    def buffered_bytes(self) -> int:
        """The Arrow bytes of the buffered outputs (a range's memory, not its file size)."""
        return self._buffer.arrow_bytes

    def take_range(self) -> PendingRange | None:
        """Hand over the buffered range (and start a new buffer); None when empty, and
        always None once the pipeline is ``broken`` (its buffer may hold half a batch)."""
        buffer = self._buffer
        if self.broken or buffer.first_offset is None or buffer.last_offset is None:
            return None
        self._buffer = _Buffer()
        dedup, consent = self._restored()
        consent.seal()
        watermark = (
            datetime.fromtimestamp(self._watermark, tz=UTC).isoformat()
            if self._watermark is not None
            else None
        )
        declared = datasets.WORKER_DATASETS
        tables = {d.name: _concat(buffer.tables[d.name], d.schema) for d in declared}
        return PendingRange(
            first_offset=buffer.first_offset,
            last_offset=buffer.last_offset,
            tables=tables,
            counts=RangeCounts(
                raw=buffer.raw,
                accepted=buffer.accepted,
                duplicates=buffer.duplicates,
                dead_lettered=dict(buffer.dead_lettered),
                outputs={d.name: _output_counts(d, tables[d.name]) for d in declared},
                bytes_written=0,
                properties_dropped=buffer.properties_dropped,
            ),
            watermark=watermark,
            consent_changes=buffer.consent_changes,
            dedup_log=dedup.seal(),
        )

    def _notice_clock(self, record: KafkaRecord) -> None:
        if getattr(record, "timestamp_type", None) != CREATE_TIME:
            return
        if self._context.state.notice_once(f"create-time:{self.topic}"):
            logger.warning(
                "topic %s stamps records with the producers' clocks (CreateTime), not the"
                " broker's (LogAppendTime, what `sieve topics` creates): dedup measures arrival"
                " with them, so a producer whose clock runs ahead makes earlier keys look"
                " older than they are, and their resends within the horizon pass as new;"
                " a clock behind changes nothing (arrival never goes back). Recreate the topic"
                " with message.timestamp.type=LogAppendTime for exact dedup.",
                self.topic,
            )


def _output_counts(dataset: Dataset, table: pa.Table) -> OutputCounts:
    if dataset.count_by is None or not table.num_rows:
        return OutputCounts(table.num_rows)
    counted = pc.value_counts(table[dataset.count_by])  # in order of first appearance
    values, counts = counted.field("values").to_pylist(), counted.field("counts").to_pylist()
    return OutputCounts(table.num_rows, dict(zip(values, counts, strict=True)))


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)
