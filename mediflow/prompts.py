"""Load and render the prompt templates in ``prompts/``, each with a version hash.

A prompt is data: ``prompts/<name>.yaml`` holds ``system:`` and/or ``user:`` Jinja2 templates plus
any other keys a stage wants to keep next to its wording (rubrics, error kinds, descriptions).
Templates use ``StrictUndefined`` so a variable the caller forgot is an error, never an empty
string in a prompt sent to a paid API. The version is the SHA-256 of the file's bytes: records
carry it, so any edit to a prompt is visible in the data it produced (and changes cache keys).

A user folder passed as ``path`` is searched first, then the built-in folder, so users override one
prompt by dropping a file with the same name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from mediflow.errors import MediflowError
from mediflow.resources import prompts_dir
from mediflow.textfiles import read_yaml

#: The roles a prompt file may define, in the order their messages are sent.
ROLES: tuple[str, ...] = ("system", "user")


def _to_json(value: Any, indent: int | None = 2) -> str:
    """JSON for prompts: readable, non-ASCII kept (Jinja's own ``tojson`` HTML-escapes ``<`` and ``&``)."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # a strict undefined raises UndefinedError naming the variable (json.dumps would raise TypeError)
    return json.dumps(value, indent=indent, ensure_ascii=False)


def _environment() -> jinja2.Environment:
    """Strict, plain-text Jinja: no autoescaping, block tags do not leave blank lines."""
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    environment.filters["to_json"] = _to_json
    return environment


_ENVIRONMENT = _environment()


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt file: its templates, extra data keys and version (a data-only file has no templates)."""

    name: str
    path: Path
    version: str
    sources: dict[str, str]
    data: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def _templates(self) -> dict[str, jinja2.Template]:
        return {role: _ENVIRONMENT.from_string(source) for role, source in self.sources.items()}

    @property
    def variables(self) -> frozenset[str]:
        """The variables the templates refer to (required ones and ones guarded by ``is defined``)."""
        names: set[str] = set()
        for source in self.sources.values():
            names |= jinja2.meta.find_undeclared_variables(_ENVIRONMENT.parse(source))
        return frozenset(names)

    def render(self, **variables: Any) -> tuple[tuple[str, str], ...]:
        """The chat messages ``((role, content), ...)``; roles whose text renders empty are left out."""
        if not self.sources:
            raise MediflowError(f"prompt '{self.name}' ({self.path}) has no 'system:' or 'user:' template to render")
        messages: list[tuple[str, str]] = []
        for role, template in self._templates.items():
            try:
                content = template.render(**variables).strip()
            except jinja2.UndefinedError as exc:
                raise MediflowError(f"prompt '{self.name}' ({self.path}), {role} template: {exc}") from None
            except jinja2.TemplateError as exc:
                raise MediflowError(f"prompt '{self.name}' ({self.path}), {role} template: {exc}") from None
            if content:
                messages.append((role, content))
        return tuple(messages)


class PromptLibrary:
    """The prompts available to a run: a user folder (optional) over the built-in ``prompts/``."""

    def __init__(self, folders: list[Path]) -> None:
        self._folders = folders
        self._loaded: dict[str, PromptTemplate] = {}

    def names(self) -> list[str]:
        """Every prompt name available, sorted."""
        return sorted({file.stem for folder in self._folders for file in folder.glob("*.yaml")})

    def get(self, name: str) -> PromptTemplate:
        """The prompt called ``name`` (file ``<name>.yaml``); a :class:`MediflowError` listing the known ones otherwise."""
        if name not in self._loaded:
            for folder in self._folders:
                candidate = folder / f"{name}.yaml"
                if candidate.is_file():
                    self._loaded[name] = _load_file(name, candidate)
                    break
            else:
                raise MediflowError(f"unknown prompt '{name}' (known: {', '.join(self.names())})")
        return self._loaded[name]


def load_prompts(path: Path | str | None = None) -> PromptLibrary:
    """The built-in prompts, or a user folder searched before them."""
    folders = [prompts_dir()]
    if path is not None:
        user_dir = Path(path)
        if not user_dir.is_dir():
            raise MediflowError(f"{user_dir}: prompts folder not found")
        folders.insert(0, user_dir)
    return PromptLibrary(folders)


def _load_file(name: str, path: Path) -> PromptTemplate:
    """Parse one prompt file and compile its templates, reporting problems in one line."""
    raw = path.read_bytes()
    content = read_yaml(path, "prompt file")
    if not isinstance(content, dict):
        raise MediflowError(f"{path}: a prompt file must be a mapping with 'system:' and/or 'user:' templates")
    sources = {role: content[role] for role in ROLES if isinstance(content.get(role), str)}
    for role, source in sources.items():
        try:
            _ENVIRONMENT.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise MediflowError(f"{path}: {role} template, line {exc.lineno}: {exc.message}") from None
    data = {key: value for key, value in content.items() if key not in ROLES}
    version = hashlib.sha256(raw).hexdigest()[:12]
    return PromptTemplate(name=name, path=path, version=version, sources=sources, data=data)
