"""Teacher LLMs behind one small interface (:class:`mediflow.teachers.base.Teacher`).

The teachers (``local_llama``, ``openai_compat``, ``vllm_offline``) are built by the one factory,
:mod:`mediflow.teachers.factory` (``make_teacher(spec)``, ``teacher_from(section, limits)``); the
``teacher:`` section of a config is :class:`mediflow.teachers.config.TeacherConfig`. This package
itself holds only the interface, so that importing it (every config does) loads no teacher.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mediflow.teachers.base import ChatRequest, ChatResponse, Teacher

if TYPE_CHECKING:
    from mediflow.teachers.factory import TEACHER_SPECS, make_teacher

__all__ = ["ChatRequest", "ChatResponse", "Teacher", "make_teacher", "TEACHER_SPECS"]


def __getattr__(name: str) -> Any:
    if name in ("make_teacher", "TEACHER_SPECS"):  # the factory, which imports the teachers: on first use
        return getattr(import_module("mediflow.teachers.factory"), name)
    raise AttributeError(f"module 'mediflow.teachers' has no attribute {name!r}")
