"""The worker's transformation of one batch, as an ordered list of named stages.

Each stage is one function ``(batch, step) -> batch``: it reads the batch's columns, adds
its own or narrows the batch, and writes what it decides (dead letters, duplicates, consent
changes, the output tables) into ``step.outcome``. :data:`STAGES` is the order; a new
stage is a function here (or in its own module) and one line there. A stage that raises
on a batch is named in the dead letters of the records that make it raise (the pipeline
bisects the batch to find them), so a stage's name is part of the output: rename none.

Nothing here changes state: dedup and consent are checked against the store and the parts
of the batch decided before (``step.before``); the pipeline records the outcome once the
whole batch is decided. Determinism under replay follows: every value a stage computes
comes from the records, the committed state and the context.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from schemas.bounds import is_backfill
from schemas.columnar_decode import TYPE_CODES, decode_columns
from schemas.decode import Rejection
from schemas.events import AccountLifecycle, ConsentChange, Event, PageView, Request
from streams.enrich.geo import is_country
from streams.privacy.consent import ConsentStatus, StateChange
from streams.privacy.pseudonymize import consent_keys, event_keys
from streams.privacy.split import (
    DIMENSIONS,
    GEO_FIELDS,
    SplitColumns,
    geolocation,
    group_rows,
    split_columns,
)
from streams.worker.batch import Batch
from streams.worker.deadletter import DeadLetter
from streams.worker.dedup import Deduplicator, PendingKeys
from streams.worker.state.consent import ConsentTracker

if TYPE_CHECKING:
    from streams.worker.pipeline import KafkaRecord, PipelineContext

_US_PER_S: Final = 1_000_000
_SECONDS_PER_HOUR: Final = 3600
_REFERRER_TYPE_CODES: Final = pa.array([TYPE_CODES[Request], TYPE_CODES[PageView]], pa.int8())
# The types whose events change consent state (streams.privacy.consent._status_of).
_CONSENT_TYPE_CODES: Final = pa.array(
    [TYPE_CODES[ConsentChange], TYPE_CODES[AccountLifecycle]], pa.int8()
)


@dataclass
class Outcome:
    """What (part of) one batch decided; applied to the pipeline only once complete."""

    letters: list[DeadLetter] = field(default_factory=list)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    accepted: int = 0
    # Each split's tables by dataset name (streams.privacy.split.SplitResult.tables).
    tables: list[Mapping[str, pa.Table]] = field(default_factory=list)
    properties_dropped: int = 0  # of custom events, kept nowhere (SplitResult)
    # Consent changes in order: a later part decides with them applied after the store's.
    consent_changes: list[StateChange] = field(default_factory=list)
    # The dedup decisions of every accepted event so far (check() covers the whole prefix).
    pending: PendingKeys | None = None
    accepted_keys: list[str] = field(default_factory=list)
    accepted_arrivals: list[int] = field(default_factory=list)
    accepted_ids: list[str] = field(default_factory=list)
    watermark: int | None = None  # the largest accepted event hour (epoch s)

    def reject(self, code: str, letter: DeadLetter) -> None:
        self.dead_lettered[code] += 1
        self.letters.append(letter)

    def then(self, later: Outcome) -> Outcome:
        """This outcome followed by ``later`` (decided after it)."""
        marks = [m for m in (self.watermark, later.watermark) if m is not None]
        return Outcome(
            letters=self.letters + later.letters,
            dead_lettered=self.dead_lettered + later.dead_lettered,
            duplicates=self.duplicates + later.duplicates,
            accepted=self.accepted + later.accepted,
            tables=self.tables + later.tables,
            properties_dropped=self.properties_dropped + later.properties_dropped,
            consent_changes=self.consent_changes + later.consent_changes,
            pending=later.pending if later.pending is not None else self.pending,
            accepted_keys=self.accepted_keys + later.accepted_keys,
            accepted_arrivals=self.accepted_arrivals + later.accepted_arrivals,
            accepted_ids=self.accepted_ids + later.accepted_ids,
            watermark=max(marks) if marks else None,
        )


@dataclass(frozen=True)
class Step:
    """What the stages of one (part of a) batch share: the context, the state to check
    against, the earlier parts' outcome, and the outcome they write."""

    context: PipelineContext
    partition: int
    dedup: Deduplicator
    consent: ConsentTracker
    before: Outcome  # the parts of the same batch decided earlier, not yet recorded
    outcome: Outcome
    letter: Callable[[Rejection, KafkaRecord], DeadLetter]


