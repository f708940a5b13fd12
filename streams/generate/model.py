"""The traffic model: a deterministic stream of raw records and the exact truth about it.

Pure: everything comes from ``TrafficConfig`` (a seed, a period, shares); no clock reads,
no I/O, one ``random.Random`` consumed in a fixed order, so the same config yields the
same bytes on every machine and every run.

How a stream is made
  1. *Plan*: draw units of activity (console sessions, API bursts, payments) for
     Zipf-weighted accounts at diurnally weighted start times, each with its exact event
     count, until the planned events add up to exactly the valid-event budget. A unit's
     account registers just before its first unit, and a churning account is disabled or
     terminated after its last one, so lifecycle is consistent.
  2. *Emit*: activate units in time order and merge their events through a heap, so valid
     events come out in non-decreasing ``occurred_at`` order except the late ones.

Rules of the three kinds of trouble (all counted in :class:`GroundTruth`)
  - Duplicates: exactly ``round(count * duplicate_share)`` valid events are sent again
    with identical key and bytes, 1 to 8 records after the original (a producer retry).
  - Malformed: exactly ``round(count * malformed_share)`` records break one rule each
    (:mod:`streams.generate.malformed`), spread uniformly over the stream.
  - Late: each valid event is held back with probability ``late_share`` (when the stream
    will get far enough) and released right after the first in-order event whose
    ``occurred_at`` is at least its own plus a delay drawn from [MIN_LATENESS,
    MAX_LATENESS]. So when a late event is emitted, the stream position (latest
    ``occurred_at`` emitted so far) is at least MIN_LATENESS past it: well beyond a one
    hour grace period. The late count is therefore approximate in share, exact in truth.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from schemas.events import Event, EventBase, encode
from streams.errors import ConfigurationError
from streams.generate import activity
from streams.generate.malformed import corrupt
from streams.generate.population import Account, account_cum_weights, make_accounts
from streams.generate.records import (
    TYPE_TAG_OF,
    GeneratedRecord,
    GroundTruth,
    MalformedReason,
    RecordKind,
)

MIN_LATENESS: Final = timedelta(hours=1)
MAX_LATENESS: Final = timedelta(hours=6)
# A duplicate follows its original within this many records (a retry after a lost ack).
MAX_DUPLICATE_DISTANCE: Final = 8
_MAX_SHARE: Final = 0.5

_SESSION, _API, _PAYMENT = 0, 1, 2
# Shares of units: console sessions dominate; payments are rare provider callbacks.
_UNIT_CUM: Final = (0.80, 0.985, 1.0)

_US_PER_S: Final = 1_000_000
_END_OF_TIME_US: Final = 1 << 62  # past any event (year 148,000)


@dataclass(frozen=True, kw_only=True)
class TrafficConfig:
    """What to generate. ``count`` is the exact number of records of every kind together."""

    count: int
    start: datetime
    end: datetime
    user_agents: tuple[str, ...]
    seed: int = 1
    accounts: int = 200
    duplicate_share: float = 0.01
    late_share: float = 0.01
    malformed_share: float = 0.005

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ConfigurationError(f"count must be >= 0, not {self.count}")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ConfigurationError("start and end must be timezone-aware")
        if self.end <= self.start:
            raise ConfigurationError(f"end ({self.end}) must be after start ({self.start})")
        if self.accounts < 1:
            raise ConfigurationError(f"accounts must be >= 1, not {self.accounts}")
        if not self.user_agents:
            raise ConfigurationError("at least one user agent is needed")
        for name in ("duplicate_share", "late_share", "malformed_share"):
            share = getattr(self, name)
            if not 0 <= share <= _MAX_SHARE:
                raise ConfigurationError(f"{name} must be within [0, {_MAX_SHARE}], not {share}")

    def budget(self) -> tuple[int, int, int]:
        """(valid events, duplicates, malformed): exact, summing to ``count``.

        Duplicates are capped at the number of valid events (each one repeats one event).
        """
        malformed = round(self.count * self.malformed_share)
        rest = self.count - malformed
        duplicates = min(round(self.count * self.duplicate_share), rest // 2)
        return rest - duplicates, duplicates, malformed


@dataclass(slots=True, order=True)
class _Unit:
    """One planned unit of activity. Ordered by its first event's time, then draw order."""

    earliest_us: int
    seq: int
    start_us: int = field(compare=False)
    kind: int = field(compare=False)
    account: int = field(compare=False)
    size: int = field(compare=False)  # body events (session) or calls (API burst)
    logout: bool = field(compare=False)
    first_of_account: bool = field(compare=False, default=False)
    last_of_account: bool = field(compare=False, default=False)


class TrafficModel:
    """Iterate to get the records; :attr:`truth` is complete once iteration ends.

    Iterating twice gives the same records (each iteration starts from the seed).
    """

    def __init__(self, config: TrafficConfig) -> None:
        self.config = config
        self.truth = GroundTruth()

    def __iter__(self) -> Iterator[GeneratedRecord]:
        self.truth = GroundTruth()
        return _Run(self.config, self.truth).records()


