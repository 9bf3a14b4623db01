"""The comparative pair judge: scores several answers to one record side by side, order shuffled.

Judges favour positions (often the first answer shown). Candidates are therefore shown under
neutral labels (A, B, ...) in an order drawn per record and per judge sample from a seeded RNG,
and scores are mapped back to the candidates before anything else sees them. With several judge
samples (self-consistency, as the MediFlow judge did with 5) each sample gets its own order and the
scores are averaged. Each sample is a row of :class:`PairJudgeStep` (an LLM step: the samples run
concurrently, each with its own seed, like the record judge's), answered as schema-validated JSON.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mediflow.steps import Answer, PromptStep, run_step
from mediflow.steps.structured import CompletesChat
from mediflow.teachers.base import ChatRequest

PAIR_JUDGE_PROMPT = "pair_judge"


@dataclass(frozen=True)
class Verdict:
    """Mean score per candidate (in the caller's order), or the reason the judge gave none."""

    scores: tuple[float, ...] | None
    orders: tuple[tuple[int, ...], ...]  # per sample: candidate indices in the order shown
    error: str | None = None


def presentation_order(count: int, record_key: str, sample: int, seed: int) -> list[int]:
    """The order in which candidates are shown: a seeded shuffle, stable for (seed, record, sample)."""
    order = list(range(count))
    digest = hashlib.sha256(f"{seed}:{record_key}:{sample}:judge-order".encode()).digest()
    random.Random(digest).shuffle(order)
    return order


def verdict_schema(labels: Sequence[str], candidate_schema: Mapping[str, Any]) -> dict[str, Any]:
    """One required entry per label, each valid against the prompt's ``response_schema`` (one candidate's verdict)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(labels),
        "properties": {label: dict(candidate_schema) for label in labels},
    }


@dataclass(frozen=True)
class Comparison:
    """One judge sample of one record's candidates (a row of :class:`PairJudgeStep`)."""

    record: Mapping[str, Any]
    candidates: tuple[str, ...]
    record_key: str
    sample: int


class PairJudgeStep(PromptStep[Comparison, tuple[float, ...]]):
    """One judge sample: the candidates under neutral labels in a seeded order; scores mapped back to the candidates."""

    def order(self, row: Comparison) -> list[int]:
        return presentation_order(len(row.candidates), row.record_key, row.sample, self.seed)

    def request(self, row: Comparison) -> ChatRequest:
        labels = string.ascii_uppercase[: len(row.candidates)]
        shown = [{"label": label, "text": row.candidates[index]} for label, index in zip(labels, self.order(row))]
        return ChatRequest(
            messages=self.template.render(
                instruction=row.record["instruction"],
                document=row.record["input"],
                output_format=row.record.get("output_format") or "plain_text",
                candidates=shown,
                scale=self.template.data["scale"],
            ),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=row.sample,
            sample_index=row.sample,
            prompt_version=self.template.version,
            response_schema=verdict_schema(labels, self.template.data["response_schema"]),
        )

    def parse(self, row: Comparison, answer: Answer) -> tuple[float, ...]:
        scores = [0.0] * len(row.candidates)
        for label, index in zip(string.ascii_uppercase, self.order(row)):
            scores[index] = float(answer.value[label]["score"])
        return tuple(scores)


class PairJudge:
    """Scores candidate answers to one record with the ``pair_judge`` prompt, its samples concurrently."""

    def __init__(self, engine: CompletesChat, step: PairJudgeStep, samples: int = 1) -> None:
        self.engine = engine
        self.step = step
        self.samples = samples

    async def score(self, record: Mapping[str, Any], candidates: Sequence[str], record_key: str) -> Verdict:
        """Mean score per candidate over the judge samples; an unusable answer yields ``scores=None``."""
        if len(candidates) > len(string.ascii_uppercase):
            raise ValueError(f"at most {len(string.ascii_uppercase)} candidates per record, got {len(candidates)}")
        rows = [Comparison(record, tuple(candidates), record_key, sample) for sample in range(self.samples)]
        orders = tuple(tuple(self.step.order(row)) for row in rows)
        totals = [0.0] * len(candidates)
        async for result in run_step(self.engine, self.step, rows, self.samples):
            if result.value is None:
                return Verdict(None, orders, f"judge: {result.error}")
            totals = [total + score for total, score in zip(totals, result.value)]
        return Verdict(tuple(total / self.samples for total in totals), orders)
