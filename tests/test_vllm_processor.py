"""The vLLM engine processor path of ``engine: ray``, checked on CPU up to the processor (no GPU here: not run)."""

from __future__ import annotations

import json

import pytest

from mediflow.quality.config import JudgeConfig
from mediflow.quality.judge import JudgeStep
from mediflow.quality.rubric import load_rubric
from mediflow.scale.config import VllmProcessorConfig

pytest.importorskip("ray.data.llm")

from mediflow.scale.vllm_processor import build_step_processor, engine_row, processor_config, read_answer  # noqa: E402


@pytest.fixture()
def step() -> JudgeStep:
    return JudgeStep(load_rubric(None), JudgeConfig())


def test_a_json_request_becomes_a_processor_row_with_its_schema_as_structured_output(step) -> None:
    record = {"instruction": "Summarise.", "input": "Note.", "output": "A summary.", "task_type": "summarization", "output_format": "plain_text"}
    request = step.request((record, 3))
    row = engine_row(request)
    assert row["messages"] == [{"role": role, "content": content} for role, content in request.messages]
    assert row["sampling_params"] == {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
        "seed": 3,
        "structured_outputs": {"json": step.schema},
    }
    answer = {name: 4 for name in step.rubric.names} | {"rationale": "fine"}
    assert read_answer(step, (record, 3), request, json.dumps(answer)).value == answer
    assert "not JSON" in (read_answer(step, (record, 3), request, "{cut").error or "")


def test_the_processor_gets_replicas_tensor_parallelism_and_batch_size(step) -> None:
    settings = VllmProcessorConfig(replicas=2, tensor_parallel_size=4, batch_size=32, max_model_len=8192)
    config = processor_config("/models/teacher", settings)
    assert (config.model_source, config.concurrency, config.batch_size) == ("/models/teacher", 2, 32)
    assert config.engine_kwargs["tensor_parallel_size"] == 4 and config.engine_kwargs["max_model_len"] == 8192
    assert build_step_processor(step, "/models/teacher", settings) is not None
