"""The comparative pair judge: scores several answers to one record side by side, order shuffled.

Judges favour positions (often the first answer shown). Candidates are therefore shown under
neutral labels (A, B, ...) in an order drawn per record and per judge sample from a seeded RNG,
and scores are mapped back to the candidates before anything else sees them. With several judge
samples (self-consistency, as the MediFlow judge did with 5) each sample gets its own order and the
scores are averaged. The answer is schema-validated JSON via :func:`mediflow.pipeline.structured.ask_json`.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mediflow.pipeline.structured import CompletesChat, ask_json
from mediflow.prompts import PromptTemplate
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
    """One required entry per label, each valid against the prompt's ``candidate_schema``."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(labels),
        "properties": {label: dict(candidate_schema) for label in labels},
    }


class PairJudge:
    """Scores candidate answers to one record with the ``pair_judge`` prompt."""

    def __init__(
        self,
        engine: CompletesChat,
        template: PromptTemplate,
        *,
        seed: int,
        samples: int = 1,
        temperature: float = 0.0,
        max_corrections: int = 2,
        max_tokens: int = 1024,
    ) -> None:
        self.engine = engine
        self.template = template
        self.seed = seed
        self.samples = samples
        self.temperature = temperature
        self.max_corrections = max_corrections
        self.max_tokens = max_tokens

    async def score(self, record: Mapping[str, Any], candidates: Sequence[str], record_key: str) -> Verdict:
        """Mean score per candidate over the judge samples; an unusable answer yields ``scores=None``."""
        if len(candidates) > len(string.ascii_uppercase):
            raise ValueError(f"at most {len(string.ascii_uppercase)} candidates per record, got {len(candidates)}")
        labels = list(string.ascii_uppercase[: len(candidates)])
        schema = verdict_schema(labels, self.template.data["candidate_schema"])
        totals = [0.0] * len(candidates)
        orders = []
        for sample in range(self.samples):
            order = presentation_order(len(candidates), record_key, sample, self.seed)
            orders.append(tuple(order))
            shown = [{"label": label, "text": candidates[index]} for label, index in zip(labels, order)]
            request = ChatRequest(
                messages=self.template.render(
                    instruction=record["instruction"],
                    document=record["input"],
                    output_format=record.get("output_format") or "plain_text",
                    candidates=shown,
                    scale=self.template.data["scale"],
                ),
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                sample_index=sample,
                prompt_version=self.template.version,
            )
            answer = await ask_json(self.engine, request, schema, self.max_corrections)
            if answer.value is None:
                return Verdict(None, tuple(orders), f"judge: {answer.error}")
            for label, index in zip(labels, order):
                totals[index] += float(answer.value[label]["score"])
        return Verdict(tuple(total / self.samples for total in totals), tuple(orders))
