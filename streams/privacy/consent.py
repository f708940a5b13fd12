"""Consent as a pure state machine: may Sieve keep identifiable records of this event?

Rules (the seed policy promises that after a person stops using the service "we will stop
collecting any personal information"; Sieve also honours DNT and GPC by default: README,
"DNT and GPC act per event"):

- a ``consent`` event with ``opt_out`` stops identifiable collection for that person
  (``user_id``) or, without a user, for the whole account; ``opt_in`` resumes it;
- an ``account`` lifecycle event ``disabled`` or ``terminated`` stops it for that user or,
  without a user, for every user of the account; ``registered`` resumes it;
- the choice and the lifecycle state are tracked apart, so re-registering does not undo an
  opt-out;
- an event carrying ``dnt`` / ``gpc`` gets no identifiable record when that signal is
  honoured.

State changes are ordered: each event is decided with the state after every earlier event
of the batch and after its own change (an opt-out request is itself not collected). The
state is keyed by pseudonymous consent keys (``pseudonymize.consent_keys``), never raw ids.

What "no identifiable record" means for classes the policy keeps anyway (billing, the
consent record itself) is the split's business: this module only answers "does consent
allow collection", so the rule lives in one place and the policy file decides exemptions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, get_args

from schemas.events import AccountLifecycle, ConsentChange, Event
from streams.privacy.keyring import Keyring
from streams.privacy.pseudonymize import consent_keys

ConsentStatus = Literal["opt_out", "opt_in", "registered", "disabled", "terminated"]
# One change of the state, as recorded in commit markers: (consent key, status).
StateChange = tuple[str, ConsentStatus]

_STATUSES: Final = frozenset(get_args(ConsentStatus))
_STOPS_CHOICE: Final = "opt_out"
_ENDS_LIFECYCLE: Final = frozenset({"disabled", "terminated"})


@dataclass(frozen=True, slots=True)
class ConsentState:
    """Which consent keys have opted out and which accounts or users have ended. Immutable."""

    opted_out: frozenset[str] = frozenset()
    # Disabled or terminated (lifecycle), tracked apart from the person's own choice.
    ended: frozenset[str] = frozenset()

    def allows(self, key: str) -> bool:
        """Consent allows identifiable collection for this key on its own."""
        return key not in self.opted_out and key not in self.ended

    def apply(self, event: Event, person_key: str) -> ConsentState:
        """The state after one event (unchanged unless it is a consent or lifecycle event)."""
        status = _status_of(event)
        return self if status is None else self.with_changes([(person_key, status)])

    def with_changes(self, changes: Iterable[tuple[str, str]]) -> ConsentState:
        """The state after ``changes`` in order (recovery replays commit markers with this)."""
        opted_out, ended = set(self.opted_out), set(self.ended)
        for key, status in changes:
            _change(opted_out, ended, key, _status(status))
        return ConsentState(frozenset(opted_out), frozenset(ended))


class ConsentDecision(NamedTuple):
    """The outcome of one batch (unpacks as ``keep, state, changes``)."""

    # Aligned with the events: consent allows identifiable records of event i.
    keep_identifiable: list[bool]
    state: ConsentState
    # Every consent or lifecycle event of the batch, in order (for the commit marker).
    changes: list[StateChange]


def batch_consent_keys(events: Sequence[Event], keyring: Keyring) -> tuple[list[str], list[str]]:
    """(person keys, account keys) of a batch, as :func:`decide` takes them.

    The person key is the account key when the event names no user.
    """
    account_ids = [event.account_id for event in events]
    person_keys = consent_keys(account_ids, [event.user_id for event in events], keyring)
    account_keys = consent_keys(account_ids, [None] * len(events), keyring)
    return person_keys, account_keys


def decide(
    events: Sequence[Event],
    *,
    person_keys: Sequence[str],
    account_keys: Sequence[str],
    state: ConsentState,
    honour_dnt: bool,
    honour_gpc: bool,
) -> ConsentDecision:
    """Decide a batch in order; pure (``state`` is not modified, the new one is returned).

    ``person_keys[i]`` / ``account_keys[i]`` are the consent keys of event i's person and
    account (:func:`batch_consent_keys`).
    """
    if not len(events) == len(person_keys) == len(account_keys):
        raise ValueError("events, person_keys and account_keys must be aligned")
    opted_out: AbstractSet[str] = state.opted_out
    ended: AbstractSet[str] = state.ended
    mutable: tuple[set[str], set[str]] | None = None
    keep: list[bool] = []
    changes: list[StateChange] = []
    for event, person, account in zip(events, person_keys, account_keys, strict=True):
        status = _status_of(event)
        if status is not None:
            if mutable is None:  # copy on the batch's first change only: most batches have none
                mutable = (set(opted_out), set(ended))
                opted_out, ended = mutable
            _change(*mutable, person, status)
            changes.append((person, status))
        keep.append(
            account not in opted_out
            and account not in ended
            and person not in opted_out
            and person not in ended
            and not (honour_dnt and event.dnt)
            and not (honour_gpc and event.gpc)
        )
    new_state = state if mutable is None else ConsentState(frozenset(opted_out), frozenset(ended))
    return ConsentDecision(keep_identifiable=keep, state=new_state, changes=changes)


def _status_of(event: Event) -> ConsentStatus | None:
    if isinstance(event, ConsentChange):
        return event.choice
    if isinstance(event, AccountLifecycle):
        return event.action
    return None


def _change(opted_out: set[str], ended: set[str], key: str, status: ConsentStatus) -> None:
    if status == _STOPS_CHOICE:
        opted_out.add(key)
    elif status == "opt_in":
        opted_out.discard(key)
    elif status in _ENDS_LIFECYCLE:
        ended.add(key)
    else:  # registered
        ended.discard(key)


def _status(value: str) -> ConsentStatus:
    if value not in _STATUSES:
        raise ValueError(f"unknown consent status {value!r} (expected one of {sorted(_STATUSES)})")
    return value  # type: ignore[return-value]
