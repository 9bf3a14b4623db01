"""The one way a stage gets its teacher: ``teacher_from(section, limits)``.

Every config that calls a teacher has a ``teacher:`` section (:class:`TeacherConfig`) per role
(the generator, the judge, the pair teacher and pair judge, the PIT QA teacher), so each role may
name its own model, server and key variable. :func:`teacher_from` reads the key from the variable
the section names (a clear error when it is unset: a run never falls back to no key), and sizes
the HTTP connection pool and the timeout to the ``limits:`` the engine will apply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mediflow.configuration import Config, option, secret
from mediflow.engine.config import LimitsConfig
from mediflow.errors import ConfigError
from mediflow.teachers import Teacher, make_teacher

#: Fewest pooled connections an HTTP teacher gets, whatever the concurrency (answers may overlap retries).
_MIN_CONNECTIONS = 16


@dataclass
class TeacherConfig(Config):
    """Which LLM answers. The API key is read from an environment variable, never from a config file."""

    spec: str = option("local", "local | openai:MODEL | azure:DEPLOYMENT | vllm:PATH")
    base_url: str | None = option(None, "OpenAI-compatible server URL (vLLM, SGLang, llama.cpp, Azure endpoint)")
    api_key_env: str | None = option(None, "environment variable holding the API key (default: the SDK's)")
    api_key: str | None = secret("the API key itself, from Python only; never written anywhere")


def teacher_aliases(section: str = "") -> dict[str, str]:
    """The short flags every teacher-calling config shares: ``--teacher``, ``--base-url``, ``--api-key-env``.

    ``section`` is the dotted key of the section holding ``teacher:`` (``judge`` in a curate config).
    """
    where = f"{section}." if section else ""
    return {"teacher": f"{where}teacher.spec", "base_url": f"{where}teacher.base_url", "api_key_env": f"{where}teacher.api_key_env"}


def api_key_of(section: TeacherConfig, where: str = "teacher") -> str | None:
    """The key ``section`` names; a :class:`ConfigError` naming the variable when it is unset or empty."""
    if section.api_key is not None or section.api_key_env is None:
        return section.api_key
    key = os.environ.get(section.api_key_env)
    if not key:
        raise ConfigError(f"{where}.api_key_env (--api-key-env): the environment variable {section.api_key_env} is not set")
    return key


def teacher_from(section: TeacherConfig, limits: LimitsConfig | None = None, *, where: str = "teacher") -> Teacher:
    """The teacher ``section`` describes, its pool sized to ``limits.concurrency``; ``where`` names the section in errors."""
    limits = limits or LimitsConfig()
    options: dict[str, Any] = {}
    if section.spec.startswith(("openai:", "azure:")):
        options["max_connections"] = max(limits.concurrency, _MIN_CONNECTIONS)
        options["timeout"] = limits.request_timeout
    return make_teacher(section.spec, base_url=section.base_url, api_key=api_key_of(section, where), **options)
