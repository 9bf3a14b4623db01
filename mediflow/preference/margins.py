"""The margin rule: when do two scored answers make a preference pair, and why was a pair dropped.

A pair is only useful when the judge clearly prefers one side. Peers that take ``max``/``min`` over
ratings return the same answer as chosen and rejected when every rating ties (distilabel's DPO
formatter); here ties, margins below the configured threshold and identical texts are dropped
and counted under a named reason, so chosen == rejected cannot happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Drop reasons produced by the margin rule (the manifest counts every drop under one reason).
TIE = "tie"
LOW_MARGIN = "low_margin"
REJECTED_NOT_WORSE = "rejected_not_worse"
IDENTICAL_TEXT = "identical_text"
TOO_FEW_CANDIDATES = "too_few_candidates"


@dataclass(frozen=True)
class ScoredCandidate:
    """One answer to a record, where it came from, and the judge's score for it."""

    source: str
    text: str
    score: float


@dataclass(frozen=True)
class PairDecision:
    """Either a (chosen, rejected) pair or the reason no pair was made."""

    chosen: ScoredCandidate | None = None
    rejected: ScoredCandidate | None = None
    drop_reason: str | None = None

    @property
    def kept(self) -> bool:
        return self.drop_reason is None


def same_text(a: str, b: str) -> bool:
    """Equal up to whitespace: such a pair teaches nothing, whatever the judge said."""
    return " ".join(a.split()) == " ".join(b.split())


def best_worst_pair(candidates: Sequence[ScoredCandidate], min_margin: float) -> PairDecision:
    """(best, worst) among scored candidates, kept only if best - worst >= ``min_margin`` (> 0).

    Among equal scores the earlier candidate wins for best and the later for worst, so the pick is
    deterministic; an all-equal list is a tie, never a pair.
    """
    if min_margin <= 0:
        raise ValueError(f"min_margin must be > 0, got {min_margin}")
    if len(candidates) < 2:
        return PairDecision(drop_reason=TOO_FEW_CANDIDATES)
    best = max(candidates, key=lambda c: c.score)
    worst = min(reversed(candidates), key=lambda c: c.score)
    if best.score == worst.score:
        return PairDecision(drop_reason=TIE)
    if best.score - worst.score < min_margin:
        return PairDecision(drop_reason=LOW_MARGIN)
    if same_text(best.text, worst.text):
        return PairDecision(drop_reason=IDENTICAL_TEXT)
    return PairDecision(chosen=best, rejected=worst)


def confirmed_worse(chosen: ScoredCandidate, rejected: ScoredCandidate, min_margin: float) -> PairDecision:
    """Keep an injected pair only if the judge scores the rejected side lower by at least ``min_margin``."""
    if min_margin <= 0:
        raise ValueError(f"min_margin must be > 0, got {min_margin}")
    if same_text(chosen.text, rejected.text):
        return PairDecision(drop_reason=IDENTICAL_TEXT)
    if chosen.score == rejected.score:
        return PairDecision(drop_reason=TIE)
    if rejected.score > chosen.score:
        return PairDecision(drop_reason=REJECTED_NOT_WORSE)
    if chosen.score - rejected.score < min_margin:
        return PairDecision(drop_reason=LOW_MARGIN)
    return PairDecision(chosen=chosen, rejected=rejected)
