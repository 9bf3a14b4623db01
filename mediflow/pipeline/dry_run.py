"""``generate --dry-run``: what a run would ask, cost and take, with nothing sent and nothing written.

The plan is counted without being enumerated (strata from :meth:`Plan.strata`), a stratified sample
of its first items gets its cases drawn and its prompts rendered exactly as the run would render
them, and the figures are scaled to the whole plan:

- requests: one document and one response per item, one instruction per group, and up to
  ``max_corrections`` correction turns per JSON item (shown as a range);
- prompt tokens: measured on the rendered sample prompts (:data:`CHARS_PER_TOKEN` characters a
  token, OpenAI's rule of thumb for English), plus the expected document and instruction text the
  later prompts embed;
- completion tokens: a document of the middle of its type's ``typical_length`` at
  :data:`TOKENS_PER_WORD`, capped by the stage's ``max_tokens``; instructions and answers at
  :data:`EXPECTED_INSTRUCTION_TOKENS` / :data:`EXPECTED_RESPONSE_TOKENS`, capped likewise;
- cost at ``prices.input_per_1k`` / ``output_per_1k``, online and through the provider's batch API
  side by side (``prices.batch_*``, else the model's batch list price); time at ``limits.rpm`` /
  ``tpm`` (the slower of the two buckets) online, and in batch mode one completion window per
  round of the request chain.

``--plan-out plan.parquet`` writes every plan item with its case (streamed in batches, written to a
temporary file and renamed), and nothing else. With ``--shard K/N`` both are of that share only (its
instruction groups are counted in one pass over the lazy plan), which is what that job of a
sharded run would ask.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mediflow.cases import Case
from mediflow.config import RunConfig
from mediflow.engine.accounting import price_per_1k
from mediflow.errors import MediflowError
from mediflow.folders.guards import check_output, make_parent
from mediflow.pipeline.plan import InstructionGroup, Plan, PlanItem, build_plan
from mediflow.pipeline.share import Share
from mediflow.pipeline.stages import Stages
from mediflow.records import CASE_TYPE
from mediflow.taxonomy import load_taxonomy
from mediflow.teachers.base import ChatRequest, ChatResponse

CHARS_PER_TOKEN = 4.0
TOKENS_PER_WORD = 1.33
EXPECTED_INSTRUCTION_TOKENS = 120
EXPECTED_RESPONSE_TOKENS = 300
#: Items whose prompts are rendered and measured.
SAMPLE_ITEMS = 200

PLAN_SCHEMA = pa.schema(
    [
        pa.field("position", pa.int64()),
        pa.field("task_type", pa.string()),
        pa.field("input_data", pa.string()),
        pa.field("difficulty_level", pa.string()),
        pa.field("output_format", pa.string()),
        pa.field("index", pa.int64()),
        pa.field("seed", pa.int64()),
        pa.field("instruction_group", pa.string()),
        pa.field("case", CASE_TYPE),
    ]
)


class _NoEngine:
    """Stands where the engine would: a dry run renders requests and never sends one."""

    async def complete(self, request: ChatRequest) -> ChatResponse:
        raise MediflowError("a dry run sends no request")


def _stages(config: RunConfig, taxonomy: Any) -> Stages:
    return Stages(_NoEngine(), taxonomy, config)


@dataclass
class DryRunReport:
    """The figures ``--dry-run`` prints."""

    items: int
    groups: int
    cells: int
    by_task: Counter[str]
    by_difficulty: Counter[str]
    by_format: Counter[str]
    by_category: Counter[str]
    requests: int
    max_correction_requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    #: The same tokens bought through the provider's batch API (``mode: batch``).
    batch_cost_usd: float | None
    priced_by: str
    minutes: float | None
    limited_by: str | None
    sample: list[tuple[PlanItem, Case]] = field(default_factory=list)
    #: ``"K/N"`` when the figures are one share's (``--shard``), and the whole plan's item count.
    share: str | None = None
    plan_items: int = 0
    mode: str = "online"
    #: Rounds of batches a batch run waits for at least (document, instruction, response), and the window of each.
    batch_rounds: int = 0
    completion_window: str = "24h"

    def lines(self) -> list[str]:
        """The report as printed lines."""

        def top(counts: Counter[str], limit: int = 14) -> str:
            shown = ", ".join(f"{name} {count:,}" for name, count in counts.most_common(limit))
            return shown + (f", ... {len(counts) - limit} more" if len(counts) > limit else "")

        of_share = f" (share {self.share} of a plan of {self.plan_items:,} items)" if self.share else ""
        out = [
            f"plan: {self.items:,} items in {self.cells:,} cells, {self.groups:,} instruction groups{of_share}",
            f"  by task: {top(self.by_task)}",
            f"  by difficulty: {top(self.by_difficulty)}",
            f"  by format: {top(self.by_format)}",
            f"  by document category: {top(self.by_category)}",
            f"sample of cases (the first {len(self.sample)} items of the plan):",
        ]
        for item, case in self.sample:
            conditions = "; ".join(f"{c.code} {c.description}" + ("" if c.role == "primary" else f" [{c.role}]") for c in case.conditions)
            drugs = f"; drugs: {', '.join(case.drugs)}" if case.drugs else ""
            who = f"population: {case.population}" if case.population else f"{case.age}y {case.sex}, {case.setting}, {case.acuity}"
            out.append(f"  {item.task} / {item.document_type}: {who}: {conditions}{drugs}")
        corrections = f" (+ up to {self.max_correction_requests:,} JSON correction turns)" if self.max_correction_requests else ""
        out.append(f"requests: {self.requests:,}{corrections}")
        out.append(f"expected tokens: {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion")
        chosen = {"online": " <- this config (mode: online)", "batch": " <- this config (mode: batch)"}
        if self.cost_usd is None:
            out.append("expected cost: unknown (set prices.input_per_1k and prices.output_per_1k)")
        else:
            out.append(f"expected cost at {self.priced_by}:")
            out.append(f"  online: ${self.cost_usd:,.2f}" + (chosen["online"] if self.mode == "online" else ""))
            batch = f"${self.batch_cost_usd:,.2f}" if self.batch_cost_usd is not None else "unknown (set prices.batch_input_per_1k and prices.batch_output_per_1k)"
            out.append(f"  batch:  {batch}" + (chosen["batch"] if self.mode == "batch" else ""))
        online_time = f"{self.minutes:,.1f} min at the configured {self.limited_by}" if self.minutes is not None else "not bounded by the config (set limits.rpm / limits.tpm)"
        out.append(f"expected time: online {online_time}; batch: {self.batch_rounds}+ rounds (one per step of the request chain), each answered within the {self.completion_window} completion window")
        out.append("nothing was sent and nothing was written")
        return out


def dry_run(config: RunConfig, sample_cases: int = 5) -> DryRunReport:
    """The dry-run figures of ``config``: no teacher is made, no request sent, no file written."""
    taxonomy = load_taxonomy(Path(config.taxonomy) if config.taxonomy else None)
    plan = build_plan(config, taxonomy)
    stages = _stages(config, taxonomy)
    if config.shard:
        strata, groups, sampled = _share_strata(plan, Share.parse(config.shard))
    else:
        strata, groups, sampled = plan.strata(), plan.group_count, plan.sample(min(SAMPLE_ITEMS, len(plan)))
    by: dict[str, Counter[str]] = {key: Counter() for key in ("task", "difficulty", "format", "category")}
    for (task, document_type, difficulty, fmt), count in strata.items():
        by["task"][task] += count
        by["difficulty"][difficulty] += count
        by["format"][fmt] += count
        by["category"][taxonomy.document_types[document_type].category] += count

    cases = [stages.case_of(item) for item in sampled]
    per_item_prompt, per_item_completion = _sample_tokens(stages, plan, sampled, cases, taxonomy)
    items = sum(strata.values())
    json_items = by["format"]["json"]
    requests = items * int("document" in config.stages) + groups * int("instruction" in config.stages) + items * int("response" in config.stages)
    prompt = round(per_item_prompt * items)
    completion = round(per_item_completion * items)
    prices = config.prices
    model = config.teacher.spec.partition(":")[2]
    price = price_per_1k(model, prices.input_per_1k, prices.output_per_1k)
    batch_price = price_per_1k(
        model,
        prices.input_per_1k,
        prices.output_per_1k,
        mode="batch",
        batch_input_override=prices.batch_input_per_1k,
        batch_output_override=prices.batch_output_per_1k,
    )
    cost = None if price is None else prompt / 1000 * price[0] + completion / 1000 * price[1]
    batch_cost = None if batch_price is None else prompt / 1000 * batch_price[0] + completion / 1000 * batch_price[1]
    configured = any(value is not None for value in (prices.input_per_1k, prices.output_per_1k, prices.batch_input_per_1k, prices.batch_output_per_1k))
    priced_by = "the configured prices" if configured else f"the list prices of {model or config.teacher.spec}"
    minutes, limited_by = None, None
    bounds = []
    if config.limits.rpm:
        bounds.append((requests / config.limits.rpm, f"rpm ({config.limits.rpm:,g})"))
    if config.limits.tpm:
        bounds.append(((prompt + completion) / config.limits.tpm, f"tpm ({config.limits.tpm:,g})"))
    if bounds:
        minutes, limited_by = max(bounds)
    return DryRunReport(
        items=items,
        groups=groups,
        cells=len(strata),
        by_task=by["task"],
        by_difficulty=by["difficulty"],
        by_format=by["format"],
        by_category=by["category"],
        requests=requests,
        max_correction_requests=json_items * config.max_corrections if "response" in config.stages else 0,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=cost,
        batch_cost_usd=batch_cost,
        priced_by=priced_by,
        minutes=minutes,
        limited_by=limited_by,
        sample=list(zip(sampled, cases))[:sample_cases],
        share=str(Share.parse(config.shard)) if config.shard else None,
        plan_items=len(plan),
        mode=config.mode,
        batch_rounds=len(config.stages),
        completion_window=config.batch.completion_window,
    )


def _share_strata(plan: Plan, share: Share) -> tuple[Counter[tuple[str, str, str, str]], int, list[PlanItem]]:
    """A share's items per stratum, its instruction groups, and its first :data:`SAMPLE_ITEMS` items (one pass)."""
    strata: Counter[tuple[str, str, str, str]] = Counter()
    groups = 0
    sample: list[PlanItem] = []
    for group in share.select(plan.groups()):
        groups += 1
        for item in group.items:
            strata[(item.task, item.document_type, item.difficulty, item.output_format)] += 1
            if len(sample) < SAMPLE_ITEMS:
                sample.append(item)
    return strata, groups, sample


