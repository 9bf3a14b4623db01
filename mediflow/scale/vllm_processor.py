"""``engine: ray`` with a ``vllm:PATH`` teacher: an LLM step on ray.data.llm's vLLM engine processor (GPU nodes).

Instead of actors calling an HTTP teacher, Ray Data runs ``ray.vllm.replicas`` vLLM engines, each
on ``tensor_parallel_size`` GPUs, and streams requests through them in batches
(``ray.data.llm.build_processor``). The model is loaded on the GPU nodes only: the driver never
builds a ``vllm.LLM``.

The step is answered through the same :func:`~mediflow.steps.ask` as on every other engine
(strict JSON validation and correction turns, the retry of a plain-text answer cut at
``max_tokens``), in rounds: each round sends every row's next request through the processor and
replays ``ask`` over the row's answers so far (:func:`advance`). A row whose ``ask`` is done
yields its :class:`StepResult`; a row that needs another turn (a correction, a retry with a larger
budget) goes into the next round. Most rows finish in the first round, streaming; the few that need
more wait in the driver for the next. Every row comes back exactly once, in its place: a row the
engine failed on (``__inference_error__``) is a result with that error, never a dropped row.

Requests reach the processor as plain columns: the chat ``messages`` and per-row ``sampling_params``,
the JSON schema of a structured request as a JSON *string* (``structured_outputs: {"json": ...}``):
the 14 task schemas as Arrow structs would be unified into one struct type, and a schema would come
back with every other schema's properties, null-filled.

What this path does not have: our Engine's cache (a run killed half-way recomputes its batches,
which costs GPU time, not money) and the multi-step flow of ``generate`` (this runs one step over
rows: the judge). Not run here: this machine has no GPU; tests/test_vllm_processor.py runs the
rounds on CPU with a stand-in for the engine stage, between the real pre- and post-processing.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

from mediflow.errors import MediflowError
from mediflow.scale.config import VllmProcessorConfig
from mediflow.steps.contract import LLMStep, StepResult, ask
from mediflow.teachers.base import ChatRequest, ChatResponse

#: A Ray Dataset to a Ray Dataset: the processor (preprocess, vLLM, postprocess), or a stand-in in tests.
Processor = Callable[[Any], Any]
#: Columns every round's rows carry: the row's position, the pickled row, its answers so far (JSON).
INDEX, UNIT, ANSWERS, REQUEST = "index", "unit", "answers", "request"


class _NextRequest(Exception):
    """Raised by the replay when ``ask`` asks beyond the answers recorded: the request to send next."""

    def __init__(self, request: ChatRequest) -> None:
        super().__init__("next request")
        self.request = request


class _Replay:
    """An engine that answers ``ask`` from the answers a row already has, in order."""

    def __init__(self, answers: Sequence[ChatResponse]) -> None:
        self._answers = list(answers)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        if not self._answers:
            raise _NextRequest(request)
        return self._answers.pop(0)


def _run_now(coroutine: Coroutine[Any, Any, StepResult[Any]]) -> StepResult[Any]:
    """Run a coroutine that never waits (``ask`` on a replay) to its end, without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        result: StepResult[Any] = stop.value
        return result
    coroutine.close()
    raise RuntimeError("ask waited on something other than the replayed answers")


def advance(step: LLMStep[Any, Any], row: Any, answers: Sequence[ChatResponse]) -> StepResult[Any] | ChatRequest:
    """Replay ``ask(step, row)`` over ``answers``: its result when it is done, else the next request to send."""
    try:
        return _run_now(ask(_Replay(answers), step, row))
    except _NextRequest as needed:
        return needed.request


def _answer_json(response: ChatResponse) -> dict[str, Any]:
    return {"text": response.text, "finish_reason": response.finish_reason, "prompt_tokens": response.prompt_tokens, "completion_tokens": response.completion_tokens, "model": response.model}


def _answers(text: str) -> list[ChatResponse]:
    return [ChatResponse(**answer) for answer in json.loads(text)]