Stage = Callable[[Batch, Step], Batch]


def decode(records: Sequence[KafkaRecord], step: Step) -> Batch:
    """The first stage: raw records to a batch of valid events; the rest dead-lettered."""
    decoded = decode_columns(
        [r.value for r in records],
        received_at_ms=[r.timestamp for r in records],
        backfill=[is_backfill(r.headers) for r in records],
        bounds=step.context.time_bounds,
    )
    for rejection in decoded.rejections:
        step.outcome.reject(rejection.code, step.letter(rejection, records[rejection.index]))
    return Batch(
        records=[records[i] for i in decoded.positions],
        events=decoded.events,
        type_codes=decoded.type_codes,
        columns=decoded.columns,
    )


def deduplicate(batch: Batch, step: Step) -> Batch:
    """Drop events seen before (in the store, or earlier in the batch); ``event_key``."""
    outcome, before = step.outcome, step.before
    event_ids = [event.event_id for event in batch.events]
    keys = event_keys(event_ids, step.context.keyring)
    arrivals = [record.timestamp for record in batch.records]
    if before.accepted_keys:  # a later part of a bisected batch: decided after it
        fresh, outcome.pending = step.dedup.check(
            before.accepted_keys + keys,
            before.accepted_arrivals + arrivals,
            before.accepted_ids + event_ids,
        )
        fresh = fresh[len(before.accepted_keys) :]
    else:
        fresh, outcome.pending = step.dedup.check(keys, arrivals, event_ids)
    batch = batch.with_columns(event_key=pa.array(keys, pa.string())).select(fresh)
    outcome.duplicates = len(fresh) - len(batch)
    if batch:
        outcome.accepted_keys = list(compress(keys, fresh))
        outcome.accepted_arrivals = list(compress(arrivals, fresh))
        outcome.accepted_ids = list(compress(event_ids, fresh))
        latest_s = pc.max(batch["occurred_at"].cast(pa.int64())).as_py() // _US_PER_S
        outcome.watermark = latest_s - latest_s % _SECONDS_PER_HOUR
    return batch


