"""Moves requests to a teacher: cache, limits (buckets, AIMD), retries, error breaker, accounting, progress.

It knows nothing about clinical content; see ``docs/architecture.md`` and ``docs/generation.md``.
The names are imported on first use, so that a config importing :mod:`mediflow.engine.config`
(every CLI command's flags) does not load the HTTP client stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mediflow.engine.accounting import PRICES, EngineStats, ModelPrice
    from mediflow.engine.cache import ResponseCache, cache_key
    from mediflow.engine.config import LimitsConfig, PricesConfig
    from mediflow.engine.engine import CircuitOpenError, Engine

_LAZY = {
    "PRICES": "mediflow.engine.accounting",
    "ModelPrice": "mediflow.engine.accounting",
    "EngineStats": "mediflow.engine.accounting",
    "ResponseCache": "mediflow.engine.cache",
    "cache_key": "mediflow.engine.cache",
    "LimitsConfig": "mediflow.engine.config",
    "PricesConfig": "mediflow.engine.config",
    "CircuitOpenError": "mediflow.engine.engine",
    "Engine": "mediflow.engine.engine",
}

__all__ = ["CircuitOpenError", "Engine", "EngineStats", "LimitsConfig", "ModelPrice", "PricesConfig", "PRICES", "ResponseCache", "cache_key"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mediflow.engine' has no attribute {name!r}")
