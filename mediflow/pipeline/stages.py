"""The three generation stages: render the messages, ask the engine, read the answer.

Each stage is one small method. What to ask lives in ``prompts/`` (``document``, ``instruction``,
``response_plain``, ``response_json``, ``correction``); how requests travel (limits, retries,
cache) is the engine's business. Every request is fully determined by the plan item (its seed and
index) and the config, so that a rerun produces byte-identical requests and the engine answers them
from its cache.

A stage returns a :class:`StageResult`: the text it produced, or the reason it failed and the raw
answer, plus every teacher response it consumed (for the record's usage).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mediflow import terminology
from mediflow.cases import Case, CaseSampler, load_case_book
from mediflow.config import RunConfig, SamplingConfig
from mediflow.pipeline.plan import InstructionGroup, PlanItem
from mediflow.pipeline.structured import CompletesChat, ask_json
from mediflow.prompts import load_prompts
from mediflow.teachers.base import ChatRequest, ChatResponse

#: The templates a run renders, by stage.
TEMPLATE_NAMES: tuple[str, ...] = ("document", "instruction", "response_plain", "response_json", "correction")


@dataclass(frozen=True)
class StageResult:
    """What one stage produced for one item (or group)."""

    text: str | None  # the accepted text, None when the stage failed
    raw_text: str = ""  # the teacher's last raw answer (kept for rejects)
    error: str | None = None
    responses: tuple[ChatResponse, ...] = field(default=())
    corrections: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class Stages:
    """The stages of one run, bound to its engine, taxonomy, templates and config."""

    def __init__(self, engine: CompletesChat, taxonomy: Any, config: RunConfig) -> None:
        self.engine = engine
        self.taxonomy = taxonomy
        self.config = config
        prompts = load_prompts(config.prompts)
        self.templates = {name: prompts.get(name) for name in TEMPLATE_NAMES}
        self._levels = {level.name: level for level in taxonomy.difficulty_levels}
        self.cases = CaseSampler(taxonomy, load_case_book(config.taxonomy))

    @property
    def versions(self) -> dict[str, str]:
        """Each template's version (a hash of its file), for the manifest and the cache keys."""
        return {name: template.version for name, template in self.templates.items()}

    def prompt_version(self, output_format: str) -> str:
        """The versions of the templates one record's calls go through, joined: ``doc+instr+resp[+corr]``."""
        response = "response_json" if output_format == "json" else "response_plain"
        names = ["document", "instruction", response] + (["correction"] if output_format == "json" else [])
        return "+".join(self.templates[name].version for name in names)

    def _request(self, template: str, sampling: SamplingConfig, item: PlanItem, salt: int, **variables: Any) -> ChatRequest:
        return ChatRequest(
            messages=self.templates[template].render(**variables),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=(item.seed + salt) % (2**31),
            sample_index=item.index,
            prompt_version=self.templates[template].version,
        )

    @staticmethod
    def _text_result(response: ChatResponse, what: str) -> StageResult:
        text = response.text.strip()
        if not text:
            return StageResult(None, response.text, f"the teacher returned an empty {what}", (response,))
        return StageResult(text, response.text, None, (response,))

    def warm_up(self) -> None:
        """Load the ICD-10-CM tables now (seconds, once per process), not inside the first request's timing."""
        terminology.is_valid("I10")

    def case_of(self, item: PlanItem) -> Case:
        """The clinical case behind the item's document: drawn from its document type's profile, seeded by the item."""
        return self.cases.case_for(item.document_type, item.seed)

    def document_request(self, item: PlanItem, case: Case) -> ChatRequest:
        """The request that writes the item's document about ``case`` (also what ``--dry-run`` measures)."""
        document_type = self.taxonomy.document_types[item.document_type]
        return self._request(
            "document",
            self.config.sampling.document,
            item,
            0,
            document_type=document_type,
            category=self.taxonomy.categories[document_type.category],
            difficulty=self._levels[item.difficulty],
            case=case,
            requirements=self.taxonomy.tasks[item.task].document_requirements,
        )

    async def document(self, item: PlanItem, case: Case) -> StageResult:
        """A synthetic clinical document of the item's type about ``case``, at the item's difficulty, for its task."""
        return self._text_result(await self.engine.complete(self.document_request(item, case)), "document")

    def instruction_request(self, group: InstructionGroup, document: str | None) -> ChatRequest:
        """The request that writes the group's instruction (on ``document`` when it serves that one document)."""
        lead = group.items[0]
        variables: dict[str, Any] = dict(
            task=self.taxonomy.tasks[group.task],
            difficulty=self._levels[group.difficulty],
            document_type=self.taxonomy.document_types[lead.document_type],
            other_document_types=[name for name in group.document_types if name != lead.document_type],
            output_format=group.output_format,
        )
        if document is not None:
            variables["document"] = document
        return self._request("instruction", self.config.sampling.instruction, lead, 1, **variables)

    async def instruction(self, group: InstructionGroup, document: str | None) -> StageResult:
        """The task's instruction at the group's difficulty and format.

        Written on ``document`` when the instruction serves that one document; written for the
        group's document types (``document=None``) when it is reused, so that it cannot lean on
        facts only one document has.
        """
        return self._text_result(await self.engine.complete(self.instruction_request(group, document)), "instruction")

    def response_request(self, item: PlanItem, instruction: str, document: str) -> ChatRequest:
        """The first request for the answer to ``instruction`` on ``document`` (plain text or JSON)."""
        template = "response_json" if item.output_format == "json" else "response_plain"
        task = self.taxonomy.tasks[item.task]
        return self._request(template, self.config.sampling.response, item, 2, task=task, instruction=instruction, document=document)

    async def response(self, item: PlanItem, instruction: str, document: str) -> StageResult:
        """The answer to ``instruction`` on ``document``: plain text, or JSON valid against the task's schema."""
        task = self.taxonomy.tasks[item.task]
        request = self.response_request(item, instruction, document)
        if item.output_format != "json":
            return self._text_result(await self.engine.complete(request), "response")
        answer = await ask_json(
            self.engine,
            request,
            task.output_schema,
            self.config.max_corrections,
            correction_template=self.templates["correction"],
        )
        if answer.error is not None:
            return StageResult(None, answer.text, answer.error, answer.responses, answer.corrections)
        text = json.dumps(answer.value, ensure_ascii=False)
        return StageResult(text, answer.text, None, answer.responses, answer.corrections)
