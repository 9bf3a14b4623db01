"""The vLLM engine processor path of ``engine: ray``, run on CPU: the real pre- and post-processing, the rounds
of ``ask`` and the judge's wiring, with a stand-in for the GPU engine stage in between (no GPU here: vLLM itself is not run).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import unjudged, write_output_folder

from mediflow.quality import JudgeConfig, run_judge
from mediflow.quality.config import JudgeConfig as JudgeSection
from mediflow.quality.judge import JudgeStep
from mediflow.quality.rubric import load_rubric
from mediflow.scale.config import VllmProcessorConfig
from mediflow.steps import Answer, LLMStep, Reject, StepResult
from mediflow.taxonomy import load_taxonomy
from mediflow.teachers import ChatRequest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data.llm")

from mediflow.quality import judge as judge_module  # noqa: E402
from mediflow.scale.vllm_processor import _request_json, engine_row, postprocess, preprocess, processor_config, run_step_on_vllm  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module: send its functions


@pytest.fixture(scope="module")
def local_ray() -> Any:
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_the_14_task_schemas_survive_arrow_as_json_strings() -> None:
    """Ray Data carries rows as Arrow: schemas as structs are unified into one type (every schema gets every other's
    properties, null-filled); as JSON strings each comes back as it was."""
    schemas = [task.output_schema for task in load_taxonomy().tasks.values()]
    assert len(schemas) == 14
    requests = [ChatRequest(messages=(("user", f"task {i}"),), response_schema=schema) for i, schema in enumerate(schemas)]
    rows = [engine_row(_request_json(request)) for request in requests]
    back = pa.Table.from_pylist(rows).to_pylist()
    assert [json.loads(row["sampling_params"]["structured_outputs"]["json"]) for row in back] == schemas

    as_structs = [{**row, "sampling_params": {**row["sampling_params"], "structured_outputs": {"json": schema}}} for row, schema in zip(rows, schemas)]
    mangled = [row["sampling_params"]["structured_outputs"]["json"] for row in pa.Table.from_pylist(as_structs).to_pylist()]
    assert mangled != schemas  # what the processor got before: properties of other tasks' schemas, as nulls


def test_a_request_becomes_the_processor_columns() -> None:
    step = JudgeStep(load_rubric(None), JudgeSection())
    record = {"instruction": "Summarise.", "input": "Note.", "output": "A summary.", "task_type": "summarization", "output_format": "plain_text"}
    request = step.request((record, 3))
    row = engine_row(_request_json(request))
    assert row["messages"] == [{"role": role, "content": content} for role, content in request.messages]
    assert row["sampling_params"] == {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
        "seed": 3,
        "structured_outputs": {"json": json.dumps(step.schema, sort_keys=True)},
    }


def test_the_processor_gets_replicas_tensor_parallelism_and_batch_size() -> None:
    settings = VllmProcessorConfig(replicas=2, tensor_parallel_size=4, batch_size=32, max_model_len=8192)
    config = processor_config("/models/teacher", settings)
    assert (config.model_source, config.concurrency, config.batch_size) == ("/models/teacher", 2, 32)
    assert config.engine_kwargs["tensor_parallel_size"] == 4 and config.engine_kwargs["max_model_len"] == 8192


ID_SCHEMA = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"], "additionalProperties": False}


@dataclass
class Ids(LLMStep[int, int]):
    """Row i: JSON rows ask for ``{"id": i}``; plain rows for text mentioning i (cut answers retried once)."""

    reject_truncated = True

    def request(self, row: int) -> ChatRequest:
        if row % 2:
            return ChatRequest(messages=(("user", f"plain row {row}"),), max_tokens=8)
        return ChatRequest(messages=(("user", f"json row {row}"),), max_tokens=64, response_schema=ID_SCHEMA)

    def parse(self, row: int, answer: Answer) -> int | Reject:
        found = answer.value["id"] if answer.value is not None else int(re.findall(r"\d+", answer.text)[0])
        return found if found == row else Reject(f"row {row} got the answer of row {found}")


def stand_in_engine(row: dict[str, Any]) -> dict[str, Any]:
    """The GPU engine stage's output columns, from a rule: JSON rows divisible by 4 first answer off-schema (a correction
    turn follows), plain rows are cut at a budget of 8 tokens (the retry has 16), row 7 fails in the engine."""
    messages = list(row["messages"])
    text = messages[0]["content"]
    number = int(re.findall(r"\d+", text)[0])
    max_tokens = int(row["sampling_params"]["max_tokens"])
    if number == 7:
        return {**row, "generated_text": "", "num_generated_tokens": 0, "num_input_tokens": 0, "__inference_error__": "CUDA error: out of memory"}
    if text.startswith("json"):
        corrected = len(messages) > 1
        answer = json.dumps({"id": number}) if number % 4 or corrected else json.dumps({"id": "not a number"})
        return {**row, "generated_text": answer, "num_generated_tokens": 5, "num_input_tokens": 11, "__inference_error__": ""}
    generated = 8 if max_tokens <= 8 else 12
    return {**row, "generated_text": f"the note of row {number}", "num_generated_tokens": generated, "num_input_tokens": 9, "__inference_error__": ""}


def stand_in_processor(dataset: Any) -> Any:
    """What build_processor wires: our preprocess, the engine stage (here the stand-in), our postprocess."""
    return dataset.map(preprocess).map(stand_in_engine).map(postprocess)


def test_rows_go_through_ask_in_rounds_and_none_is_dropped_or_misaligned(local_ray) -> None:
    rows = list(range(24))
    results: dict[int, StepResult[int]] = {}
    for index, result in run_step_on_vllm(rows, Ids(), stand_in_processor):
        assert index not in results
        results[index] = result
    assert sorted(results) == rows  # every row once, in its place
    assert results[7].value is None and "CUDA error" in (results[7].error or "")  # the engine's failure, kept as the row's error
    for row in [r for r in rows if r != 7]:
        assert results[row].value == row, (row, results[row])
    assert {row: results[row].corrections for row in (0, 4, 8, 2, 6)} == {0: 1, 4: 1, 8: 1, 2: 0, 6: 0}  # a correction turn, through ask_json
    assert [response.finish_reason for response in results[1].responses] == ["length", "stop"]  # cut, then retried with twice the budget


def test_a_rows_missing_from_the_engines_output_are_an_error_not_a_silent_drop(local_ray) -> None:
    def losing_processor(dataset: Any) -> Any:
        return stand_in_processor(dataset).filter(lambda row: row["index"] != 5)

    with pytest.raises(Exception, match="did not come back"):
        list(run_step_on_vllm(list(range(8)), Ids(), losing_processor))


def expected_score(instruction: str) -> int:
    return 1 + len(instruction.strip()) % 5


def judge_engine(row: dict[str, Any]) -> dict[str, Any]:
    """A judge on the GPU: every criterion scored by the length of the record's instruction (so each answer names its record)."""
    schema = json.loads(row["sampling_params"]["structured_outputs"]["json"])
    prompt = "\n".join(message["content"] for message in row["messages"])
    score = expected_score(re.search(r"## Task \([^)]*\)\n(.*)", prompt).group(1))
    answer = {name: (f"scored {score}" if name == "rationale" else score) for name in schema["properties"]}
    return {**row, "generated_text": json.dumps(answer), "num_generated_tokens": 20, "num_input_tokens": 100, "__inference_error__": ""}


