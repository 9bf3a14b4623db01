"""Turn one plan item's stage results into a record row (GENERATION_SCHEMA) or a reject row.

Usage: a record carries the tokens of every call made for it (document, response, correction
turns); the instruction call of a group is counted on the group's first record only, so summing the
``usage`` column over the dataset gives what the dataset cost. Cost is ``None`` when no price is
known for the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from mediflow.pipeline.plan import PlanItem
from mediflow.records import content_id, record_id, to_messages
from mediflow.steps.contract import TRUNCATED
from mediflow.teachers.base import ChatResponse


def item_id(seed: int, item: PlanItem) -> str:
    """A plan item's id: the same item of the same run always has the same id (rejects refer to it)."""
    return content_id(seed, item.task, item.document_type, item.difficulty, item.output_format, item.index)


def instruction_id(task: str, instruction: str) -> str:
    """Records sharing an instruction share this id (the released set's ``instruction_id``)."""
    return content_id("instruction", task, instruction)


def document_id(document_type: str, document: str) -> str:
    return content_id("document", document_type, document)


def usage(responses: Iterable[ChatResponse], cost_of: Callable[[ChatResponse], float | None]) -> dict[str, Any]:
    """Tokens over ``responses`` and their cost (``cost_of`` is the engine's pricing; None if unpriced).

    Cached answers count too: this is what the record cost to make, whichever run paid for it.
    """
    prompt = completion = 0
    cost: float | None = 0.0
    for response in responses:
        prompt += response.prompt_tokens
        completion += response.completion_tokens
        price = cost_of(response)
        cost = None if price is None or cost is None else cost + price
    return {"prompt_tokens": prompt, "completion_tokens": completion, "cost_usd": cost}


def record_row(
    item: PlanItem,
    *,
    instruction: str | None,
    document: str,
    output: str | None,
    document_category: str,
    teacher: str,
    prompt_version: str,
    usage: dict[str, Any],
    created_at: datetime,
    case: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One accepted record (``instruction`` / ``output`` are None when those stages were not run)."""
    return {
        "id": record_id(instruction or "", document, output or "", item.task, item.output_format),
        "instruction": instruction,
        "input": document,
        "output": output,
        "task_type": item.task,
        "input_data": item.document_type,
        "output_format": item.output_format,
        "difficulty_level": item.difficulty,
        "document_category": document_category,
        "instruction_id": instruction_id(item.task, instruction) if instruction is not None else None,
        "document_id": document_id(item.document_type, document),
        "messages": to_messages(instruction, document, output) if instruction is not None else None,
        "teacher": teacher,
        "prompt_version": prompt_version,
        "usage": usage,
        "created_at": created_at,
        "case": case,
    }


def reject_row(
    item: PlanItem,
    *,
    run_seed: int,
    stage: str,
    reason: str,
    raw_text: str,
    instruction: str | None,
    document: str | None,
    corrections: int,
    teacher: str,
    prompt_version: str,
    usage: dict[str, Any],
    created_at: datetime,
    case: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One item kept out of the dataset, with everything needed to see why."""
    return {
        "item_id": item_id(run_seed, item),
        "stage": stage,
        "rule": TRUNCATED if reason.startswith(TRUNCATED) else f"{stage}_failed",
        "reason": reason,
        "raw_text": raw_text,
        "cell": item.cell,
        "task_type": item.task,
        "input_data": item.document_type,
        "difficulty_level": item.difficulty,
        "output_format": item.output_format,
        "instruction_id": instruction_id(item.task, instruction) if instruction is not None else None,
        "document_id": document_id(item.document_type, document) if document is not None else None,
        "instruction": instruction,
        "input": document,
        "corrections": corrections,
        "teacher": teacher,
        "prompt_version": prompt_version,
        "usage": usage,
        "created_at": created_at,
        "case": case,
    }
