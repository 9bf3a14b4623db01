"""How hard an engine may push a teacher, when it gives up, and what its tokens cost.

:class:`LimitsConfig` is the one ``limits:`` section of every config that calls a teacher (the run,
the judge, pairs, PIT QA): the same keys mean the same thing everywhere, and the engine takes it
as it is. :class:`PricesConfig` is the ``prices:`` section.
"""

from __future__ import annotations

from dataclasses import dataclass

from mediflow.configuration import Config, option


@dataclass
class LimitsConfig(Config):
    """A concurrency cap, rate buckets, adaptive backoff, retries and the error breaker."""

    concurrency: int = option(64, "most teacher requests in flight at once (the adaptive limit moves below it)", minimum=1)
    rpm: float | None = option(None, "requests-per-minute bucket (default: from x-ratelimit headers, else none)", exclusiveMinimum=0)
    tpm: float | None = option(None, "tokens-per-minute bucket (prompt estimate + max_tokens reserved, the excess refunded)", exclusiveMinimum=0)
    adaptive: bool = option(True, "additive-increase / multiplicative-decrease on 429s and rising latency")
    max_retries: int = option(6, "retries per request on 429 / 5xx / timeouts / truncated answers", minimum=0)
    request_timeout: float = option(120.0, "seconds before one attempt counts as timed out", exclusiveMinimum=0)
    error_rate_threshold: float = option(0.5, "stop when more than this share of the last error_window attempts failed", exclusiveMinimum=0, maximum=1)
    error_window: int = option(200, "attempts the error breaker looks back over", minimum=1)
    error_min_samples: int = option(20, "fewest attempts seen before the error breaker may trip", minimum=1)
    backoff_initial: float = option(1.0, "first wait between retries in seconds (full jitter)", exclusiveMinimum=0)
    backoff_max: float = option(60.0, "longest wait between retries in seconds", exclusiveMinimum=0)
    latency_tolerance: float = option(2.0, "back off when latency rises above this multiple of its baseline (a saturated vLLM queues)", exclusiveMinimum=1)
    latency_floor: float = option(1.0, "... and by at least this many seconds", minimum=0)


@dataclass
class PricesConfig(Config):
    """Price of the teacher's tokens, for the cost in the progress bar and the manifest (None: the built-in table)."""

    input_per_1k: float | None = option(None, "USD per 1,000 prompt tokens", minimum=0)
    output_per_1k: float | None = option(None, "USD per 1,000 completion tokens", minimum=0)
    batch_input_per_1k: float | None = option(None, "USD per 1,000 prompt tokens bought in provider batches (mode: batch)", minimum=0)
    batch_output_per_1k: float | None = option(None, "USD per 1,000 completion tokens bought in provider batches (mode: batch)", minimum=0)