def consent(batch: Batch, step: Step) -> Batch:
    """``keep_identifiable``: consent allows identifiable records of the event.

    What :func:`streams.privacy.consent.decide` decides replaying the batch in order, a
    column at a time: keys are hashed once per distinct person and account, and an event's
    state is the last change of its key at or before it, else the state before the batch.
    """
    context, outcome = step.context, step.outcome
    accounts, users = batch["account_id"], batch["user_id"]
    person_group, first_of_person = group_rows(accounts, users)
    person_keys = pa.array(
        consent_keys(
            accounts.take(first_of_person).to_pylist(),
            users.take(first_of_person).to_pylist(),
            context.keyring,
        ),
        pa.string(),
    )
    account_group, first_of_account = group_rows(accounts)
    distinct_accounts = accounts.take(first_of_account).to_pylist()
    account_keys = pa.array(
        consent_keys(distinct_accounts, [None] * len(distinct_accounts), context.keyring),
        pa.string(),
    )
    state = step.consent.state_for(
        person_keys.to_pylist(), account_keys.to_pylist(), step.before.consent_changes
    )
    signals = pc.or_(
        _honoured(batch["dnt"], context.honour_dnt), _honoured(batch["gpc"], context.honour_gpc)
    )
    changes = pc.is_in(batch.type_codes, value_set=_CONSENT_TYPE_CODES)
    if not state.opted_out and not state.ended and not pc.any(changes).as_py():
        return batch.with_columns(keep_identifiable=pc.invert(signals))
    person_of_event = person_keys.take(person_group)
    account_of_event = account_keys.take(account_group)
    change_rows = pc.indices_nonzero(changes).to_numpy()
    statuses = [_status_of(batch.events[i]) for i in change_rows.tolist()]
    outcome.consent_changes = list(
        zip(person_of_event.take(change_rows).to_pylist(), statuses, strict=True)
    )
    # Each event's person and account as a code among the keys the batch changes (-1: none).
    changed = pc.unique(person_of_event.take(change_rows))
    codes = [
        (keys, pc.index_in(keys, value_set=changed).fill_null(-1).to_numpy())
        for keys in (person_of_event, account_of_event)
    ]
    restricted = signals
    for family, initial in ((_CHOICES, state.opted_out), (_LIFECYCLE, state.ended)):
        timeline = _Timeline.of(outcome.consent_changes, changed, change_rows, family, len(batch))
        earlier = pa.array(sorted(initial), pa.string())
        for keys, key_codes in codes:
            before = pc.is_in(keys, value_set=earlier)
            restricted = pc.or_(restricted, timeline.restricts(key_codes, before))
    return batch.with_columns(keep_identifiable=pc.invert(restricted))


# What each consent status sets (True: restricts collection) in its family of state.
_CHOICES: Final = {"opt_out": True, "opt_in": False}
_LIFECYCLE: Final = {"disabled": True, "terminated": True, "registered": False}


def _status_of(event: Event) -> ConsentStatus:
    if isinstance(event, ConsentChange):
        return event.choice
    if isinstance(event, AccountLifecycle):
        return event.action
    raise TypeError(f"a {type(event).__name__} changes no consent")


