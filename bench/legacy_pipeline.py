"""The worker's batch decision as it was before the stages (main at 1b3d62c), kept to
measure and check the stages against: ``bench.pipeline_stages`` times both in one process,
and ``tests/unit/test_stages_identical.py`` holds their outputs equal.

It decodes record by record (``schemas.decode.decode_batch``), builds every column from the
events inside the split, replays consent event by event and resolves countries per event.
Only ``_decide`` differs from :class:`~streams.worker.pipeline.PartitionPipeline`: recovery,
bisection, the buffer and ranges are the same code, and so are the functions it calls
(``decode_batch``, ``split`` and the rest, as they are now, some faster than they were),
except the country lookup, which forgets addresses between batches as it used to. Its
facts' ``referrer_class`` is null (it had none). Custom events go through the same
``split`` (streams.privacy.custom_split), and their dropped properties into the same counts.
Delete this module with the comparison
once nobody needs the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from schemas.bounds import is_backfill
from schemas.decode import decode_batch
from schemas.events import Event
from streams.enrich.geo import UNKNOWN_COUNTRY, GeoLocator, resolve_countries
from streams.privacy.consent import batch_consent_keys, decide
from streams.privacy.pseudonymize import event_keys
from streams.privacy.split import Enrichment, split
from streams.worker.dedup import Deduplicator
from streams.worker.pipeline import KafkaRecord, PartitionPipeline, _StageFailed
from streams.worker.stages import Outcome
from streams.worker.state.consent import ConsentTracker


class _ForgetfulLocator:
    """The locator as it was: one lookup per distinct address of each call, none
    remembered across batches (today's locators remember them)."""

    def __init__(self, locator: GeoLocator) -> None:
        self._locator = locator

    def country_of(self, ip: str) -> str | None:
        return self._locator.country_of(ip)

    def countries(self, ips: Sequence[str | None]) -> list[str]:
        distinct = {
            ip: (self.country_of(ip) if ip else None) or UNKNOWN_COUNTRY
            for ip in dict.fromkeys(ips)
        }
        return [distinct[ip] for ip in ips]


class LegacyPartitionPipeline(PartitionPipeline):
    """A partition pipeline deciding batches the way the worker did before the stages."""

    def _decide(
        self,
        records: Sequence[KafkaRecord],
        dedup: Deduplicator,
        consent: ConsentTracker,
        before: Outcome,
    ) -> Outcome:
        """The outcome of ``records`` after ``before`` (the parts of the same batch decided
        earlier, not yet recorded); changes nothing. Raises :class:`_StageFailed`."""
        stage = "decode"
        try:
            outcome = Outcome()
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
            event_ids = [e.event_id for e in events]
            keys = event_keys(event_ids, self._context.keyring)
            arrivals = [records[i].timestamp for i in positions]
            if before.accepted_keys:  # a later part of a bisected batch: decided after it
                fresh, outcome.pending = dedup.check(
                    before.accepted_keys + keys,
                    before.accepted_arrivals + arrivals,
                    before.accepted_ids + event_ids,
                )
                fresh = fresh[len(before.accepted_keys) :]
            else:
                fresh, outcome.pending = dedup.check(keys, arrivals, event_ids)
            chosen = [i for i, ok in enumerate(fresh) if ok]
            outcome.duplicates = len(fresh) - len(chosen)
            if not chosen:
                return outcome
            events = [events[i] for i in chosen]
            keys = [keys[i] for i in chosen]
            outcome.accepted_keys = keys
            outcome.accepted_arrivals = [arrivals[i] for i in chosen]
            outcome.accepted_ids = [event_ids[i] for i in chosen]
            outcome.watermark = _hour_epoch(max(e.occurred_at for e in events))
            records_kept = [records[positions[i]] for i in chosen]

            stage = "consent"
            person_keys, account_keys = batch_consent_keys(events, self._context.keyring)
            keep, _, outcome.consent_changes = decide(
                events,
                person_keys=person_keys,
                account_keys=account_keys,
                state=consent.state_for(person_keys, account_keys, before.consent_changes),
                honour_dnt=self._context.honour_dnt,
                honour_gpc=self._context.honour_gpc,
            )
            stage = "user_agent"
            user_agents = self._context.user_agents.parse_many([e.user_agent for e in events])
            stage = "geo"
            countries = resolve_countries(
                [e.geo.country if e.geo else None for e in events],
                [e.ip for e in events],
                _ForgetfulLocator(self._context.geolocator),
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
            outcome.tables.append(result.tables)
            outcome.properties_dropped = result.properties_dropped
            return outcome
        except MemoryError:
            raise  # the process, not a record: stop the worker with nothing committed
        except Exception as error:
            raise _StageFailed(stage, error) from error


def _hour_epoch(moment: datetime) -> int:
    seconds = int(moment.timestamp())
    return seconds - seconds % 3600
