"""vLLM offline (``vllm.LLM``) as a teacher, for batch generation on a GPU node.

Written against vLLM's documented offline API (``LLM.chat`` with a list of conversations and a list
of ``SamplingParams``; JSON answers constrained with ``StructuredOutputsParams(json=schema)``, or
``GuidedDecodingParams(json=schema)`` on vLLM < 0.11). It has NOT been run on a GPU in this
project's CI: the batching and message conversion around it are tested with a stand-in ``LLM``.
Requests from the engine are gathered by a :class:`MicroBatcher`, so concurrency in the engine
becomes batch size on the GPU. The model is loaded on the first request: in batch mode
(``mode: batch``) there is none, and the requests go through vLLM's ``run_batch`` instead
(:class:`mediflow.batch.providers.VLLMRunBatch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mediflow.errors import MediflowError
from mediflow.teachers.base import ChatRequest, ChatResponse, Teacher
from mediflow.teachers.micro_batch import MicroBatcher

if TYPE_CHECKING:
    from mediflow.batch.config import BatchConfig
    from mediflow.batch.providers import VLLMRunBatch


class VLLMOfflineTeacher(Teacher):
    """A model loaded in-process with vLLM; ``llm`` may be injected (tests, or a caller-built ``LLM``)."""

    #: No per-token price: the GPU is yours.
    price_per_1k = (0.0, 0.0)

    def __init__(
        self,
        model_path: str,
        *,
        llm: Any = None,
        batch_window: float = 0.05,
        max_batch: int = 256,
        **llm_options: Any,
    ) -> None:
        self.name = f"vllm:{model_path}"
        self.model = model_path
        self._vllm = _import_vllm()
        self._llm = llm
        self._llm_options = llm_options
        self._batcher: MicroBatcher[ChatRequest, ChatResponse] = MicroBatcher(self._generate, window=batch_window, max_batch=max_batch)

    def describe(self) -> str:
        return f"vLLM offline model {self.model}"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self._batcher.submit(request)

    def _generate(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        """One blocking ``LLM.chat`` call for a batch (runs in a worker thread)."""
        conversations = [request.message_dicts() for request in requests]
        params = [self.sampling_params(request) for request in requests]
        if self._llm is None:
            self._llm = self._vllm.LLM(model=self.model, **self._llm_options)
        outputs = self._llm.chat(conversations, params, use_tqdm=False)
        return [_to_response(output, self.model) for output in outputs]

    def sampling_params(self, request: ChatRequest) -> Any:
        """vLLM ``SamplingParams`` for ``request``, with structured JSON decoding when a schema is given."""
        options: dict[str, Any] = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
        }
        if request.response_schema is not None:
            options.update(_structured_json_option(self._vllm, request.response_schema))
        return self._vllm.SamplingParams(**options)

    def batch_api(self, options: BatchConfig) -> VLLMRunBatch:
        """The same requests as JSONL through vLLM's ``run_batch`` on this machine (``mode: batch``)."""
        from mediflow.batch.providers import VLLMRunBatch  # brings the openai SDK (the batch format's errors): only in batch mode

        return VLLMRunBatch(self.model, options.vllm_args)

    async def aclose(self) -> None:
        await self._batcher.aclose()


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise MediflowError("the vllm teacher needs vLLM on a GPU node: pip install 'mediflow[vllm]' (for a vLLM server, use --teacher openai:MODEL --base-url URL)") from exc
    return vllm


def _structured_json_option(vllm: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """``structured_outputs=`` (vLLM >= 0.11) or ``guided_decoding=`` (older), whichever this vLLM has."""
    sampling_params = getattr(vllm, "sampling_params", None)
    structured = getattr(sampling_params, "StructuredOutputsParams", None)
    if structured is not None:
        return {"structured_outputs": structured(json=schema)}
    guided = getattr(sampling_params, "GuidedDecodingParams", None)
    if guided is not None:
        return {"guided_decoding": guided(json=schema)}
    raise MediflowError("this vLLM has neither StructuredOutputsParams nor GuidedDecodingParams; upgrade vllm")


def _to_response(output: Any, model: str) -> ChatResponse:
    completion = output.outputs[0]
    return ChatResponse(
        text=completion.text,
        finish_reason=completion.finish_reason or "stop",
        prompt_tokens=len(output.prompt_token_ids or ()),
        completion_tokens=len(completion.token_ids or ()),
        model=model,
    )
