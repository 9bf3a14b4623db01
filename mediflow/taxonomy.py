"""Load and validate the taxonomy (``taxonomies/``) into typed objects, and list the cells to generate.

The taxonomy is data a clinical user can read and extend: document categories, document types,
tasks (each with its output JSON Schema), difficulty levels and output formats, one YAML file per
entry or per group. A user folder given with ``--path`` has the same layout; its entries override
built-in entries of the same name and add new ones, unless its ``taxonomy.yaml`` says
``replace: true`` (ignore the built-in taxonomy) or ``replace: [tasks, ...]`` (ignore those
sections of it). Every problem is reported as one :class:`~mediflow.errors.TaxonomyError` line that
names the file, the entry and the problem, because the person fixing it is editing YAML, not code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

from mediflow.errors import MediflowError, TaxonomyError
from mediflow.resources import taxonomies_dir
from mediflow.textfiles import read_yaml

#: The sections of a taxonomy, in the order they are resolved (later ones refer to earlier ones).
SECTIONS: tuple[str, ...] = ("categories", "document_types", "tasks", "difficulty_levels", "output_formats")

#: Output formats the pipeline knows how to ask for and read; a taxonomy may use a subset.
SUPPORTED_OUTPUT_FORMATS: tuple[str, ...] = ("plain_text", "json")

_NAME = {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"}
_TEXT = {"type": "string", "minLength": 1}
_TEXT_LIST = {"type": "array", "items": _TEXT}
#: The content checks a task can ask the quality filters for (``quality_checks`` in its YAML): real
#: billable ICD-10-CM codes in the answer, and an answer that must not copy its document verbatim.
QUALITY_CHECKS = ("icd10_codes", "verbatim_copy")
_NAME_LIST = {"type": "array", "items": _NAME}

# The shape of each kind of entry, checked with jsonschema so messages name the offending key.
_ENTRY_SCHEMAS: dict[str, dict[str, Any]] = {
    "categories": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "description"],
        "properties": {"name": _NAME, "description": _TEXT},
    },
    "document_types": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "category", "description", "sections", "typical_length", "specialties", "settings"],
        "properties": {
            "name": _NAME,
            "category": _NAME,
            "description": _TEXT,
            "sections": {**_TEXT_LIST, "minItems": 1},
            "typical_length": {
                "type": "object",
                "additionalProperties": False,
                "required": ["min_words", "max_words"],
                "properties": {
                    "min_words": {"type": "integer", "minimum": 1},
                    "max_words": {"type": "integer", "minimum": 1},
                },
            },
            "specialties": {**_TEXT_LIST, "minItems": 1},
            "settings": {**_TEXT_LIST, "minItems": 1},
        },
    },
    "tasks": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "name",
            "description",
            "instruction_guidance",
            "answer_guidance",
            "applies_to",
            "output_schema",
            "example_output",
        ],
        "properties": {
            "name": _NAME,
            "description": _TEXT,
            "benchmarks": _TEXT_LIST,
            "instruction_guidance": _TEXT,
            "answer_guidance": _TEXT,
            "document_requirements": _TEXT,
            "quality_checks": {"type": "array", "uniqueItems": True, "items": {"enum": list(QUALITY_CHECKS)}},
            "applies_to": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": {
                    "categories": _NAME_LIST,
                    "document_types": _NAME_LIST,
                    "exclude_document_types": _NAME_LIST,
                },
            },
            "output_schema": {"type": "object"},
            "example_input": _TEXT,
            "example_instruction": _TEXT,
            "example_output": {"type": "object"},
        },
    },
    "difficulty_levels": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "rank", "description", "harder_by"],
        "properties": {
            "name": _NAME,
            "rank": {"type": "integer", "minimum": 1},
            "weight": {"type": "number", "exclusiveMinimum": 0},
            "description": _TEXT,
            "harder_by": _TEXT,
        },
    },
    "output_formats": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "description"],
        "properties": {"name": {"enum": list(SUPPORTED_OUTPUT_FORMATS)}, "description": _TEXT},
    },
}

# Where each section lives in a taxonomy folder: single files and/or folders of files.
_SECTION_FILES: dict[str, tuple[str, ...]] = {
    "categories": ("categories.yaml",),
    "document_types": ("document_types.yaml", "document_types/*.yaml"),
    "tasks": ("tasks.yaml", "tasks/*.yaml"),
    "difficulty_levels": ("difficulty_levels.yaml",),
    "output_formats": ("output_formats.yaml",),
}
_SINGULAR = {
    "categories": "category",
    "document_types": "document type",
    "tasks": "task",
    "difficulty_levels": "difficulty level",
    "output_formats": "output format",
}
_SETTINGS_FILE = "taxonomy.yaml"
# libyaml's safe loader when PyYAML was built with it (about 10x faster than the pure-Python one).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Entry = TypeVar("Entry")


@dataclass(frozen=True)
class Category:
    """A coarse group of document types (e.g. radiology), which tasks may apply to as a whole."""

    name: str
    description: str


@dataclass(frozen=True)
class TypicalLength:
    """How long a real document of this type usually is, in words; generation aims inside it."""

    min_words: int
    max_words: int


@dataclass(frozen=True)
class DocumentType:
    """A fine-grained clinical document type: what a generated input document should look like."""

    name: str
    category: str
    description: str
    sections: tuple[str, ...]
    typical_length: TypicalLength
    specialties: tuple[str, ...]
    settings: tuple[str, ...]


@dataclass(frozen=True)
class AppliesTo:
    """Which document types a task makes sense on: whole categories and/or named types, minus exclusions."""

    categories: tuple[str, ...] = ()
    document_types: tuple[str, ...] = ()
    exclude_document_types: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Task:
    """A clinical NLP task: what the instruction asks, how to answer, and the JSON answer's schema."""

    name: str
    description: str
    instruction_guidance: str
    answer_guidance: str
    applies_to: AppliesTo
    output_schema: dict[str, Any]
    example_output: dict[str, Any]
    example_input: str | None = None
    example_instruction: str | None = None
    document_requirements: str | None = None
    benchmarks: tuple[str, ...] = ()
    quality_checks: tuple[str, ...] = ()  # content checks the quality filters run on this task's answers


