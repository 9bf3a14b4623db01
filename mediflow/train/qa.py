"""The ``qa`` stage: task data for pre-instruction tuning, generated from the documents by the teacher.

MediPhi trained each expert first on task data about its documents: question-answer pairs, and
also summaries, entity lists and relations. Each kind is a prompt file in ``prompts/``
(``qa``, ``pit_summary``, ``pit_entities``, ``pit_relations``) holding the teacher's wording, the
JSON Schema its answer must satisfy, and a ``training`` block saying how an answer becomes
prompt/completion rows. Adding a kind is adding a file.

The teacher machinery is the same as ``generate``'s: :class:`mediflow.engine.Engine` (limits,
retries, a durable response cache, so a rerun pays only for what is missing) and
:func:`mediflow.pipeline.structured.ask_json` (schema validation with correction turns). Answers
that stay invalid are written to ``rejects.jsonl`` with the reason, never silently dropped.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa
import pyarrow.parquet as pq

from mediflow.errors import ConfigError
from mediflow.train.config import StageConfig
from mediflow.train.data import load_documents

TASK_DATA_NAME = "task_data.parquet"
REJECTS_NAME = "rejects.jsonl"

_TRAINING_TEMPLATES = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


def training_rows(template: Any, answer: Any, document: str) -> list[dict[str, str]]:
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


async def _ask_all(config: StageConfig, documents: list[dict[str, str]], templates: list[Any], cache_path: Path) -> tuple[list[dict], list[dict]]:
    from mediflow.engine import Engine, EngineConfig
    from mediflow.pipeline.structured import ask_json
    from mediflow.teachers import ChatRequest, make_teacher

    model = config.model
    api_key = os.environ.get(model.api_key_env) if model.api_key_env else None
    teacher = make_teacher(model.teacher, base_url=model.base_url, api_key=api_key)
    method = config.method

    async def one(engine: Any, document: dict[str, str], template: Any) -> tuple[list[dict], dict | None]:
        schema = template.data.get("schema")
        if not isinstance(schema, dict):
            raise ConfigError(f"prompt '{template.name}' ({template.path}): needs a 'schema' (JSON Schema of the answer)")
        request = ChatRequest(
            messages=template.render(document=document["text"], count=method.qa_pairs),
            temperature=method.temperature,
            max_tokens=method.max_tokens,
            seed=config.train.seed,
            prompt_version=template.version,
        )
        answer = await ask_json(engine, request, schema)
        meta = {"task": template.name, "document_id": document["id"], "prompt_version": template.version}
        if answer.value is None:
            return [], {**meta, "error": answer.error, "text": answer.text}
        return [{**row, **meta} for row in training_rows(template, answer.value, document["text"])], None

    try:
        async with Engine(teacher, cache_path=cache_path, config=EngineConfig(concurrency=method.concurrency)) as engine:
            results = await asyncio.gather(*(one(engine, doc, tpl) for doc in documents for tpl in templates))
    finally:
        await teacher.aclose()
    rows = [row for produced, _ in results for row in produced]
    rejects = [reject for _, reject in results if reject is not None]
    return rows, rejects


def generate_task_data(config: StageConfig) -> Path:
    """Ask the teacher for every (document, task prompt); write ``<output.dir>/task_data.parquet``.

    The Parquet has ``prompt``, ``completion``, ``task``, ``document_id``, ``prompt_version``:
    exactly what ``data.task_data`` of a ``pit`` config reads.
    """
    from mediflow.prompts import load_prompts

    documents = load_documents(config.path(config.data.documents), config.data.text_field)
    if config.data.max_samples:
        documents = documents[: config.data.max_samples]
    library = load_prompts(config.path(config.data.prompts) if config.data.prompts else None)
    templates = [library.get(name) for name in config.method.tasks]
    output = config.path(config.output.dir)
    output.mkdir(parents=True, exist_ok=True)
    rows, rejects = asyncio.run(_ask_all(config, documents, templates, output / "teacher_cache.sqlite"))
    target = output / TASK_DATA_NAME
    columns = ["prompt", "completion", "task", "document_id", "prompt_version"]
    table = pa.Table.from_pylist(rows, schema=pa.schema([(name, pa.string()) for name in columns]))
    staging = target.with_suffix(".parquet.tmp")
    pq.write_table(table, staging)
    os.replace(staging, target)
    rejects_path = output / REJECTS_NAME
    staging = rejects_path.with_suffix(".jsonl.tmp")
    staging.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects), encoding="utf-8")
    os.replace(staging, rejects_path)
    print(f"task data: {len(rows)} rows from {len(documents)} documents x {len(templates)} prompts -> {target}")
    if rejects:
        print(f"rejected: {len(rejects)} teacher answers still invalid after corrections -> {rejects_path}")
    return target
