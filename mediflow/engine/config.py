"""How hard the engine may push a teacher, and when it gives up."""

from __future__ import annotations

from dataclasses import dataclass, field

from mediflow.errors import ConfigError


@dataclass(frozen=True)
class EngineConfig:
    """Limits, retries and prices for one engine. Every field has a safe default."""

    #: Most requests in flight at once (the adaptive limit moves below this, never above).
    concurrency: int = 64
    #: Requests per minute; None = unlimited unless the server's ``x-ratelimit-limit-requests`` says otherwise.
    rpm: float | None = None
    #: Tokens per minute (prompt estimate + max_tokens are reserved up front, the excess refunded on answer).
    tpm: float | None = None
    #: Additive-increase / multiplicative-decrease of the concurrency on 429s and on rising latency.
    adaptive: bool = True
    #: Retries after the first attempt, for 429 / 5xx / timeouts / connection errors / truncated answers.
    max_retries: int = 6
    #: Seconds one attempt may take before it counts as a timeout (and is retried).
    request_timeout: float = 120.0
    #: Stop the run when more than this share of the last ``error_window`` attempts failed.
    error_rate_threshold: float = 0.5
    error_window: int = 200
    #: USD per 1k tokens; None = the built-in table for known OpenAI models, else 0.
    price_input_per_1k: float | None = None
    price_output_per_1k: float | None = None
    #: Show a tqdm progress bar on stderr.
    progress: bool = True
    #: Exponential backoff between retries: first wait (s) and cap (s); full jitter is applied.
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    #: Latency rising above ``latency_tolerance`` x its baseline (and by at least ``latency_floor``
    #: seconds) makes the adaptive limit back off, because a saturated vLLM queues instead of answering 429.
    latency_tolerance: float = 2.0
    latency_floor: float = 1.0
    #: Fewest attempts seen before the error-rate breaker may trip.
    error_min_samples: int = field(default=20)
    #: This engine's share of the rpm/tpm limits, configured or reported by the server: ``engine: ray``
    #: runs one engine per actor, each with ``1 / actors`` of them, so the actors together keep the limits.
    limit_share: float = 1.0

    def __post_init__(self) -> None:
        _positive("concurrency", self.concurrency)
        _positive("request_timeout", self.request_timeout)
        _positive("error_window", self.error_window)
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value)
        if self.max_retries < 0:
            raise ConfigError(f"engine.max_retries must be >= 0, got {self.max_retries}")
        if not 0.0 < self.error_rate_threshold <= 1.0:
            raise ConfigError(f"engine.error_rate_threshold must be in (0, 1], got {self.error_rate_threshold}")
        if not 0.0 < self.limit_share <= 1.0:
            raise ConfigError(f"engine.limit_share must be in (0, 1], got {self.limit_share}")
        if self.latency_tolerance <= 1.0:
            raise ConfigError(f"engine.latency_tolerance must be > 1, got {self.latency_tolerance}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"engine.{name} must be > 0, got {value}")
