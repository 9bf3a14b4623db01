"""``engine: ray`` with a ``vllm:PATH`` teacher: an LLM step on ray.data.llm's vLLM engine processor (GPU nodes).

Instead of actors calling an HTTP teacher, Ray Data runs ``ray.vllm.replicas`` vLLM engines, each
on ``tensor_parallel_size`` GPUs, and streams the step's requests through them in batches. The step
contract stays ours: :meth:`LLMStep.request` builds each row's request (rendered to the processor's
``messages`` + ``sampling_params``; a JSON request carries its schema as vLLM
``structured_outputs``, so the answer is schema-valid by construction) and :meth:`LLMStep.parse`
reads the answer. What this path does not have: our Engine's cache and correction turns (vLLM's
structured decoding replaces them; a run killed half-way recomputes its batches, which costs GPU
time, not money), and the multi-step flow of ``generate`` (this runs one step over rows: the judge).

Not run here: this machine has no GPU. It was checked on CPU up to the processor's construction
(tests/test_ray_engine.py): the rows it builds and the processor config it hands to Ray.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from typing import Any

from mediflow.scale.config import VllmProcessorConfig
from mediflow.steps.contract import Answer, LLMStep, Reject, StepResult
from mediflow.teachers.base import ChatRequest


def engine_row(request: ChatRequest) -> dict[str, Any]:
    """``request`` as a row of the vLLM engine processor: chat ``messages`` and per-row ``sampling_params``."""
    sampling: dict[str, Any] = {"temperature": request.temperature, "top_p": request.top_p, "max_tokens": request.max_tokens}
    if request.seed is not None:
        sampling["seed"] = request.seed
    if request.response_schema is not None:
        sampling["structured_outputs"] = {"json": request.response_schema}
    return {"messages": [{"role": role, "content": content} for role, content in request.messages], "sampling_params": sampling}


def processor_config(model_path: str, config: VllmProcessorConfig) -> Any:
    """ray.data.llm's ``vLLMEngineProcessorConfig`` for the teacher at ``model_path``."""
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs: dict[str, Any] = {"tensor_parallel_size": config.tensor_parallel_size}
    if config.max_model_len is not None:
        engine_kwargs["max_model_len"] = config.max_model_len
    return vLLMEngineProcessorConfig(
        model_source=model_path, engine_kwargs=engine_kwargs, concurrency=config.replicas, batch_size=config.batch_size
    )


def read_answer(step: LLMStep[Any, Any], row: Any, request: ChatRequest, text: str) -> StepResult[Any]:
    """The step's result for one generated text (the JSON of a structured request is parsed, never repaired)."""
    value = None
    if request.response_schema is not None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return StepResult(None, text, f"the answer is not JSON: {exc.msg}")
    parsed = step.parse(row, Answer(text, value))
    if isinstance(parsed, Reject):
        return StepResult(None, text, parsed.reason)
    return StepResult(parsed, text)


def build_step_processor(step: LLMStep[Any, Any], model_path: str, config: VllmProcessorConfig) -> Any:
    """A processor mapping a dataset of pickled rows (``unit`` column) to pickled :class:`StepResult` s (``result``)."""
    from ray.data.llm import build_processor

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        return {"index": row["index"], "unit": row["unit"], **engine_row(step.request(pickle.loads(row["unit"])))}

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        unit = pickle.loads(row["unit"])
        result = read_answer(step, unit, step.request(unit), row["generated_text"])
        return {"index": row["index"], "result": pickle.dumps(result)}

    return build_processor(processor_config(model_path, config), preprocess=preprocess, postprocess=postprocess)


def run_step_on_vllm(rows: Sequence[Any], step: LLMStep[Any, Any], model_path: str, config: VllmProcessorConfig) -> list[StepResult[Any]]:
    """Every row through ``step`` on the vLLM engine processor; results in row order."""
    import ray.data

    processor = build_step_processor(step, model_path, config)
    dataset = ray.data.from_items([{"index": index, "unit": pickle.dumps(row)} for index, row in enumerate(rows)])
    results: list[StepResult[Any] | None] = [None] * len(rows)
    for batch in processor(dataset).iter_batches(batch_size=None, batch_format="numpy"):
        for index, blob in zip(batch["index"], batch["result"]):
            results[int(index)] = pickle.loads(blob)
    return [result for result in results if result is not None]
