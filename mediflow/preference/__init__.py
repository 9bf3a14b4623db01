"""DPO preference pairs from MediFlow records: error injection, other candidates, margins, TRL format.

``build_pairs(IN, OUT, PairsConfig(...))`` (or ``mediflow pairs IN OUT``) writes pairs in TRL's
conversational preference format with the released MediFlow DPO columns; see ``docs/preference.md``.
The names are imported on first use, so ``mediflow --help`` (which reads :class:`PairsConfig` for
the flags) does not load the engine.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mediflow.preference.build import PairsResult, build_pairs, build_pairs_async
    from mediflow.preference.config import CandidateSource, PairsConfig
    from mediflow.preference.rows import PAIR_SCHEMA

_LAZY = {
    "PairsResult": "mediflow.preference.build",
    "build_pairs": "mediflow.preference.build",
    "build_pairs_async": "mediflow.preference.build",
    "CandidateSource": "mediflow.preference.config",
    "PairsConfig": "mediflow.preference.config",
    "PAIR_SCHEMA": "mediflow.preference.rows",
}

__all__ = ["CandidateSource", "PAIR_SCHEMA", "PairsConfig", "PairsResult", "build_pairs", "build_pairs_async"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mediflow.preference' has no attribute {name!r}")