def test_a_vllm_judge_on_ray_builds_no_model_in_the_driver_and_scores_every_record(local_ray, tmp_path: Path, monkeypatch) -> None:
    """Reproduction: the judge built ``vllm.LLM`` in the driver (a second model copy on a GPU driver, a failure on a CPU head)."""
    built: list[str] = []

    def stand_in_build(model: str, config: VllmProcessorConfig) -> Any:
        built.append(model)
        return lambda dataset: dataset.map(preprocess).map(judge_engine).map(postprocess)

    monkeypatch.setattr(judge_module, "build_vllm_processor", stand_in_build)
    records = unjudged(documents=4)
    source = write_output_folder(tmp_path / "in", records)
    report = run_judge(source, tmp_path / "out", JudgeConfig.load(None, teacher="vllm:/models/judge-70b", engine="ray", samples=2, progress=False))
    assert built == ["/models/judge-70b"]  # the processor got the model; the driver never loaded it (vllm is not even installed here)
    assert report.details["judged"] == len(records) and report.details["failed"] == 0
    kept = pq.read_table(sorted((tmp_path / "out" / "data").glob("*.parquet"))).to_pylist()
    rejected = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert sorted(record["id"] for record in kept + rejected) == sorted(record["id"] for record in records)
    for record in kept + rejected:  # each record's scores are the answers about that record
        assert record["quality"] == expected_score(record["instruction"]), record["instruction"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "finished"