def _selected_groups(config: RunConfig, plan: Plan) -> Iterator[InstructionGroup]:
    """The plan's instruction groups, or those of the run's ``--shard`` share."""
    return Share.parse(config.shard).select(plan.groups()) if config.shard else plan.groups()


def _tokens(text: str) -> float:
    return len(text) / CHARS_PER_TOKEN


def _request_tokens(request: Any) -> float:
    return sum(_tokens(content) for _, content in request.messages)


def _sample_tokens(stages: Stages, plan: Plan, items: list[PlanItem], cases: list[Case], taxonomy: Any) -> tuple[float, float]:
    """Expected prompt and completion tokens per item, measured on ``items`` (the instruction call spread over its group)."""
    config = stages.config
    sampling = config.sampling
    group_size = len(plan) / max(plan.group_count, 1)
    prompt = completion = 0.0
    for item, case in zip(items, cases):
        typical = taxonomy.document_types[item.document_type].typical_length
        document_tokens = min(sampling.document.max_tokens, (typical.min_words + typical.max_words) / 2 * TOKENS_PER_WORD)
        instruction_tokens = min(sampling.instruction.max_tokens, EXPECTED_INSTRUCTION_TOKENS)
        response_tokens = min(sampling.response.max_tokens, EXPECTED_RESPONSE_TOKENS)
        if "document" in config.stages:
            prompt += _request_tokens(stages.document_step.request((item, case)))
            completion += document_tokens
        if "instruction" in config.stages:
            group = _single_group(item)
            on_document = config.documents_per_instruction == 1
            prompt += (_request_tokens(stages.instruction_step.request((group, "" if on_document else None))) + (document_tokens if on_document else 0)) / group_size
            completion += instruction_tokens / group_size
        if "response" in config.stages:
            prompt += _request_tokens(stages.response_step.request((item, "", ""))) + document_tokens + instruction_tokens
            completion += response_tokens
    count = max(len(items), 1)
    return prompt / count, completion / count