class _Run:
    """One pass over the model: the plan, then the merge. Holds all mutable state."""

    def __init__(self, config: TrafficConfig, truth: GroundTruth) -> None:
        self.cfg = config
        self.truth = truth
        self.rng = random.Random(config.seed)
        self.start_us = activity.to_us(config.start)
        self.end_us = activity.to_us(config.end)
        self.n_events, self.n_duplicates, self.n_malformed = config.budget()
        self.accounts = make_accounts(self.rng, config.accounts, config.user_agents)
        self.account_cum = account_cum_weights(config.accounts)

    # --- plan --------------------------------------------------------------------------

    def _start_time(self, account: Account, flatness: float) -> int:
        """A start in the period, thinned by the account's local working day."""
        rng, span = self.rng, self.end_us - self.start_us
        while True:
            t = self.start_us + int(rng.random() * span)
            weight = activity.diurnal_weight(t, account.country.utc_offset_minutes)
            if rng.random() < flatness + (1 - flatness) * weight:
                return t

    def _plan(self) -> list[_Unit]:
        rng = self.rng
        units: list[_Unit] = []
        seen: set[int] = set()
        remaining = self.n_events
        total_weight = self.account_cum[-1]
        while remaining > 0:
            a = bisect.bisect_left(self.account_cum, rng.random() * total_weight)
            a = min(a, len(self.accounts) - 1)
            r = rng.random()
            kind = _SESSION if r < _UNIT_CUM[0] else (_API if r < _UNIT_CUM[1] else _PAYMENT)
            if kind == _SESSION:
                size = int(rng.lognormvariate(2.0, 0.9))
                logout = rng.random() < activity.LOGOUT_SHARE
                cost = 1 + size + logout
            elif kind == _API:
                size, logout = 1 + int(rng.lognormvariate(1.3, 1.0)), False
                cost = size
            else:
                size, logout, cost = 0, False, 1
            lifecycle_cost = 0 if a in seen else 1 + len(self.accounts[a].churn)
            if cost + lifecycle_cost > remaining:
                # The last unit fills the budget exactly: an API burst of what is left.
                if lifecycle_cost > remaining:
                    if seen:
                        a, lifecycle_cost = min(seen), 0
                    else:
                        self.accounts[a].churn = ()
                        lifecycle_cost = 1
                kind, logout = _API, False
                size = cost = remaining - lifecycle_cost
            seen.add(a)
            remaining -= cost + lifecycle_cost
            flatness = 0.15 if kind == _SESSION else (0.7 if kind == _API else 1.0)
            t = self._start_time(self.accounts[a], flatness)
            units.append(_Unit(t, len(units), t, kind, a, size, logout))
        units.sort()
        first: dict[int, _Unit] = {}
        for unit in units:
            if unit.account not in first:
                first[unit.account] = unit
                unit.first_of_account = True
                # Registration comes shortly (up to two hours) before the first activity,
                # inside the period.
                room = min(7200 * _US_PER_S, unit.start_us - self.start_us)
                unit.earliest_us = unit.start_us - int(rng.random() * room)
        units.sort()
        last: dict[int, _Unit] = {}
        for unit in units:
            last[unit.account] = unit
        for unit in last.values():
            unit.last_of_account = True
        return units

    # --- activation ----------------------------------------------------------------------

    def _activate(self, unit: _Unit) -> list[tuple[int, Event]]:
        rng, account = self.rng, self.accounts[unit.account]
        events: list[tuple[int, Event]] = []
        if unit.first_of_account:
            self.truth.accounts += 1
            events.append(activity.lifecycle(rng, account, unit.earliest_us, "registered"))
        if unit.kind == _SESSION:
            j = bisect.bisect_left(
                account.user_cum_weights, rng.random() * account.user_cum_weights[-1]
            )
            user = account.users[min(j, len(account.users) - 1)]
            if not user.seen:
                user.seen = True
                self.truth.users += 1
            self.truth.sessions += 1
            events += activity.session(
                rng, account, user, unit.start_us, self.end_us, unit.size, unit.logout
            )
        elif unit.kind == _API:
            agent = self.cfg.user_agents[rng.randrange(len(self.cfg.user_agents))]
            events += activity.api_burst(rng, account, agent, unit.start_us, self.end_us, unit.size)
        else:
            events.append(activity.payment(rng, account, unit.start_us))
        if events:
            account.last_event_us = max(account.last_event_us, max(t for t, _ in events))
        if unit.last_of_account and account.churn:
            # Every unit of the account is active by now: its last event time is known.
            t = account.last_event_us
            for action in account.churn:
                t = min(self.end_us - 1, t + int(rng.uniform(60, 3 * 86_400) * _US_PER_S))
                events.append(activity.lifecycle(rng, account, t, action))
        return events

    # --- emission ----------------------------------------------------------------------

    def records(self) -> Iterator[GeneratedRecord]:
        if self.cfg.count == 0:
            return
        units = self._plan()
        # Every unit's first event is emitted in order, so the position reaches this.
        horizon_us = units[-1].earliest_us
        min_late = int(MIN_LATENESS.total_seconds() * _US_PER_S)
        max_late = int(MAX_LATENESS.total_seconds() * _US_PER_S)
        draw, late_share = self.rng.random, self.cfg.late_share
        tick = itertools.count()
        pending: list[tuple[int, int, Event]] = []  # (occurred µs, tiebreak, event)
        held: list[tuple[int, int, Event]] = []  # late events: (release µs, tiebreak, event)
        emitter = _Emitter(self)
        valid, out = emitter.valid, emitter.out
        push, pop = heapq.heappush, heapq.heappop

        def drain(until_us: int) -> None:
            while pending and pending[0][0] <= until_us:
                t, _, event = pop(pending)
                if late_share and draw() < late_share:
                    release = t + min_late + int(draw() * (max_late - min_late))
                    if release <= horizon_us:
                        push(held, (release, next(tick), event))
                        continue
                valid(event, False)
                while held and held[0][0] <= t:
                    valid(pop(held)[2], True)

        # The emitter appends to ``out``; it is handed over after each unit's turn (plain
        # calls and a list: a chain of generators cost a resumption per level per record).
        for unit in units:
            drain(unit.earliest_us)
            if out:
                yield from out
                out.clear()
            for t, event in self._activate(unit):
                push(pending, (t, next(tick), event))
        drain(_END_OF_TIME_US)
        assert not held, "a late event was scheduled past the stream's horizon"
        emitter.finish()
        yield from out


