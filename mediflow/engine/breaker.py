"""Stop a run whose teacher keeps failing, instead of retrying into the void for hours."""

from __future__ import annotations

import collections


class ErrorRateBreaker:
    """Trips when more than ``threshold`` of the last ``window`` attempts failed.

    429s are not counted either way: a rate-limit storm is the limiter's business, not a broken
    teacher. At least ``min_samples`` attempts are needed before the breaker may trip.
    """

    def __init__(self, threshold: float, window: int, min_samples: int) -> None:
        self.threshold = threshold
        self.min_samples = min(min_samples, window)
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=window)
        self._failures = 0

    def record(self, failed: bool) -> None:
        if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
            self._failures -= 1
        self._outcomes.append(failed)
        self._failures += failed

    @property
    def failure_rate(self) -> float:
        return self._failures / len(self._outcomes) if self._outcomes else 0.0

    @property
    def samples(self) -> int:
        return len(self._outcomes)

    @property
    def tripped(self) -> bool:
        return len(self._outcomes) >= self.min_samples and self.failure_rate > self.threshold
