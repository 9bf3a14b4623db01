"""The ``qa`` stage: task data for pre-instruction tuning, generated from the documents by the teacher.

MediPhi trained each expert first on task data about its documents: question-answer pairs, and
also summaries, entity lists and relations. Each kind is a prompt file in ``prompts/``
(``qa``, ``pit_summary``, ``pit_entities``, ``pit_relations``) holding the teacher's wording, the
JSON Schema its answer must satisfy, and a ``training`` block saying how an answer becomes
prompt/completion rows. Adding a kind is adding a file.

The teacher machinery is the same as ``generate``'s: :class:`mediflow.engine.Engine` (limits,
retries, a durable response cache, so a rerun pays only for what is missing) and
:func:`mediflow.pipeline.structured.ask_json` (schema validation with correction turns). The output
is a contract folder of kind ``qa`` (:class:`mediflow.folders.OutputFolder`): the rows in
``data/``, answers that stay invalid in ``rejects.parquet`` with the reason (never silently
dropped), the teacher cache in ``cache.sqlite``; ``data.task_data`` of a ``pit`` config names it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa

from mediflow.errors import ConfigError
from mediflow.folders import OutputFolder, StagedWriter
from mediflow.train.config import StageConfig
from mediflow.train.data import load_documents

TASK_DATA_SCHEMA = pa.schema([(name, pa.string()) for name in ("prompt", "completion", "task", "document_id", "prompt_version")])
REJECT_SCHEMA = pa.schema([(name, pa.string()) for name in ("task", "document_id", "prompt_version", "error", "text")])

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


def generate_task_data(config: StageConfig, *, overwrite: bool = False) -> Path:
    """Ask the teacher for every (document, task prompt); write the ``qa`` folder ``<output.dir>``.

    Its rows have ``prompt``, ``completion``, ``task``, ``document_id``, ``prompt_version``:
    exactly what ``data.task_data`` of a ``pit`` config reads (name the folder).
    """
    from mediflow.prompts import load_prompts

    documents_path = config.path(config.data.documents)
    documents = load_documents(documents_path, config.data.text_field)
    if config.data.max_samples:
        documents = documents[: config.data.max_samples]
    library = load_prompts(config.path(config.data.prompts) if config.data.prompts else None)
    templates = [library.get(name) for name in config.method.tasks]
    plain = {"model": dataclasses.asdict(config.model), "method": dataclasses.asdict(config.method), "data": dataclasses.asdict(config.data)}
    folder = OutputFolder.open(
        config.path(config.output.dir), kind="qa", config=json.loads(json.dumps(plain, default=str)), input_paths=[documents_path], overwrite=overwrite
    )
    with folder:
        rows, rejects = asyncio.run(_ask_all(config, documents, templates, folder.cache_path))
        writer = StagedWriter(folder)
        try:
            writer.keep(pa.Table.from_pylist(rows, schema=TASK_DATA_SCHEMA))
            writer.reject(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA))
            writer.publish(TASK_DATA_SCHEMA, {"documents": len(documents), "rows": len(rows), "rejected": len(rejects)})
        except BaseException:
            writer.abandon()
            raise
    print(f"task data: {len(rows)} rows from {len(documents)} documents x {len(templates)} prompts -> {folder.data_dir}")
    if rejects:
        print(f"rejected: {len(rejects)} teacher answers still invalid after corrections -> {folder.rejects_path}")
    return folder.root
