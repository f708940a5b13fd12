"""streams.delivery_health: when a producer counts as failing, and when it is to be rebuilt."""

from __future__ import annotations

import pytest

from streams.delivery_health import DeliveryHealth, DeliveryState


def test_a_new_producer_is_delivering() -> None:
    health = DeliveryHealth(heal_grace_s=10)
    assert health.state(now=0) == DeliveryState(True)
    assert not health.failing
    assert not health.should_rebuild(now=1_000)


def test_a_failure_makes_it_fail_until_a_record_is_acknowledged() -> None:
    health = DeliveryHealth(heal_grace_s=10)
    health.failed(now=100, error="KafkaTimeoutError")
    health.failed(now=130, error="KafkaConnectionError")
    state = health.state(now=142)
    assert not state.ok
    assert state.reason is not None
    assert "42 s" in state.reason  # counted from the first failure
    assert "KafkaConnectionError" in state.reason  # the last error's name
    assert "does not answer" in state.reason
    health.delivered()
    assert health.state(now=143).ok


def test_rebuild_only_once_the_broker_has_answered_for_the_grace() -> None:
    health = DeliveryHealth(heal_grace_s=10)
    health.failed(now=0, error="KafkaTimeoutError")
    health.broker_answers(now=5, answering=False)
    assert not health.should_rebuild(now=500)  # the broker is away: a new producer won't help
    health.broker_answers(now=600, answering=True)
    assert "answers again" in (health.state(now=601).reason or "")
    assert not health.should_rebuild(now=609)  # it usually recovers by itself within seconds
    assert health.should_rebuild(now=610)
    health.broker_answers(now=611, answering=False)  # gone again: the grace starts over
    health.broker_answers(now=612, answering=True)
    assert not health.should_rebuild(now=621)
    assert health.should_rebuild(now=622)


def test_a_success_or_a_rebuild_ends_the_failing() -> None:
    for end in ("delivered", "rebuilt"):
        health = DeliveryHealth(heal_grace_s=0)
        health.failed(now=0, error="X")
        health.broker_answers(now=1, answering=True)
        assert health.should_rebuild(now=1)
        getattr(health, end)()
        assert health.state(now=2).ok
        assert not health.should_rebuild(now=100)


def test_the_grace_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="heal_grace_s"):
        DeliveryHealth(heal_grace_s=-1)