@dataclass(frozen=True)
class DifficultyLevel:
    """One of the difficulty levels of an instruction, with what makes it harder than the one below."""

    name: str
    rank: int
    description: str
    harder_by: str
    weight: float = 1.0


@dataclass(frozen=True)
class OutputFormat:
    """An answer format (``plain_text`` or ``json``)."""

    name: str
    description: str


@dataclass(frozen=True, eq=False)
class Taxonomy:
    """The validated taxonomy: the four stratification axes and the task x document-type compatibility."""

    categories: dict[str, Category]
    document_types: dict[str, DocumentType]
    tasks: dict[str, Task]
    difficulty_levels: list[DifficultyLevel]
    output_format_details: dict[str, OutputFormat]
    version: str
    _compatible: dict[str, list[str]] = field(repr=False)

    @property
    def output_formats(self) -> tuple[str, ...]:
        """The output format names, e.g. ``("plain_text", "json")``."""
        return tuple(self.output_format_details)

    def task(self, name: str) -> Task:
        """The task called ``name``; a :class:`MediflowError` listing the known ones otherwise."""
        return _lookup(self.tasks, name, "task")

    def document_type(self, name: str) -> DocumentType:
        """The document type called ``name``; a :class:`MediflowError` listing the known ones otherwise."""
        return _lookup(self.document_types, name, "document type")

    def category(self, name: str) -> Category:
        """The document category called ``name``."""
        return _lookup(self.categories, name, "category")

    def difficulty_level(self, name: str) -> DifficultyLevel:
        """The difficulty level called ``name``."""
        return _lookup({level.name: level for level in self.difficulty_levels}, name, "difficulty level")

    def document_types_for(self, task_name: str) -> list[str]:
        """The document types ``task_name`` applies to, in taxonomy order."""
        self.task(task_name)
        return list(self._compatible[task_name])

    def cells(self) -> list[tuple[str, str]]:
        """Every compatible (task, document type) pair: the grid the generator fills."""
        return [(task, doc_type) for task in self.tasks for doc_type in self._compatible[task]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what ``mediflow taxonomy --json`` prints)."""
        return {
            "version": self.version,
            "categories": [_as_dict(category) for category in self.categories.values()],
            "tasks": [{**_as_dict(task), "document_types": self._compatible[task.name]} for task in self.tasks.values()],
            "document_types": [_as_dict(doc_type) for doc_type in self.document_types.values()],
            "difficulty_levels": [_as_dict(level) for level in self.difficulty_levels],
            "output_formats": [_as_dict(fmt) for fmt in self.output_format_details.values()],
            "cells": len(self.cells()),
        }


def load_taxonomy(path: Path | str | None = None) -> Taxonomy:
    """The built-in taxonomy, or a user folder merged over it (see the module docstring)."""
    layers = [taxonomies_dir()]
    replaced: set[str] = set()
    if path is not None:
        user_dir = Path(path)
        if not user_dir.is_dir():
            raise TaxonomyError(f"{user_dir}: taxonomy folder not found")
        replaced = _replaced_sections(user_dir)
        layers.append(user_dir)
    raw: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {}
    for section in SECTIONS:
        merged: dict[str, tuple[dict[str, Any], Path]] = {}
        for layer in layers:
            if section in replaced and layer != layers[-1]:
                continue
            merged.update(_read_section(layer, section))
        raw[section] = merged
    return _build(raw)


def _replaced_sections(user_dir: Path) -> set[str]:
    """Which built-in sections the user folder's ``taxonomy.yaml`` throws away."""
    settings_path = user_dir / _SETTINGS_FILE
    if not settings_path.exists():
        return set()
    settings = _read_yaml(settings_path) or {}
    if not isinstance(settings, dict) or set(settings) - {"replace"}:
        raise TaxonomyError(f"{settings_path}: expected a mapping with only the key 'replace'")
    replace = settings.get("replace", False)
    if replace is True:
        return set(SECTIONS)
    if replace is False:
        return set()
    if isinstance(replace, list) and all(section in SECTIONS for section in replace):
        return set(replace)
    raise TaxonomyError(f"{settings_path}: 'replace' must be true, false or a list of sections from {list(SECTIONS)}")


