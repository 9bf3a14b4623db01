"""DPO preference pairs from MediFlow records: error injection, other candidates, margins, TRL format.

``build_pairs(IN, OUT, PairsConfig(...))`` (or ``mediflow pairs IN OUT``) writes pairs in TRL's
conversational preference format with the released MediFlow DPO columns; see ``docs/preference.md``.
"""

from mediflow.preference.build import PairsResult, build_pairs, build_pairs_async
from mediflow.preference.config import CandidateSource, PairsConfig
from mediflow.preference.rows import PAIR_SCHEMA

__all__ = ["CandidateSource", "PAIR_SCHEMA", "PairsConfig", "PairsResult", "build_pairs", "build_pairs_async"]
