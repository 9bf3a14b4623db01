"""A small seeded evolutionary search over a box of merge parameters, under an evaluation budget.

MediPhi tuned its BreadCrumbs weights/densities/gammas with an evolutionary search (500 evaluations
with mergekit-evolve). Each evaluation here is a full merge plus a validation run, so the loop is
deliberately simple and frugal: a (mu + lambda) strategy whose parents are the best candidates seen
so far, with uniform crossover and Gaussian mutation whose step shrinks as the budget is spent.

Every trial is appended to a JSON-lines log as soon as it is scored, with the fingerprint of what
it was measured on. A rerun with the same seed and the same inputs replays the same candidates and
takes their scores from the log instead of re-evaluating, so an interrupted search resumes where it
stopped; with other inputs (a replaced expert, another eval set) every candidate is scored anew.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mediflow.errors import ConfigError

Candidate = dict[str, float]


@dataclass(frozen=True)
class Dimension:
    """One searched parameter and its bounds."""

    name: str
    low: float
    high: float

    def clip(self, value: float) -> float:
        return min(self.high, max(self.low, value))


@dataclass(frozen=True)
class Trial:
    """One evaluated candidate."""

    number: int
    candidate: Candidate
    score: float


def _key(candidate: Candidate) -> str:
    return json.dumps({name: round(value, 6) for name, value in sorted(candidate.items())})


def _read_log(log: Path | None, context: str) -> dict[str, float]:
    """Scores logged under ``context`` (what the scores were measured on); others are not reused."""
    if log is None or not log.is_file():
        return {}
    scores = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            if entry.get("context") == context:
                scores[_key(entry["candidate"])] = entry["score"]
    return scores


def evolutionary_search(
    dimensions: Sequence[Dimension],
    objective: Callable[[Candidate], float],
    *,
    budget: int,
    seed: int = 0,
    population: int = 8,
    initial: Sequence[Candidate] = (),
    log: Path | None = None,
    context: str = "",
) -> list[Trial]:
    """Maximise ``objective`` over the box with at most ``budget`` evaluations; return all trials.

    ``initial`` candidates (e.g. a known good point) are evaluated first; the rest of the first
    generation is uniform in the box. ``context`` fingerprints what a score depends on besides the
    candidate (the models merged, the evaluator and its data): logged scores are replayed only
    under the same context.
    """
    if budget < 1:
        raise ConfigError(f"search.budget: must be at least 1, got {budget}")
    if population < 2:
        raise ConfigError(f"search.population: must be at least 2, got {population}")
    rng = random.Random(seed)
    logged = _read_log(log, context)
    trials: list[Trial] = []

    def evaluate(candidate: Candidate) -> None:
        candidate = {d.name: round(d.clip(candidate[d.name]), 6) for d in dimensions}
        key = _key(candidate)
        if key in logged:
            score = logged[key]
        else:
            score = float(objective(candidate))
            logged[key] = score
            if log is not None:
                log.parent.mkdir(parents=True, exist_ok=True)
                with log.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"trial": len(trials), "context": context, "candidate": candidate, "score": score}) + "\n")
        trials.append(Trial(len(trials), candidate, score))

    first_generation = list(initial)[:budget]
    while len(first_generation) < min(population, budget):
        first_generation.append({d.name: rng.uniform(d.low, d.high) for d in dimensions})
    for candidate in first_generation:
        evaluate(candidate)

    parents_count = max(2, population // 2)
    while len(trials) < budget:
        progress = len(trials) / budget
        step = 0.3 * (1 - progress) + 0.05 * progress
        parents = sorted(trials, key=lambda trial: trial.score, reverse=True)[:parents_count]
        for _ in range(min(population, budget - len(trials))):
            mother, father = rng.choice(parents).candidate, rng.choice(parents).candidate
            child = {}
            for d in dimensions:
                value = mother[d.name] if rng.random() < 0.5 else father[d.name]
                child[d.name] = value + rng.gauss(0.0, step * (d.high - d.low))
            evaluate(child)
    return trials


def best_trial(trials: Sequence[Trial]) -> Trial:
    """The highest-scoring trial (the earliest one on ties)."""
    return max(trials, key=lambda trial: (trial.score, -trial.number))
