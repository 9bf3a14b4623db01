"""The judge's rubric, read from ``prompts/judge.yaml``: criteria, scale, anchors and answer schema.

The rubric is data so that a clinical user can reword a criterion, move an anchor or add a
criterion without touching code. The JSON Schema the judge must answer in is *built* from the
criteria (one bounded integer each, plus a short rationale), so the schema can never disagree with
the rubric the judge was shown, and every criterion name becomes an output column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediflow.errors import MediflowError
from mediflow.prompts import PromptTemplate, load_prompts

JUDGE_PROMPT = "judge"
RATIONALE = "rationale"


@dataclass(frozen=True)
class Criterion:
    """One scored criterion: its column name, the question the judge answers and the scale's anchors."""

    name: str
    question: str
    anchors: dict[int, str]


@dataclass(frozen=True)
class Rubric:
    """The judge prompt with its criteria and scale, validated."""

    template: PromptTemplate
    criteria: tuple[Criterion, ...]
    low: int
    high: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(criterion.name for criterion in self.criteria)

    @property
    def version(self) -> str:
        return self.template.version

    def answer_schema(self) -> dict[str, Any]:
        """The strict JSON Schema of one judge answer: the rationale first (reason, then score), then each criterion."""
        properties: dict[str, Any] = {RATIONALE: {"type": "string"}}
        for name in self.names:
            properties[name] = {"type": "integer", "minimum": self.low, "maximum": self.high}
        return {"type": "object", "additionalProperties": False, "required": list(properties), "properties": properties}

    def render(self, record: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        """The judge's messages for one record."""
        return self.template.render(
            task=record.get("task_type") or "unspecified",
            instruction=record.get("instruction") or "",
            document=record.get("input") or "",
            output=record.get("output") or "",
            output_format=record.get("output_format") or "plain_text",
            criteria=[{"name": c.name, "question": c.question, "anchors": c.anchors} for c in self.criteria],
            scale={"min": self.low, "max": self.high},
        )


def load_rubric(prompts_path: str | Path | None = None) -> Rubric:
    """The rubric from ``judge.yaml`` in ``prompts_path`` (else the built-in one); one-line errors naming the key."""
    template = load_prompts(prompts_path).get(JUDGE_PROMPT)
    where = template.path
    scale = template.data.get("scale")
    if not (isinstance(scale, dict) and isinstance(scale.get("min"), int) and isinstance(scale.get("max"), int) and scale["min"] < scale["max"]):
        raise MediflowError(f"{where}: 'scale' must be {{min: INT, max: INT}} with min < max, got {scale!r}")
    entries = template.data.get("criteria")
    if not isinstance(entries, list) or not entries:
        raise MediflowError(f"{where}: 'criteria' must be a non-empty list of {{name, question, anchors}}")
    criteria = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("question"), str):
            raise MediflowError(f"{where}: criteria[{index}] needs a 'name' and a 'question' (strings)")
        name = entry["name"]
        if not name.isidentifier() or name == RATIONALE:
            raise MediflowError(f"{where}: criteria[{index}]: {name!r} cannot be a column name (use letters, digits, _; not {RATIONALE!r})")
        anchors = entry.get("anchors")
        if not isinstance(anchors, dict) or set(anchors) != set(range(scale["min"], scale["max"] + 1)):
            raise MediflowError(f"{where}: criterion {name!r}: 'anchors' must give one text for each point {scale['min']}..{scale['max']}")
        criteria.append(Criterion(name, entry["question"], {int(k): str(v) for k, v in sorted(anchors.items())}))
    names = [c.name for c in criteria]
    if len(set(names)) != len(names):
        raise MediflowError(f"{where}: criterion names repeat: {', '.join(names)}")
    return Rubric(template, tuple(criteria), scale["min"], scale["max"])