def _single_group(item: PlanItem) -> InstructionGroup:
    return InstructionGroup("dry-run", item.task, item.difficulty, item.output_format, (item,), (item.document_type,))


def check_plan_out(config: RunConfig, path: Path) -> Path:
    """The one output guard for a plan file: not the config, the taxonomy or prompts it reads, nor a file of a run's folder."""
    return check_output(Path(path), [Path(p) for p in (config.taxonomy, config.prompts) if p], what="plan file", file=True)


def write_plan(config: RunConfig, path: Path, batch_rows: int = 10_000) -> int:
    """Write every plan item with its case to ``path`` (Parquet, atomically, its missing folders created); the number of rows."""
    path = make_parent(check_plan_out(config, path))
    taxonomy = load_taxonomy(Path(config.taxonomy) if config.taxonomy else None)
    plan = build_plan(config, taxonomy)
    stages = _stages(config, taxonomy)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    rows: list[dict[str, Any]] = []
    written = 0
    try:
        with pq.ParquetWriter(tmp, PLAN_SCHEMA) as writer:
            for group in _selected_groups(config, plan):
                for item in group.items:
                    rows.append(
                        {
                            "position": item.position,
                            "task_type": item.task,
                            "input_data": item.document_type,
                            "difficulty_level": item.difficulty,
                            "output_format": item.output_format,
                            "index": item.index,
                            "seed": item.seed,
                            "instruction_group": group.key,
                            "case": stages.case_of(item).to_row(),
                        }
                    )
                if len(rows) >= batch_rows:
                    writer.write_table(pa.Table.from_pylist(rows, schema=PLAN_SCHEMA))
                    written += len(rows)
                    rows = []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=PLAN_SCHEMA))
                written += len(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written
