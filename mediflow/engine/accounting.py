"""Counting what a run asked for and what it cost."""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

#: How a request is bought: one HTTP call answered now, or a line of a provider batch (answered within
#: its completion window, at the provider's batch price).
Mode = Literal["online", "batch"]
MODES: tuple[Mode, ...] = ("online", "batch")


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1k tokens of one model: input and output, online and through the provider's batch API."""

    input: float
    output: float
    batch_input: float
    batch_output: float

    def per_1k(self, mode: Mode) -> tuple[float, float]:
        """(input, output) USD per 1k tokens in ``mode``."""
        return (self.batch_input, self.batch_output) if mode == "batch" else (self.input, self.output)


#: List prices of common OpenAI models (2025; USD per 1k tokens), online and in the Batch API (half
#: price for jobs that may take up to 24 h). The longest matching prefix of the model name wins.
#: Override with the prices: section (:class:`~mediflow.engine.config.PricesConfig`).
PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(0.00015, 0.0006, 0.000075, 0.0003),
    "gpt-4o": ModelPrice(0.0025, 0.01, 0.00125, 0.005),
    "gpt-4.1-nano": ModelPrice(0.0001, 0.0004, 0.00005, 0.0002),
    "gpt-4.1-mini": ModelPrice(0.0004, 0.0016, 0.0002, 0.0008),
    "gpt-4.1": ModelPrice(0.002, 0.008, 0.001, 0.004),
    "gpt-4-turbo": ModelPrice(0.01, 0.03, 0.005, 0.015),
    "gpt-3.5-turbo": ModelPrice(0.0005, 0.0015, 0.00025, 0.00075),
    "o4-mini": ModelPrice(0.0011, 0.0044, 0.00055, 0.0022),
    "o3-mini": ModelPrice(0.0011, 0.0044, 0.00055, 0.0022),
    "o3": ModelPrice(0.002, 0.008, 0.001, 0.004),
}


def list_price(model: str) -> ModelPrice | None:
    """The table's prices for ``model`` (the longest matching prefix of its name); None when it is not listed."""
    name = model.rpartition("/")[2].lower()
    matches = [prefix for prefix in PRICES if name.startswith(prefix)]
    return PRICES[max(matches, key=len)] if matches else None


def price_per_1k(
    model: str,
    input_override: float | None,
    output_override: float | None,
    *,
    mode: Mode = "online",
    batch_input_override: float | None = None,
    batch_output_override: float | None = None,
) -> tuple[float, float] | None:
    """(input, output) USD per 1k tokens for ``model`` in ``mode``; None when neither configured nor known.

    Configured prices win over the table. In batch mode the configured batch prices come first, then
    the table's batch price; a model priced only by configured online prices is assumed to have no
    batch discount (a budget that overestimates rather than one that surprises).
    """
    if mode == "batch" and (batch_input_override is not None or batch_output_override is not None):
        return (batch_input_override or 0.0, batch_output_override or 0.0)
    if input_override is not None or output_override is not None:
        return (input_override or 0.0, output_override or 0.0)
    listed = list_price(model)
    return listed.per_1k(mode) if listed is not None else None


@dataclass
class BatchUsage:
    """What one engine bought through provider batches this session (see :mod:`mediflow.batch`)."""

    batches: int = 0  # batches submitted
    requests: int = 0  # answers that arrived in batch output files
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # at the batch price
    online_cost_usd: float = 0.0  # what the same answers cost online, at the list price
    cost_known: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6) if self.cost_known else None,
            "online_cost_usd": round(self.online_cost_usd, 6) if self.cost_known else None,
        }


@dataclass
class EngineStats:
    """Running totals of one engine. ``requests`` counts answers obtained (fresh or cached).

    In batch mode (``batch`` set) the answers arrive in batch output files before the stage's last
    pass reads them from the cache: ``requests`` is still every answer the stage obtained,
    ``cache_hits`` those an earlier session paid for, and the tokens and ``cost_usd`` are what this
    session paid, its batches' share at the batch price (detailed under ``batch``).
    """

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
    #: Set in batch mode: what arrived through provider batches.
    batch: BatchUsage | None = None
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
        by_batch = self.batch.requests if self.batch is not None else 0
        plain = {
            "mode": "batch" if self.batch is not None else "online",
            "requests": self.requests,
            "cache_hits": max(self.cache_hits - by_batch, 0),
            "attempts": self.attempts,
            "retries": self.retries,
            "failed_requests": self.failed_requests,
            "errors": dict(self.errors),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6) if self.cost_known else None,
            "latency_s": {name: round(value, 4) for name, value in self.latency().items()},
        }
        if self.batch is not None:
            plain["batch"] = self.batch.as_dict()
        return plain