# What the truth counts of a record: (kind, event class, malformed reason, late).
_Tally = tuple[RecordKind, type[EventBase] | None, MalformedReason | None, bool]


class _Emitter:
    """Turns valid events into records, weaving in duplicates and malformed records.

    Records are tallied by (kind, class, reason, late) as they are emitted and the tallies
    added to the truth at the end: one dict update per record instead of the truth's
    several, on a path taken 1.2 million times per demo.
    """

    def __init__(self, run: _Run) -> None:
        self.rng = run.rng
        self.truth = run.truth
        self.events_left = run.n_events
        self.duplicates_left = run.n_duplicates
        self.malformed_left = run.n_malformed
        # Non-duplicate slots still to fill: valid events plus malformed records.
        self.slots_left = run.n_events + run.n_malformed
        self.emitted = 0
        self.retries: list[tuple[int, int, GeneratedRecord, _Tally]] = []
        self.tick = itertools.count()
        self.template: Event | None = None
        self.out: list[GeneratedRecord] = []  # emitted, not yet handed to the caller
        self.tallies: dict[_Tally, int] = {}

    def _out(self, record: GeneratedRecord, tally: _Tally) -> None:
        tallies = self.tallies
        tallies[tally] = tallies.get(tally, 0) + 1
        self.out.append(record)
        self.emitted += 1
        while self.retries and self.retries[0][0] <= self.emitted:
            self._duplicate()

    def _duplicate(self) -> None:
        _, _, duplicate, tally = heapq.heappop(self.retries)
        self.tallies[tally] = self.tallies.get(tally, 0) + 1
        self.out.append(duplicate)
        self.emitted += 1

    def _malformed(self, template: Event) -> None:
        reason, value = corrupt(template, activity.new_event_id(self.rng), self.rng)
        self.malformed_left -= 1
        self.slots_left -= 1
        key = template.account_id.encode()
        record = GeneratedRecord(key, value, "malformed", None, reason)
        self._out(record, ("malformed", None, reason, False))

    def valid(self, event: Event, late: bool) -> None:
        """Emit ``event`` (``late``: released after its place), with what falls before it."""
        rng = self.rng
        self.template = event
        # Selection sampling: each slot is malformed with probability left/slots, which
        # places exactly the budgeted number uniformly over the stream.
        while self.malformed_left and rng.random() * self.slots_left < self.malformed_left:
            self._malformed(event)
        self.slots_left -= 1
        key, value = event.account_id.encode(), encode(event)
        if self.duplicates_left and rng.random() * self.events_left < self.duplicates_left:
            self.duplicates_left -= 1
            due = self.emitted + 1 + rng.randrange(MAX_DUPLICATE_DISTANCE)
            retry = GeneratedRecord(key, value, "duplicate", event, None, late)
            tally: _Tally = ("duplicate", type(event), None, late)
            heapq.heappush(self.retries, (due, next(self.tick), retry, tally))
        self.events_left -= 1
        self._out(
            GeneratedRecord(key, value, "event", event, None, late),
            ("event", type(event), None, late),
        )

    def finish(self) -> None:
        """Emit what is left and add the tallies to the truth."""
        assert self.template is not None
        while self.malformed_left:
            self._malformed(self.template)
        while self.retries:
            self._duplicate()
        for (kind, event_class, reason, late), n in self.tallies.items():
            name = reason if event_class is None else TYPE_TAG_OF[event_class]
            assert name is not None
            self.truth.add(kind, name, late=late, n=n)
        self.tallies.clear()
