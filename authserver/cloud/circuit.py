"""A circuit breaker, so a dead upstream costs callers milliseconds rather than timeouts."""

from __future__ import annotations

from typing import Literal

from authserver.clock import Clock, SystemClock

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive retryable failures; probes after a pause.

    closed: every call goes through; a success resets the failure count.
    open: no call goes through until `reset_timeout` seconds have passed.
    half_open: one probe goes through; its success closes the circuit, its failure opens it
    again. A probe that never reports back (cancelled) is replaced after `reset_timeout`.
    Only retryable failures (throttling, 5xx, timeouts, connection errors) are recorded as
    failures by the client; a parameter error proves the upstream alive and counts as success.

    Ten consecutive failed attempts open it: with concurrent calls retrying a partly failing
    upstream, five in a row came up often enough at a 20% error rate (about 2% of test runs)
    to turn a degraded upstream into a full outage; ten in a row there is ~1e-7 per attempt,
    while a dead upstream still fails ten attempts within a request or two.
    """

    def __init__(
        self,
        failure_threshold: int = 10,
        reset_timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout <= 0:
            raise ValueError("reset_timeout must be positive")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock: Clock = clock or SystemClock()
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None
        self.times_opened = 0

    @property
    def state(self) -> State:
        """`closed`, `open`, or `half_open` (also once an open circuit's pause is over)."""
        if self._state == "open" and self._pause_over():
            return "half_open"
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Retryable failures since the last success."""
        return self._failures

    def retry_after(self) -> float:
        """Seconds until the circuit lets a probe through (0 when it would now)."""
        if self._state == "closed":
            return 0.0
        start = self._opened_at if self._state == "open" else (self._probe_started or 0.0)
        return max(0.0, start + self.reset_timeout - self._clock.monotonic())

    def allow(self) -> bool:
        """May a call go upstream now? In half-open state, only the one probe may."""
        if self._state == "closed":
            return True
        now = self._clock.monotonic()
        if self._state == "open":
            if not self._pause_over():
                return False
            self._state = "half_open"
            self._probe_started = now
            return True
        # half_open: a probe is in flight; replace it only if it has been lost.
        if self._probe_started is not None and now - self._probe_started < self.reset_timeout:
            return False
        self._probe_started = now
        return True

    def record_success(self) -> None:
        """The upstream answered (a success or a non-retryable error): close the circuit."""
        self._state = "closed"
        self._failures = 0
        self._probe_started = None

    def record_failure(self) -> None:
        """A retryable failure: count it, and open the circuit at the threshold or on a probe."""
        self._failures += 1
        if self._state == "half_open" or (
            self._state == "closed" and self._failures >= self.failure_threshold
        ):
            self._open()

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock.monotonic()
        self._probe_started = None
        self.times_opened += 1

    def _pause_over(self) -> bool:
        return self._clock.monotonic() - self._opened_at >= self.reset_timeout