@dataclass(frozen=True)
class _Timeline:
    """The changes of one family of consent state in a batch, ordered by key then row, so
    that each event finds the last change of its key at or before it (an event is decided
    after its own change) with one binary search: what
    :func:`streams.privacy.consent.decide` computes by replaying the batch in order."""

    order: npt.NDArray[np.int64]  # key code * rows + row, sorted
    restricts_after: npt.NDArray[np.bool_]  # aligned with order
    rows: int

    @staticmethod
    def of(
        changes: Sequence[tuple[str, str]],
        changed: pa.Array,
        change_rows: npt.NDArray[np.int64],
        family: Mapping[str, bool],
        rows: int,
    ) -> _Timeline:
        """``changes`` (key, status) made at ``change_rows``; keys coded by ``changed``."""
        kept = [i for i, (_, status) in enumerate(changes) if status in family]
        keys = pa.array([changes[i][0] for i in kept], pa.string())
        codes = pc.index_in(keys, value_set=changed).to_numpy(zero_copy_only=False)
        order = codes.astype(np.int64) * rows + change_rows[kept]
        sort = np.argsort(order, kind="stable")
        values = np.array([family[changes[i][1]] for i in kept], dtype=np.bool_)
        return _Timeline(order[sort], values[sort], rows)

    def restricts(self, codes: npt.NDArray[np.int64], before: pa.Array) -> pa.Array:
        """Whether each row's key (its code, -1: unchanged) is restricted in this family
        after the changes up to the row; ``before``: restricted before the batch."""
        if not len(self.order):
            return before
        query = codes.astype(np.int64) * self.rows + np.arange(len(codes))
        last = np.maximum(np.searchsorted(self.order, query, side="right") - 1, 0)
        found = (
            (codes >= 0) & (self.order[last] <= query) & (self.order[last] // self.rows == codes)
        )
        return pc.if_else(pa.array(found), pa.array(self.restricts_after[last]), before)


def _honoured(signal: pa.Array, honour: bool) -> pa.Array:
    if not honour:
        return pa.repeat(pa.scalar(False), len(signal))
    return signal


def user_agents(batch: Batch, step: Step) -> Batch:
    """``device_class``, ``browser_family``, ``os_family``, ``is_bot``: parsed once per
    distinct user agent (the parser remembers them across batches)."""
    distinct = batch["user_agent"].dictionary_encode(null_encoding="encode")
    infos = step.context.user_agents.parse_many(distinct.dictionary.to_pylist())
    return batch.with_columns(
        device_class=pa.array([i.device_class for i in infos], pa.string()).take(distinct.indices),
        browser_family=pa.array([i.browser_family for i in infos], pa.string()).take(
            distinct.indices
        ),
        os_family=pa.array([i.os_family for i in infos], pa.string()).take(distinct.indices),
        is_bot=pa.array([i.is_bot for i in infos], pa.bool_()).take(distinct.indices),
    )


def countries(batch: Batch, step: Step) -> Batch:
    """``geo_*`` (the client's geolocation) and ``country``: the client's country where it
    states a valid one, else its IP address's (streams.enrich.geo.resolve_countries, done
    once per distinct client country and per distinct address)."""
    geo = geolocation([event.geo for event in batch.events])
    ips = batch["ip"].dictionary_encode(null_encoding="encode")
    of_ip = pa.array(
        step.context.geolocator.countries(ips.dictionary.to_pylist()), pa.string()
    ).take(ips.indices)
    stated = geo["country"].dictionary_encode()  # null where the client stated none
    valid = pa.array([is_country(code) for code in stated.dictionary.to_pylist()], pa.bool_()).take(
        stated.indices
    )
    return batch.with_columns(
        country=pc.if_else(valid.fill_null(False), geo["country"], of_ip),
        **{f"geo_{name}": column for name, column in geo.items()},
    )


def referrers(batch: Batch, step: Step) -> Batch:
    """``referrer_class`` of requests and page views (null for the other types)."""
    referrer = pa.array([getattr(event, "referrer", None) for event in batch.events], pa.string())
    return batch.with_columns(
        referrer_class=pc.if_else(
            pc.is_in(batch.type_codes, value_set=_REFERRER_TYPE_CODES),
            step.context.referrers.classify_column(referrer),
            pa.scalar(None, pa.string()),
        )
    )


def split(batch: Batch, step: Step) -> Batch:
    """Every declared dataset's table of the batch (streams.privacy.split)."""
    context, outcome = step.context, step.outcome
    result = split_columns(
        SplitColumns(
            events=batch.events,
            type_codes=batch.type_codes,
            event_ids=batch["event_id"],
            occurred=batch["occurred_at"],
            account_ids=batch["account_id"],
            user_ids=batch["user_id"],
            session_ids=batch["session_id"],
            ips=batch["ip"],
            user_agents=batch["user_agent"],
            geo={name: batch[f"geo_{name}"] for name in GEO_FIELDS},
            received_ms=pa.array([r.timestamp for r in batch.records], pa.int64()),
            offsets=pa.array([r.offset for r in batch.records], pa.int64()),
            event_keys=batch["event_key"],
            keep_identifiable=batch["keep_identifiable"],
            dimensions={name: batch[name] for name in DIMENSIONS},
        ),
        partition=step.partition,
        policy=context.policy,
        keyring=context.keyring,
    )
    outcome.accepted = len(batch)
    outcome.tables.append(result.tables)
    outcome.properties_dropped = result.properties_dropped
    return batch


# The name of the first stage, which makes the batch from the raw records (:func:`decode`).
DECODE: Final = "decode"
# Every later stage in order, by the name dead letters give when it raises. A stage that
# leaves the batch empty ends it (the stages after it have nothing to do).
STAGES: Final[tuple[tuple[str, Stage], ...]] = (
    ("dedup", deduplicate),
    ("consent", consent),
    ("user_agent", user_agents),
    ("geo", countries),
    ("referrer", referrers),
    ("split", split),
)
