"""Moves requests to a teacher: cache, limits (buckets, AIMD), retries, error breaker, accounting, progress.

It knows nothing about clinical content; see ``docs/architecture.md`` and ``docs/generation.md``.
"""

from mediflow.engine.accounting import PRICES_PER_1K, EngineStats
from mediflow.engine.cache import ResponseCache, cache_key
from mediflow.engine.config import LimitsConfig, PricesConfig
from mediflow.engine.engine import CircuitOpenError, Engine

__all__ = ["CircuitOpenError", "Engine", "EngineStats", "LimitsConfig", "PricesConfig", "PRICES_PER_1K", "ResponseCache", "cache_key"]