def _read_section(folder: Path, section: str) -> dict[str, tuple[dict[str, Any], Path]]:
    """The entries of one section in one folder, keyed by name, each with the file it came from."""
    entries: dict[str, tuple[dict[str, Any], Path]] = {}
    for pattern in _SECTION_FILES[section]:
        for file_path in sorted(folder.glob(pattern)):
            for entry in _entries_in_file(file_path, section):
                name = entry["name"]
                if name in entries:
                    first = entries[name][1]
                    raise TaxonomyError(f"{file_path}: {_SINGULAR[section]} '{name}': duplicate name (already defined in {first})")
                entries[name] = (entry, file_path)
    return entries


def _entries_in_file(file_path: Path, section: str) -> list[dict[str, Any]]:
    """Read one file: a ``<section>:`` list, or (for tasks) a single task mapping. Shapes are checked here."""
    content = _read_yaml(file_path)
    if section == "tasks" and isinstance(content, dict) and "tasks" not in content:
        items: Any = [content]
    elif isinstance(content, dict) and section in content:
        items = content[section]
    else:
        raise TaxonomyError(f"{file_path}: expected a top-level '{section}:' list")
    if not isinstance(items, list):
        raise TaxonomyError(f"{file_path}: '{section}' must be a list")
    validator = jsonschema.Draft202012Validator(_ENTRY_SCHEMAS[section])
    for position, item in enumerate(items, start=1):
        label = f"{_SINGULAR[section]} #{position}"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label = f"{_SINGULAR[section]} '{item['name']}'"
        error = jsonschema.exceptions.best_match(validator.iter_errors(item))
        if error is not None:
            raise TaxonomyError(f"{file_path}: {label}: {_describe(error)}")
    return items


