"""The ``teacher:`` section every teacher-calling config has (one per role), and the key it names.

Kept apart from the factory (:mod:`mediflow.teachers.factory`), which imports the teachers
themselves: every command's flags are derived from the configs at start-up, and must not load them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mediflow.configuration import Config, option, secret
from mediflow.errors import ConfigError


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
