"""Error injection: the rejected side of a reference pair is the chosen answer with one named error.

Kinds with ``strategy: rewrite`` ask the teacher (``prompts/error_injection.yaml``) for
``{"rejected_output", "error_description"}`` as schema-validated JSON; ``icd10_sibling`` swaps a real
code for a real sibling in code, because a teacher asked for "a wrong code" may invent one that any
validity filter would catch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mediflow.preference.error_kinds import ErrorKind
from mediflow.preference.icd10 import swap_for_sibling
from mediflow.steps import Answer, PromptStep, ask
from mediflow.steps.structured import CompletesChat
from mediflow.teachers.base import ChatRequest

INJECTION_PROMPT = "error_injection"
#: Drop reason when the teacher's rewrite never validated, or no code could be swapped.
INJECTION_FAILED = "injection_failed"


@dataclass(frozen=True)
class Injection:
    """The corrupted answer and what was changed, or why there is none."""

    rejected: str | None
    description: str | None
    error: str | None = None


class InjectionStep(PromptStep[tuple[Mapping[str, Any], ErrorKind], Injection]):
    """The teacher rewrites a record's answer with one named error (``strategy: rewrite`` kinds)."""

    def request(self, row: tuple[Mapping[str, Any], ErrorKind]) -> ChatRequest:
        record, kind = row
        return ChatRequest(
            messages=self.template.render(
                instruction=record["instruction"],
                document=record["input"],
                output=record["output"],
                output_format=record.get("output_format") or "plain_text",
                error_name=kind.name,
                error_description=kind.description,
                error_how=kind.how,
            ),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
            prompt_version=self.template.version,
            response_schema=self.template.data["response_schema"],
        )

    def parse(self, row: tuple[Mapping[str, Any], ErrorKind], answer: Answer) -> Injection:
        return Injection(answer.value["rejected_output"], answer.value["error_description"])


class ErrorInjector:
    """Produces one corrupted answer per (record, error kind)."""

    def __init__(self, engine: CompletesChat, step: InjectionStep) -> None:
        self.engine = engine
        self.step = step

    async def inject(self, record: Mapping[str, Any], kind: ErrorKind, record_key: str) -> Injection:
        if kind.strategy == "icd10_sibling":
            swap = swap_for_sibling(record["output"], record_key, self.step.seed)
            if swap is None:
                return Injection(None, None, "no ICD-10-CM code with a sibling in the answer")
            return Injection(swap.text, swap.describe())
        result = await ask(self.engine, self.step, (record, kind))
        return result.value if result.value is not None else Injection(None, None, result.error)