def _read_yaml(file_path: Path) -> Any:
    """Parse a taxonomy YAML file; a syntax error is one line with the position."""
    return read_yaml(file_path, "taxonomy file", TaxonomyError, _YAML_LOADER)


def _describe(error: jsonschema.ValidationError | jsonschema.SchemaError) -> str:
    """One line from a jsonschema error: the key path, then the message (trimmed)."""
    where = "/".join(str(part) for part in error.absolute_path)
    message = " ".join(error.message.split())
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{where}: {message}" if where else message


def _build(raw: Mapping[str, Mapping[str, tuple[dict[str, Any], Path]]]) -> Taxonomy:
    """Cross-check the merged entries and turn them into typed objects."""
    for section in SECTIONS:
        if not raw[section]:
            raise TaxonomyError(f"taxonomy: no {section.replace('_', ' ')} defined")
    categories = {name: Category(**entry) for name, (entry, _) in raw["categories"].items()}
    document_types = _build_document_types(raw["document_types"], categories)
    tasks, compatible = _build_tasks(raw["tasks"], categories, document_types)
    difficulty_levels = _build_difficulty_levels(raw["difficulty_levels"])
    formats = {name: OutputFormat(**entry) for name, (entry, _) in raw["output_formats"].items()}
    version_source = {section: [raw[section][name][0] for name in sorted(raw[section])] for section in SECTIONS}
    # Hashed as sorted-key JSON of the merged entries: stable across file layout, YAML style and loader.
    canonical = json.dumps(version_source, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    version = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
    return Taxonomy(
        categories=categories,
        document_types=document_types,
        tasks=tasks,
        difficulty_levels=difficulty_levels,
        output_format_details=formats,
        version=version,
        _compatible=compatible,
    )


def _build_document_types(entries: Mapping[str, tuple[dict[str, Any], Path]], categories: Mapping[str, Category]) -> dict[str, DocumentType]:
    """Document types ordered by category (in category order), then as listed."""
    built: dict[str, DocumentType] = {}
    category_order = {name: index for index, name in enumerate(categories)}
    for name, (entry, source) in entries.items():
        label = f"{source}: document type '{name}'"
        if entry["category"] not in categories:
            raise TaxonomyError(f"{label}: unknown category '{entry['category']}' (known: {', '.join(categories)})")
        length = TypicalLength(**entry["typical_length"])
        if length.min_words > length.max_words:
            raise TaxonomyError(f"{label}: typical_length min_words {length.min_words} > max_words {length.max_words}")
        built[name] = DocumentType(
            name=name,
            category=entry["category"],
            description=entry["description"],
            sections=tuple(entry["sections"]),
            typical_length=length,
            specialties=tuple(entry["specialties"]),
            settings=tuple(entry["settings"]),
        )
    return dict(sorted(built.items(), key=lambda item: category_order[item[1].category]))


def _build_tasks(
    entries: Mapping[str, tuple[dict[str, Any], Path]],
    categories: Mapping[str, Category],
    document_types: Mapping[str, DocumentType],
) -> tuple[dict[str, Task], dict[str, list[str]]]:
    """Tasks sorted by name, each checked (schema, example, references) and resolved to its document types."""
    tasks: dict[str, Task] = {}
    compatible: dict[str, list[str]] = {}
    for name in sorted(entries):
        entry, source = entries[name]
        label = f"{source}: task '{name}'"
        applies_to = AppliesTo(**{key: tuple(value) for key, value in entry["applies_to"].items()})
        _check_references(label, "categories", applies_to.categories, categories)
        _check_references(label, "document_types", applies_to.document_types, document_types)
        _check_references(label, "exclude_document_types", applies_to.exclude_document_types, document_types)
        _check_output_schema(label, entry["output_schema"], entry["example_output"])
        wanted_categories = set(applies_to.categories)
        wanted_types = set(applies_to.document_types)
        excluded = set(applies_to.exclude_document_types)
        compatible[name] = [doc_name for doc_name, doc_type in document_types.items() if (doc_type.category in wanted_categories or doc_name in wanted_types) and doc_name not in excluded]
        if not compatible[name]:
            raise TaxonomyError(f"{label}: applies to no document type (check applies_to)")
        tasks[name] = Task(
            name=name,
            description=entry["description"],
            instruction_guidance=entry["instruction_guidance"],
            answer_guidance=entry["answer_guidance"],
            applies_to=applies_to,
            output_schema=entry["output_schema"],
            example_output=entry["example_output"],
            example_input=entry.get("example_input"),
            example_instruction=entry.get("example_instruction"),
            document_requirements=entry.get("document_requirements"),
            benchmarks=tuple(entry.get("benchmarks", ())),
            quality_checks=tuple(entry.get("quality_checks", ())),
        )
    return tasks, compatible


def _check_references(label: str, key: str, names: Iterable[str], known: Mapping[str, Any]) -> None:
    """Every name a task's ``applies_to`` mentions must exist."""
    for name in names:
        if name not in known:
            raise TaxonomyError(f"{label}: applies_to.{key} names unknown '{name}'")


def _remote_refs(schema: Any) -> list[str]:
    """Every ``$ref`` / ``$dynamicRef`` in ``schema`` that does not point inside the schema itself."""
    found: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str) and not value.startswith("#"):
                found.append(value)
            else:
                found += _remote_refs(value)
    elif isinstance(schema, list):
        for item in schema:
            found += _remote_refs(item)
    return found


