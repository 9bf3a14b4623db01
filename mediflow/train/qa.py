"""The ``qa`` stage: task data for pre-instruction tuning, generated from the documents by the teacher.

MediPhi trained each expert first on task data about its documents: question-answer pairs, and
also summaries, entity lists and relations. Each kind is a prompt file in ``prompts/``
(``qa``, ``pit_summary``, ``pit_entities``, ``pit_relations``) holding the teacher's wording, the
JSON Schema its answer must satisfy, and a ``training`` block saying how an answer becomes
prompt/completion rows. Adding a kind is adding a file.

The teacher machinery is the same as ``generate``'s: the teacher factory (the key from the
variable the config names, an error when it is unset), :class:`mediflow.engine.Engine` (limits,
retries, a durable response cache, so a rerun pays only for what is missing) and one LLM step,
:class:`QAStep`, run by :func:`mediflow.steps.run_step` (schema validation with correction turns).
The output is a contract folder of kind ``qa`` (:class:`mediflow.folders.OutputFolder`): the rows
in ``data/``, answers that stay invalid in ``rejects.parquet`` with the reason (never silently
dropped), the teacher cache in ``cache.sqlite``; ``data.task_data`` of a ``pit`` config names it.
With ``qa.mode: batch`` (``--batch``) the requests go through the provider's batch API first
(:mod:`mediflow.batch.runner`), then the rows are made from the cache as online.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa

from mediflow.batch.runner import fill_cache_in_batches
from mediflow.engine import Engine
from mediflow.errors import ConfigError
from mediflow.folders import OutputFolder, StagedWriter, reject_table
from mediflow.prompts import PromptTemplate, load_prompts
from mediflow.scale.ray_runner import StepWork, check_ray, run_step_on_ray
from mediflow.steps import Answer, LLMStep, StepResult, ask, open_engine, run_step
from mediflow.sync import run_sync
from mediflow.teachers.base import ChatRequest
from mediflow.teachers.config import api_key_of
from mediflow.teachers.negotiation import capabilities_by_role
from mediflow.train.config import StageConfig
from mediflow.train.data import load_documents

logger = logging.getLogger(__name__)

TASK_DATA_SCHEMA = pa.schema([(name, pa.string()) for name in ("prompt", "completion", "task", "document_id", "prompt_version")])
_ASKED_SCHEMA = pa.schema([(name, pa.string()) for name in ("task", "document_id", "prompt_version")])
#: The QA teacher's role in the manifest's ``teacher_capabilities`` (the config key of its section).
ROLE = "qa.teacher"

_TRAINING_TEMPLATES = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


def training_rows(template: PromptTemplate, answer: Any, document: str) -> list[dict[str, str]]:
    """Turn one schema-valid teacher answer into prompt/completion rows, per the prompt's ``training`` block."""
    training = template.data.get("training")
    if not isinstance(training, dict) or not {"prompt", "completion"} <= set(training):
        raise ConfigError(f"prompt '{template.name}' ({template.path}): needs a 'training' block with prompt and completion")
    prompt = _TRAINING_TEMPLATES.from_string(training["prompt"])
    completion = _TRAINING_TEMPLATES.from_string(training["completion"])
    items = answer[training["each"]] if training.get("each") else [None]
    return [
        {
            "prompt": prompt.render(item=item, answer=answer, document=document),
            "completion": completion.render(item=item, answer=answer, document=document),
        }
        for item in items
    ]


@dataclass(frozen=True)
class QAStep(LLMStep[tuple[dict[str, str], PromptTemplate], list[dict[str, str]]]):
    """One task-data prompt on one document: a schema-valid answer turned into prompt/completion rows."""

    count: int
    temperature: float
    max_tokens: int
    seed: int

    def request(self, row: tuple[dict[str, str], PromptTemplate]) -> ChatRequest:
        document, template = row
        schema = template.data.get("response_schema")
        if not isinstance(schema, dict):
            raise ConfigError(f"prompt '{template.name}' ({template.path}): needs a 'response_schema' (JSON Schema of the answer)")
        return ChatRequest(
            messages=template.render(document=document["text"], count=self.count),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
            prompt_version=template.version,
            response_schema=schema,
        )

    def parse(self, row: tuple[dict[str, str], PromptTemplate], answer: Answer) -> list[dict[str, str]]:
        document, template = row
        meta = {"task": template.name, "document_id": document["id"], "prompt_version": template.version}
        return [{**produced, **meta} for produced in training_rows(template, answer.value, document["text"])]


