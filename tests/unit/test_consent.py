"""Consent rules: opt-out, opt-in, lifecycle, DNT/GPC, in order, independent of batching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import AccountLifecycle, ConsentChange, Event, PageView
from streams.privacy.consent import ConsentState, batch_consent_keys, decide
from streams.privacy.keyring import Keyring
from tests.fixtures.consent_events import batch_events, envelope

KEYRING = Keyring.generate()


def view(account: str = "acct", user: str | None = "u1", **flags: bool) -> PageView:
    return PageView(path="/", **envelope(0, account, user, **flags))


def consent(choice: str, account: str = "acct", user: str | None = "u1") -> ConsentChange:
    return ConsentChange(choice=choice, **envelope(0, account, user))  # type: ignore[arg-type]


def lifecycle(action: str, account: str = "acct", user: str | None = None) -> AccountLifecycle:
    return AccountLifecycle(action=action, **envelope(0, account, user))  # type: ignore[arg-type]


def _decide(
    events: list[Event],
    state: ConsentState | None = None,
    *,
    honour_dnt: bool = True,
    honour_gpc: bool = True,
) -> tuple[list[bool], ConsentState, list[tuple[str, str]]]:
    persons, accounts = batch_consent_keys(events, KEYRING)
    keep, new_state, changes = decide(
        events,
        person_keys=persons,
        account_keys=accounts,
        state=ConsentState() if state is None else state,
        honour_dnt=honour_dnt,
        honour_gpc=honour_gpc,
    )
    return keep, new_state, list(changes)


def test_opt_out_stops_later_events_of_that_person_only() -> None:
    keep, _, _ = _decide([view(), consent("opt_out"), view(), view(user="u2"), view(user=None)])
    assert keep == [True, False, False, True, True]


def test_opt_in_resumes_and_its_own_event_is_collected() -> None:
    keep, state, _ = _decide([consent("opt_out"), view(), consent("opt_in"), view()])
    assert keep == [False, False, True, True]
    assert state == ConsentState()


def test_opt_out_persists_across_batches_through_the_state() -> None:
    _, state, _ = _decide([consent("opt_out")])
    keep, _, _ = _decide([view(), view(user="u2")], state)
    assert keep == [False, True]


def test_account_termination_stops_every_user_and_registration_resumes() -> None:
    events: list[Event] = [
        lifecycle("terminated"),
        view(user="u1"),
        view(user="u2"),
        view(user=None),
        view(account="other"),
        lifecycle("registered"),
        view(user="u1"),
    ]
    keep, _, _ = _decide(events)
    assert keep == [False, False, False, False, True, True, True]


def test_disabled_account_stops_collection_too() -> None:
    keep, _, _ = _decide([lifecycle("disabled"), view()])
    assert keep == [False, False]


def test_user_lifecycle_affects_that_user_only() -> None:
    keep, _, _ = _decide(
        [
            lifecycle("terminated", user="u1"),
            view(user="u1"),
            view(user="u2"),
            lifecycle("registered", user="u1"),
            view(user="u1"),
        ]
    )
    assert keep == [False, False, True, True, True]


def test_reregistration_does_not_undo_an_opt_out() -> None:
    events: list[Event] = [
        consent("opt_out"),
        lifecycle("terminated"),
        lifecycle("registered"),
        view(),
        view(user="u2"),
    ]
    keep, _, _ = _decide(events)
    assert keep[-2:] == [False, True]


def test_consent_without_a_user_is_the_accounts_choice() -> None:
    keep, _, _ = _decide(
        [consent("opt_out", user=None), view(user="u1"), view(user=None), view(account="b")]
    )
    assert keep == [False, False, False, True]


@pytest.mark.parametrize(
    ("dnt", "gpc", "honour_dnt", "honour_gpc", "kept"),
    [
        (True, False, True, True, False),
        (True, False, False, True, True),
        (False, True, True, True, False),
        (False, True, True, False, True),
        (True, True, False, True, False),
        (False, False, True, True, True),
    ],
)
def test_dnt_and_gpc_apply_to_their_event_when_honoured(
    dnt: bool, gpc: bool, honour_dnt: bool, honour_gpc: bool, kept: bool
) -> None:
    keep, state, changes = _decide(
        [view(dnt=dnt, gpc=gpc), view()], honour_dnt=honour_dnt, honour_gpc=honour_gpc
    )
    assert keep == [kept, True]  # a signal affects its own event, not the person's later ones
    assert state == ConsentState() and changes == []


def test_changes_record_every_choice_in_order_under_pseudonymous_keys() -> None:
    events: list[Event] = [consent("opt_out"), view(), lifecycle("terminated", user=None)]
    persons, accounts = batch_consent_keys(events, KEYRING)
    _, _, changes = _decide(events)
    assert changes == [(persons[0], "opt_out"), (accounts[2], "terminated")]
    assert all("acct" not in key and "u1" not in key for key, _ in changes)


def test_decide_does_not_modify_the_given_state() -> None:
    _, before, _ = _decide([consent("opt_out", user="u9")])
    snapshot = (set(before.opted_out), set(before.ended))
    _, after, _ = _decide([consent("opt_in", user="u9"), lifecycle("terminated")], before)
    assert (set(before.opted_out), set(before.ended)) == snapshot
    assert after != before


def test_a_batch_without_changes_returns_the_same_state_object() -> None:
    state = ConsentState(opted_out=frozenset({"k"}))
    _, after, changes = _decide([view(), view(dnt=True)], state)
    assert after is state and changes == []


def test_apply_matches_decide_for_one_event() -> None:
    event = consent("opt_out")
    persons, _ = batch_consent_keys([event], KEYRING)
    _, state, _ = _decide([event])
    assert ConsentState().apply(event, persons[0]) == state
    assert ConsentState().apply(view(), persons[0]) == ConsentState()


def test_unknown_status_in_replayed_changes_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown consent status 'maybe'"):
        ConsentState().with_changes([("k", "maybe")])


def test_misaligned_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="aligned"):
        decide(
            [view()],
            person_keys=[],
            account_keys=["a"],
            state=ConsentState(),
            honour_dnt=True,
            honour_gpc=True,
        )


# --- invariants --------------------------------------------------------------------------------


def _reference_keep(events: list[Event], honour_dnt: bool, honour_gpc: bool) -> list[bool]:
    """The rules restated over raw ids, one event at a time (no keys, no sets)."""
    choice: dict[tuple[str, str | None], str] = {}
    life: dict[tuple[str, str | None], str] = {}
    kept = []
    for event in events:
        who = (event.account_id, event.user_id)
        if isinstance(event, ConsentChange):
            choice[who] = event.choice
        if isinstance(event, AccountLifecycle):
            life[who] = event.action
        scopes = {(event.account_id, None), who}
        stopped = any(
            choice.get(s) == "opt_out" or life.get(s) in ("disabled", "terminated") for s in scopes
        )
        kept.append(
            not stopped and not (honour_dnt and event.dnt) and not (honour_gpc and event.gpc)
        )
    return kept


@given(batch_events(), st.booleans(), st.booleans())
def test_decide_agrees_with_the_rules_restated(
    events: list[Event], honour_dnt: bool, honour_gpc: bool
) -> None:
    keep, _, _ = _decide(events, honour_dnt=honour_dnt, honour_gpc=honour_gpc)
    assert keep == _reference_keep(events, honour_dnt, honour_gpc)


@given(batch_events(), st.data())
def test_batching_does_not_change_decisions(events: list[Event], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4)))
    whole = _decide(events)
    state, keep, changes = ConsentState(), [], []
    for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
        part_keep, state, part_changes = _decide(events[start:end], state)
        keep += part_keep
        changes += part_changes
    assert (keep, state, changes) == whole


@given(batch_events(), batch_events())
def test_replaying_recorded_changes_rebuilds_the_state(
    first: list[Event], second: list[Event]
) -> None:
    # Recovery: a restarted worker rebuilds the state from the changes in commit markers.
    _, state, changes = _decide(first)
    _, state, more = _decide(second, state)
    assert ConsentState().with_changes(changes + more) == state
