"""Counting what a run asked for and what it cost."""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass, field
from typing import Any

#: USD per 1k (input, output) tokens of common OpenAI models (list prices, 2025); the longest
#: matching prefix of the model name wins. Override with the prices: section (PricesConfig).
PRICES_PER_1K: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.00015, 0.0006),
    "gpt-4o": (0.0025, 0.01),
    "gpt-4.1-nano": (0.0001, 0.0004),
    "gpt-4.1-mini": (0.0004, 0.0016),
    "gpt-4.1": (0.002, 0.008),
    "gpt-4-turbo": (0.01, 0.03),
    "gpt-3.5-turbo": (0.0005, 0.0015),
    "o4-mini": (0.0011, 0.0044),
    "o3-mini": (0.0011, 0.0044),
    "o3": (0.002, 0.008),
}


def price_per_1k(model: str, input_override: float | None, output_override: float | None) -> tuple[float, float] | None:
    """(input, output) USD per 1k tokens for ``model``; None when neither configured nor known."""
    if input_override is not None or output_override is not None:
        return (input_override or 0.0, output_override or 0.0)
    name = model.rpartition("/")[2].lower()
    matches = [prefix for prefix in PRICES_PER_1K if name.startswith(prefix)]
    return PRICES_PER_1K[max(matches, key=len)] if matches else None


@dataclass
class EngineStats:
    """Running totals of one engine. ``requests`` counts answers obtained (fresh or cached)."""

    requests: int = 0
    cache_hits: int = 0
    attempts: int = 0
    retries: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    #: False once a fresh answer came from a model without a known or configured price.
    cost_known: bool = True
    _latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=4096), repr=False)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def record_latency(self, seconds: float) -> None:
        self._latencies.append(seconds)

    def latency(self) -> dict[str, float]:
        """Mean, p50, p95 and max of the recent attempt latencies (seconds)."""
        values = sorted(self._latencies)
        if not values:
            return {}
        return {
            "mean": statistics.fmean(values),
            "p50": values[len(values) // 2],
            "p95": values[min(len(values) - 1, int(len(values) * 0.95))],
            "max": values[-1],
        }

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready numbers, for manifests and logs."""
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "attempts": self.attempts,
            "retries": self.retries,
            "failed_requests": self.failed_requests,
            "errors": dict(self.errors),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6) if self.cost_known else None,
            "latency_s": {name: round(value, 4) for name, value in self.latency().items()},
        }
