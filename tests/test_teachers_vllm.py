"""The vLLM offline teacher's batching and conversion, around a stand-in ``vllm`` (no GPU here).

vLLM itself is not installed on CPU machines: these tests inject a minimal module with the same
names (``LLM.chat``, ``SamplingParams``, ``sampling_params.StructuredOutputsParams``) and check
what our code hands to it and how it maps the outputs back to concurrent callers.
"""

from __future__ import annotations

import asyncio
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from mediflow.errors import MediflowError
from mediflow.teachers import ChatRequest, make_teacher


@dataclass
class FakeSamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None
    structured_outputs: Any = None


@dataclass
class FakeStructuredOutputsParams:
    json: Any = None


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"


@dataclass
class FakeRequestOutput:
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion]


@dataclass
class FakeLLM:
    """Records each ``chat`` call; answers every conversation with its last message, reversed."""

    calls: list[tuple[list[list[dict[str, str]]], list[FakeSamplingParams]]] = field(default_factory=list)

    def chat(self, messages: list[list[dict[str, str]]], sampling_params: list[FakeSamplingParams], use_tqdm: bool) -> list[FakeRequestOutput]:
        self.calls.append((messages, sampling_params))
        return [FakeRequestOutput([0] * len(conversation), [FakeCompletion(conversation[-1]["content"][::-1], [1, 2, 3])]) for conversation in messages]


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    module.sampling_params = types.SimpleNamespace(StructuredOutputsParams=FakeStructuredOutputsParams)  # type: ignore[attr-defined]
    module.LLM = lambda **kwargs: FakeLLM()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_concurrent_requests_become_one_batched_chat_call(fake_vllm: types.ModuleType) -> None:
    llm = FakeLLM()
    teacher = make_teacher("vllm:/models/teacher", llm=llm, batch_window=0.05)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    requests = [ChatRequest(messages=(("system", "be brief"), ("user", f"question {i}")), seed=i, max_tokens=32, response_schema=schema if i % 2 else None) for i in range(10)]

    async def run() -> list[Any]:
        try:
            return await asyncio.gather(*(teacher.complete(r) for r in requests))
        finally:
            await teacher.aclose()

    responses = asyncio.run(run())
    assert len(llm.calls) == 1
    conversations, params = llm.calls[0]
    assert conversations[3] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "question 3"}]
    assert params[3].seed == 3 and params[3].max_tokens == 32
    assert params[3].structured_outputs == FakeStructuredOutputsParams(json=schema)
    assert params[4].structured_outputs is None
    assert [r.text for r in responses] == [f"question {i}"[::-1] for i in range(10)]  # each caller gets its own
    assert responses[0].completion_tokens == 3 and responses[0].prompt_tokens == 2
    assert teacher.name == "vllm:/models/teacher"


def test_max_batch_splits_batches(fake_vllm: types.ModuleType) -> None:
    llm = FakeLLM()
    teacher = make_teacher("vllm:m", llm=llm, batch_window=0.02, max_batch=4)

    async def run() -> None:
        await asyncio.gather(*(teacher.complete(ChatRequest(messages=(("user", str(i)),))) for i in range(10)))
        await teacher.aclose()

    asyncio.run(run())
    assert [len(conversations) for conversations, _ in llm.calls] == [4, 4, 2]


def test_older_vllm_uses_guided_decoding(fake_vllm: types.ModuleType) -> None:
    @dataclass
    class Guided:
        json: Any = None

    @dataclass
    class OldSamplingParams(FakeSamplingParams):
        guided_decoding: Any = None

    fake_vllm.sampling_params = types.SimpleNamespace(GuidedDecodingParams=Guided)  # type: ignore[attr-defined]
    fake_vllm.SamplingParams = OldSamplingParams  # type: ignore[attr-defined]
    teacher = make_teacher("vllm:m", llm=FakeLLM())
    params = teacher.sampling_params(ChatRequest(messages=(("user", "x"),), response_schema={"type": "object"}))  # type: ignore[attr-defined]
    assert params.guided_decoding == Guided(json={"type": "object"})


def test_missing_vllm_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MediflowError, match=r"pip install 'mediflow\[vllm\]'"):
        make_teacher("vllm:/models/teacher")
