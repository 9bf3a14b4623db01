"""How one instruction group flows through the stages, item by item, with no batch barrier.

Without reuse (``documents_per_instruction: 1``) the instruction is written on its one document,
after it. With reuse, the instruction is written for the group's document types (not on one
document, so it cannot lean on facts only that document has), concurrently with the documents,
and serves them all. Each item then gets its response and is handed to the collector the moment
it is finished: no item waits for another group. Items whose shard an earlier run already
committed are not redone. A group's instruction call is counted in the usage of its first item.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from mediflow.cases import Case
from mediflow.config import RunConfig
from mediflow.pipeline.collect import Collects
from mediflow.pipeline.plan import InstructionGroup, PlanItem
from mediflow.pipeline.rows import record_row, reject_row, usage
from mediflow.pipeline.stages import Stages
from mediflow.steps import StepResult, gather_all
from mediflow.teachers.base import ChatResponse


class GroupFlow:
    """Runs instruction groups through ``stages`` and hands every finished item to ``collector``."""

    def __init__(
        self,
        stages: Stages,
        collector: Collects,
        config: RunConfig,
        *,
        teacher: str,
        created_at: datetime,
        cost_of: Callable[[ChatResponse], float | None],
        on_item_done: Callable[[], None] = lambda: None,
    ) -> None:
        self.stages = stages
        self.collector = collector
        self.config = config
        self.teacher = teacher
        self.created_at = created_at
        self.cost_of = cost_of
        self.on_item_done = on_item_done
        self._versions = {fmt: stages.prompt_version(fmt) for fmt in ("plain_text", "json")}
        self._categories = {name: doc.category for name, doc in stages.taxonomy.document_types.items()}

    def pending(self, group: InstructionGroup) -> bool:
        """Whether any item of ``group`` still has to be made."""
        return not all(self.collector.is_finished(item.position) for item in group.items)

    async def run(self, group: InstructionGroup) -> None:
        cases = [self.stages.case_of(item) for item in group.items]
        documents: list[StepResult[str]]
        instruction: StepResult[str] | None = None
        if "instruction" not in self.config.stages:
            documents = await gather_all(*(self.stages.document(i, c) for i, c in zip(group.items, cases)))
        elif self.config.documents_per_instruction > 1:  # reused: written for the types, alongside the documents
            *documents, instruction = await gather_all(*(self.stages.document(i, c) for i, c in zip(group.items, cases)), self.stages.instruction(group, None))
        else:  # one document, one instruction written on it
            documents = [await self.stages.document(group.items[0], cases[0])]
            if documents[0].ok:
                instruction = await self.stages.instruction(group, documents[0].value)
        await gather_all(*(self._finish(item, case, document, instruction, charged=(index == 0)) for index, (item, case, document) in enumerate(zip(group.items, cases, documents)) if not self.collector.is_finished(item.position)))

    async def _finish(self, item: PlanItem, case: Case, document: StepResult[str], instruction: StepResult[str] | None, charged: bool) -> None:
        responses = list(document.responses)
        if charged and instruction is not None:
            responses += instruction.responses
        if not document.ok:
            self._reject(item, case, "document", document, None, None, responses)
        elif instruction is not None and not instruction.ok:
            self._reject(item, case, "instruction", instruction, None, document.value, responses)
        elif "response" not in self.config.stages:
            self._record(item, case, instruction.value if instruction else None, document.value or "", None, responses)
        else:
            assert instruction is not None and instruction.value is not None
            answer = await self.stages.response(item, instruction.value, document.value or "")
            responses += answer.responses
            if answer.ok:
                self._record(item, case, instruction.value, document.value or "", answer.value, responses)
            else:
                self._reject(item, case, "response", answer, instruction.value, document.value, responses)
        self.on_item_done()

    def _record(self, item: PlanItem, case: Case, instruction: str | None, document: str, output: str | None, responses: list[ChatResponse]) -> None:
        row = record_row(
            item,
            instruction=instruction,
            document=document,
            output=output,
            document_category=self._categories[item.document_type],
            teacher=self.teacher,
            prompt_version=self._versions[item.output_format],
            usage=usage(responses, self.cost_of),
            created_at=self.created_at,
            case=case.to_row(),
        )
        self.collector.add(item.position, "record", row)

    def _reject(
        self,
        item: PlanItem,
        case: Case,
        stage: str,
        result: StepResult[str],
        instruction: str | None,
        document: str | None,
        responses: list[ChatResponse],
    ) -> None:
        row = reject_row(
            item,
            run_seed=self.config.seed,
            stage=stage,
            reason=result.error or "",
            raw_text=result.raw_text,
            instruction=instruction,
            document=document,
            corrections=result.corrections,
            teacher=self.teacher,
            prompt_version=self._versions[item.output_format],
            usage=usage(responses, self.cost_of),
            created_at=self.created_at,
            case=case.to_row(),
        )
        self.collector.add(item.position, "reject", row)