def _check_output_schema(label: str, schema: dict[str, Any], example: dict[str, Any]) -> None:
    """The schema must be valid Draft 2020-12 with an object root, and the example must satisfy it."""
    remote = _remote_refs(schema)
    if remote:
        raise TaxonomyError(f"{label}: output_schema refers to {remote[0]!r}: only local references ('#/...') are allowed (a data file never fetches from the network)")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TaxonomyError(f"{label}: invalid output_schema: {_describe(exc)}") from None
    if schema.get("type") != "object":
        raise TaxonomyError(f"{label}: output_schema must have type 'object' at its root (JSON answers are objects)")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(example))
    if error is not None:
        raise TaxonomyError(f"{label}: example_output does not match output_schema: {_describe(error)}")


def _build_difficulty_levels(entries: Mapping[str, tuple[dict[str, Any], Path]]) -> list[DifficultyLevel]:
    """Levels sorted by rank; ranks must be exactly 1..N so that 'harder' is well defined."""
    seen: set[int] = set()
    for entry, source in entries.values():
        # Ranks are >= 1 (entry schema), so no rank above the count and no repeat means exactly 1..N.
        if entry["rank"] > len(entries) or entry["rank"] in seen:
            raise TaxonomyError(f"{source}: difficulty level '{entry['name']}': rank {entry['rank']} breaks the sequence (ranks must be 1..{len(entries)}, each once)")
        seen.add(entry["rank"])
    return sorted((DifficultyLevel(**entry) for entry, _ in entries.values()), key=lambda level: level.rank)


def _lookup(entries: Mapping[str, Entry], name: str, kind: str) -> Entry:
    """Get ``entries[name]`` or raise a one-line error listing what exists."""
    try:
        return entries[name]
    except KeyError:
        raise MediflowError(f"unknown {kind} '{name}' (known: {', '.join(entries)})") from None


def _as_dict(item: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-ready data (tuples become lists; private fields dropped)."""
    result: dict[str, Any] = {}
    for key, value in vars(item).items():
        if key.startswith("_"):
            continue
        if isinstance(value, (TypicalLength, AppliesTo)):
            value = _as_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        result[key] = value
    return result
