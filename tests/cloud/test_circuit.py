"""The circuit breaker's state machine, on a manual clock."""

from __future__ import annotations

import pytest

from authserver.clock import ManualClock
from authserver.cloud.circuit import CircuitBreaker


def test_opens_after_consecutive_failures_only() -> None:
    circuit = CircuitBreaker(failure_threshold=3, reset_timeout=10, clock=ManualClock())
    circuit.record_failure()
    circuit.record_failure()
    circuit.record_success()  # a success resets the count
    circuit.record_failure()
    circuit.record_failure()
    assert circuit.state == "closed"
    assert circuit.allow()
    circuit.record_failure()
    assert circuit.state == "open"
    assert not circuit.allow()
    assert circuit.times_opened == 1


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    clock = ManualClock()
    circuit = CircuitBreaker(failure_threshold=1, reset_timeout=10, clock=clock)
    circuit.record_failure()
    clock.advance(9.9)
    assert circuit.state == "open"
    assert circuit.retry_after() == pytest.approx(0.1)
    assert not circuit.allow()
    clock.advance(0.1)
    assert circuit.state == "half_open"
    assert circuit.allow(), "the probe"
    assert not circuit.allow(), "only one probe at a time"
    circuit.record_success()
    assert circuit.state == "closed"
    assert circuit.allow()
    assert circuit.consecutive_failures == 0


def test_a_failed_probe_opens_the_circuit_again() -> None:
    clock = ManualClock()
    circuit = CircuitBreaker(failure_threshold=5, reset_timeout=2, clock=clock)
    for _ in range(5):
        circuit.record_failure()
    clock.advance(2)
    assert circuit.allow()
    circuit.record_failure()
    assert circuit.state == "open"
    assert circuit.retry_after() == pytest.approx(2)
    assert not circuit.allow()
    assert circuit.times_opened == 2


def test_a_lost_probe_is_replaced_after_the_reset_timeout() -> None:
    clock = ManualClock()
    circuit = CircuitBreaker(failure_threshold=1, reset_timeout=2, clock=clock)
    circuit.record_failure()
    clock.advance(2)
    assert circuit.allow()  # this probe is cancelled and never reports
    clock.advance(1)
    assert not circuit.allow()
    clock.advance(1)
    assert circuit.allow()


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="reset_timeout"):
        CircuitBreaker(reset_timeout=0)