def _request_json(request: ChatRequest) -> str:
    return json.dumps(
        {
            "messages": [list(message) for message in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
            "response_schema": request.response_schema,
        }
    )


def engine_row(request_json: str) -> dict[str, Any]:
    """A request (as :func:`_request_json` wrote it) as the processor's columns: chat ``messages`` and per-row
    ``sampling_params``, a JSON schema as a JSON string (see the module docstring)."""
    request = json.loads(request_json)
    sampling: dict[str, Any] = {"temperature": request["temperature"], "top_p": request["top_p"], "max_tokens": request["max_tokens"]}
    if request["seed"] is not None:
        sampling["seed"] = request["seed"]
    if request["response_schema"] is not None:
        sampling["structured_outputs"] = {"json": json.dumps(request["response_schema"], sort_keys=True)}
    return {"messages": [{"role": role, "content": content} for role, content in request["messages"]], "sampling_params": sampling}


def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    """The processor's preprocess: the row's pending request as ``messages`` + ``sampling_params`` (its columns carried along)."""
    return {**row, **engine_row(row[REQUEST])}


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    """The processor's postprocess: the generated text appended to the row's answers (an engine error recorded as the row's error)."""
    request = json.loads(row[REQUEST])
    error = row.get("__inference_error__")
    answers = json.loads(row[ANSWERS])
    if not error:
        generated = int(row.get("num_generated_tokens") or 0)
        answers.append(
            {
                "text": str(row.get("generated_text") or ""),
                # the processor does not say why generation stopped: at max_tokens it was cut
                "finish_reason": "length" if generated >= request["max_tokens"] else "stop",
                "prompt_tokens": int(row.get("num_input_tokens") or 0),
                "completion_tokens": generated,
                "model": "",
            }
        )
    return {INDEX: row[INDEX], UNIT: row[UNIT], ANSWERS: json.dumps(answers), "error": str(error or "")}


def processor_config(model_path: str, config: VllmProcessorConfig) -> Any:
    """ray.data.llm's ``vLLMEngineProcessorConfig`` for the teacher at ``model_path``."""
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs: dict[str, Any] = {"tensor_parallel_size": config.tensor_parallel_size}
    if config.max_model_len is not None:
        engine_kwargs["max_model_len"] = config.max_model_len
    return vLLMEngineProcessorConfig(model_source=model_path, engine_kwargs=engine_kwargs, concurrency=config.replicas, batch_size=config.batch_size)


def build_vllm_processor(model_path: str, config: VllmProcessorConfig) -> Processor:
    """The vLLM engine processor between :func:`preprocess` and :func:`postprocess` (builds no model here: the replicas load it)."""
    from ray.data.llm import build_processor

    processor: Processor = build_processor(processor_config(model_path, config), preprocess=preprocess, postprocess=postprocess)
    return processor


def run_step_on_vllm(rows: Sequence[Any], step: LLMStep[Any, Any], processor: Processor) -> Iterator[tuple[int, StepResult[Any]]]:
    """``(index, result)`` for every row through ``step`` on ``processor``, each exactly once, as rounds finish (see the module docstring)."""
    import ray.data

    pending: list[dict[str, Any]] = [{INDEX: index, UNIT: pickle.dumps(row), ANSWERS: "[]"} for index, row in enumerate(rows)]
    while pending:
        asking: dict[int, dict[str, Any]] = {}
        for item in pending:  # each row's next request; a row with nothing more to ask is done
            outcome = advance(step, pickle.loads(item[UNIT]), _answers(item[ANSWERS]))
            if isinstance(outcome, StepResult):
                yield int(item[INDEX]), outcome
            else:
                asking[int(item[INDEX])] = {**item, REQUEST: _request_json(outcome)}
        pending = []
        if not asking:
            return
        for batch in processor(ray.data.from_items(list(asking.values()))).iter_batches(batch_size=None, batch_format="pandas"):
            for item in batch.to_dict("records"):
                index = int(item[INDEX])
                if asking.pop(index, None) is None:
                    raise MediflowError(f"engine: ray (vLLM): row {index} came back twice, or was never sent")
                if item["error"]:
                    yield index, StepResult(None, "", f"the vLLM engine failed on this row: {item['error']}")
                else:
                    pending.append({INDEX: index, UNIT: item[UNIT], ANSWERS: item[ANSWERS]})
        if asking:  # never a silent drop
            raise MediflowError(f"engine: ray (vLLM): {len(asking)} rows sent to the engine did not come back (first: row {min(asking)})")
