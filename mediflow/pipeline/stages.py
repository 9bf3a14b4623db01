"""The three generation stages as LLM steps: render the messages, ask the engine, read the answer.

Each stage is one :class:`~mediflow.steps.LLMStep` (``request(row)`` / ``parse(row, answer)``).
What to ask lives in ``prompts/`` (``document``, ``instruction``, ``response_plain``,
``response_json``, ``correction``); how requests travel (limits, retries, cache) is the engine's
business. Every request is fully determined by the plan item (its seed and index) and the config,
so that a rerun produces byte-identical requests and the engine answers them from its cache.

A stage returns a :class:`~mediflow.steps.StepResult` (its text, or the reason it failed and the raw
answer, plus every teacher response it consumed, for the record's usage).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from mediflow.cases import Case, CaseSampler, load_case_book
from mediflow.config import RunConfig, SamplingConfig
from mediflow.pipeline.plan import InstructionGroup, PlanItem
from mediflow.prompts import PromptTemplate, load_prompts
from mediflow.steps import Answer, LLMStep, Reject, StepResult, ask
from mediflow.steps.structured import CompletesChat
from mediflow.taxonomy import DifficultyLevel, Taxonomy
from mediflow.teachers.base import ChatRequest

#: The templates a run renders, by stage.
TEMPLATE_NAMES: tuple[str, ...] = ("document", "instruction", "response_plain", "response_json", "correction")


def _request(template: PromptTemplate, sampling: SamplingConfig, item: PlanItem, salt: int, **variables: Any) -> ChatRequest:
    return ChatRequest(
        messages=template.render(**variables),
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        seed=(item.seed + salt) % (2**31),
        sample_index=item.index,
        prompt_version=template.version,
    )


def _text(answer: Answer, what: str) -> str | Reject:
    text = answer.text.strip()
    return text if text else Reject(f"the teacher returned an empty {what}")


@dataclass
class DocumentStep(LLMStep[tuple[PlanItem, Case], str]):
    """A synthetic clinical document of the item's type about its clinical case, at the item's difficulty, for its task."""

    template: PromptTemplate
    taxonomy: Taxonomy
    sampling: SamplingConfig
    levels: dict[str, DifficultyLevel]

    def request(self, row: tuple[PlanItem, Case]) -> ChatRequest:
        item, case = row
        document_type = self.taxonomy.document_types[item.document_type]
        return _request(
            self.template,
            self.sampling,
            item,
            0,
            document_type=document_type,
            category=self.taxonomy.categories[document_type.category],
            difficulty=self.levels[item.difficulty],
            case=case,
            requirements=self.taxonomy.tasks[item.task].document_requirements,
        )

    def parse(self, row: tuple[PlanItem, Case], answer: Answer) -> str | Reject:
        return _text(answer, "document")


@dataclass
class InstructionStep(LLMStep[tuple[InstructionGroup, "str | None"], str]):
    """The task's instruction at the group's difficulty and format.

    Written on the document when the instruction serves that one document; written for the
    group's document types (document ``None``) when it is reused, so that it cannot lean on facts
    only one document has.
    """

    template: PromptTemplate
    taxonomy: Taxonomy
    sampling: SamplingConfig
    levels: dict[str, DifficultyLevel]

    def request(self, row: tuple[InstructionGroup, str | None]) -> ChatRequest:
        group, document = row
        lead = group.items[0]
        variables: dict[str, Any] = dict(
            task=self.taxonomy.tasks[group.task],
            difficulty=self.levels[group.difficulty],
            document_type=self.taxonomy.document_types[lead.document_type],
            other_document_types=[name for name in group.document_types if name != lead.document_type],
            output_format=group.output_format,
        )
        if document is not None:
            variables["document"] = document
        return _request(self.template, self.sampling, lead, 1, **variables)

    def parse(self, row: tuple[InstructionGroup, str | None], answer: Answer) -> str | Reject:
        return _text(answer, "instruction")


@dataclass
class ResponseStep(LLMStep[tuple[PlanItem, str, str], str]):
    """The answer to the instruction on the document: plain text, or JSON valid against the task's schema."""

    reject_truncated = True  # the record's answer: never half a sentence

    plain: PromptTemplate
    json_template: PromptTemplate
    taxonomy: Taxonomy
    sampling: SamplingConfig
    max_corrections: int = 2
    correction_template: PromptTemplate | None = None

    def retry_budget(self, request: ChatRequest) -> int:
        return self.sampling.retry_max_tokens or 2 * request.max_tokens

    def request(self, row: tuple[PlanItem, str, str]) -> ChatRequest:
        item, instruction, document = row
        task = self.taxonomy.tasks[item.task]
        if item.output_format != "json":
            return _request(self.plain, self.sampling, item, 2, task=task, instruction=instruction, document=document)
        request = _request(self.json_template, self.sampling, item, 2, task=task, instruction=instruction, document=document)
        return dataclasses.replace(request, response_schema=task.output_schema)

    def parse(self, row: tuple[PlanItem, str, str], answer: Answer) -> str | Reject:
        if row[0].output_format == "json":
            return json.dumps(answer.value, ensure_ascii=False)
        return _text(answer, "response")


class Stages:
    """The stages of one run, bound to its engine, taxonomy, templates and config."""

    def __init__(self, engine: CompletesChat, taxonomy: Taxonomy, config: RunConfig) -> None:
        self.engine = engine
        self.taxonomy = taxonomy
        self.config = config
        prompts = load_prompts(config.prompts)
        self.templates = {name: prompts.get(name) for name in TEMPLATE_NAMES}
        levels = {level.name: level for level in taxonomy.difficulty_levels}
        self.cases = CaseSampler(taxonomy, load_case_book(config.taxonomy))
        sampling = config.sampling
        self.document_step = DocumentStep(self.templates["document"], taxonomy, sampling.document, levels)
        self.instruction_step = InstructionStep(self.templates["instruction"], taxonomy, sampling.instruction, levels)
        self.response_step = ResponseStep(
            self.templates["response_plain"],
            self.templates["response_json"],
            taxonomy,
            sampling.response,
            config.max_corrections,
            self.templates["correction"],
        )

    @property
    def versions(self) -> dict[str, str]:
        """Each template's version (a hash of its file), for the manifest and the cache keys."""
        return {name: template.version for name, template in self.templates.items()}

    def prompt_version(self, output_format: str) -> str:
        """The versions of the templates one record's calls go through, joined: ``doc+instr+resp[+corr]``."""
        response = "response_json" if output_format == "json" else "response_plain"
        names = ["document", "instruction", response] + (["correction"] if output_format == "json" else [])
        return "+".join(self.templates[name].version for name in names)

    def case_of(self, item: PlanItem) -> Case:
        """The clinical case behind the item's document: drawn from its document type's profile, seeded by the item."""
        return self.cases.case_for(item.document_type, item.seed)

    async def document(self, item: PlanItem, case: Case) -> StepResult[str]:
        return await ask(self.engine, self.document_step, (item, case))

    async def instruction(self, group: InstructionGroup, document: str | None) -> StepResult[str]:
        return await ask(self.engine, self.instruction_step, (group, document))

    async def response(self, item: PlanItem, instruction: str, document: str) -> StepResult[str]:
        return await ask(self.engine, self.response_step, (item, instruction, document))