async def _ask_all(config: StageConfig, documents: list[dict[str, str]], templates: list[PromptTemplate], folder: OutputFolder) -> tuple[list[dict[str, str]], list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """The rows, the rejects, what the teacher negotiated with its server (``{role: capabilities}``) and
    what the manifest records of the engine's usage (and of batch mode)."""
    qa = config.qa
    section, limits = qa.teacher, qa.limits
    if section is None:  # StageConfig.check requires it for the qa stage
        raise ConfigError("qa.teacher is required for the qa stage")
    step = QAStep(count=qa.qa_pairs, temperature=qa.temperature, max_tokens=qa.max_tokens, seed=config.train.seed)
    rows = [(document, template) for document in documents for template in templates]
    produced: list[dict[str, str]] = []
    rejects: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    if qa.engine == "ray":  # the same step on Ray Data actors, sharing the run's rpm/tpm through the coordinator
        api_key_of(section, ROLE)  # an unset key variable: one line here, not an error inside every actor
        work = StepWork(step, section, limits, folder.cache_path, ROLE)
        run = await asyncio.to_thread(run_step_on_ray, rows, work, qa.ray, folder=folder.root)
        results, capabilities = run.results, capabilities_by_role({}, run.teacher_capabilities, folder.previous)
        details["usage"] = {"ray": run.session}
    else:
        async with open_engine(section, folder.cache_path, limits, where=ROLE, progress=True) as engine:
            if qa.mode == "batch":
                details["batch"] = await _fill_in_batches(engine, step, rows, folder, config)
            results = [result async for result in run_step(engine, step, rows, 2 * limits.concurrency)]
            capabilities = capabilities_by_role({ROLE: engine.teacher}, previous=folder.previous)
            details["usage"] = engine.stats.as_dict()
    for (document, template), result in zip(rows, results):
        if result.value is not None:
            produced += result.value
        else:
            meta = {"task": template.name, "document_id": document["id"], "prompt_version": template.version}
            rejects.append({**meta, "error": result.error, "text": result.raw_text})
    return produced, rejects, capabilities, details


async def _fill_in_batches(engine: Engine, step: QAStep, rows: list[tuple[dict[str, str], PromptTemplate]], folder: OutputFolder, config: StageConfig) -> dict[str, Any]:
    """``qa.mode: batch``: every (document, prompt) answered through provider batches, into the cache."""
    assert config.qa.teacher is not None

    async def one(row: tuple[dict[str, str], PromptTemplate]) -> StepResult[list[dict[str, str]]]:
        return await ask(engine, step, row)

    return await fill_cache_in_batches(
        folder.root,
        "qa",
        {ROLE: engine},
        {ROLE: config.qa.teacher},
        config.qa.batch,
        lambda: rows,
        one,
        window=2 * config.qa.limits.concurrency,
        progress=engine.progress,
    )


def _reject_table(rejects: list[dict[str, Any]]) -> pa.Table:
    """The answers still invalid after their corrections, in the one reject schema (the document and prompt they were for)."""
    asked = pa.Table.from_pylist([{name: row[name] for name in ("task", "document_id", "prompt_version")} for row in rejects], schema=_ASKED_SCHEMA)
    failed = len(rejects)
    return reject_table(asked, "qa", ["qa_failed"] * failed, [float("nan")] * failed, [row["error"] for row in rejects], [None] * failed, [row["text"] for row in rejects])


def _plain(config: StageConfig) -> dict[str, Any]:
    """What the manifest records of the stage config (what decides the rows: the qa section and data)."""
    plain = config.to_dict()
    return {section: plain[section] for section in ("qa", "data")}


def generate_task_data(config: StageConfig, *, overwrite: bool = False) -> Path:
    """Ask the teacher for every (document, task prompt); write the ``qa`` folder ``<output.dir>``.

    Its rows have ``prompt``, ``completion``, ``task``, ``document_id``, ``prompt_version``:
    exactly what ``data.task_data`` of a ``pit`` config reads (name the folder). Works in a notebook.
    """
    return run_sync(generate_task_data_async(config, overwrite=overwrite))


async def generate_task_data_async(config: StageConfig, *, overwrite: bool = False) -> Path:
    """:func:`generate_task_data` for callers already running an event loop."""
    if config.qa.engine == "ray":
        check_ray(config.qa.ray)  # before anything is written
    documents_path = config.path(config.data.documents)
    documents = load_documents(documents_path, config.data.text_field)
    if config.data.max_samples:
        documents = documents[: config.data.max_samples]
    library = load_prompts(config.path(config.data.prompts) if config.data.prompts else None)
    templates = [library.get(name) for name in config.qa.tasks]
    folder = OutputFolder.open(config.path(config.output.dir), kind="qa", holds="task_data", config=_plain(config), input_paths=[documents_path], overwrite=overwrite)
    with folder:
        rows, rejects, folder.manifest.teacher_capabilities, details = await _ask_all(config, documents, templates, folder)
        writer = StagedWriter(folder)
        try:
            writer.keep(pa.Table.from_pylist(rows, schema=TASK_DATA_SCHEMA))
            writer.reject(_reject_table(rejects))
            writer.publish(TASK_DATA_SCHEMA, {"documents": len(documents), "rows": len(rows), "rejected": len(rejects)}, details)
        except BaseException:
            writer.abandon()
            raise
    logger.info("task data: %d rows from %d documents x %d prompts -> %s", len(rows), len(documents), len(templates), folder.data_dir)
    if rejects:
        logger.info("rejected: %d teacher answers still invalid after corrections -> %s", len(rejects), folder.rejects_path)
    return folder.root
