"""The named error kinds of error injection, read from ``prompts/error_kinds.yaml``.

Kinds are data (a clinical reviewer adds one by editing YAML); code only decides which kinds apply
to a record (its task, output format and content) and picks one per record with a seeded hash, so
the same record gets the same kind on every rerun and a kind is never chosen that the record
cannot express (a wrong ICD-10 code needs a code in the answer; a broken JSON structure needs JSON).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mediflow.errors import MediflowError
from mediflow.preference.icd10 import valid_codes_in
from mediflow.resources import prompts_dir
from mediflow.textfiles import read_text

#: How a kind's error is introduced: by the teacher, or by a deterministic substitution in code.
STRATEGIES: tuple[str, ...] = ("rewrite", "icd10_sibling")

ERROR_KINDS_FILE = "error_kinds.yaml"


@dataclass(frozen=True)
class ErrorKind:
    """One kind of deliberate error (see ``prompts/error_kinds.yaml`` for the fields' meaning)."""

    name: str
    description: str
    how: str
    formats: tuple[str, ...]
    tasks: tuple[str, ...] | None  # None = every task
    requires: str | None = None
    strategy: str = "rewrite"
    structural: bool = False  # a JSON structure error (else a content error that must keep the structure)

    def applies_to(self, task_type: str, output_format: str) -> bool:
        """Whether the kind is meant for this task and output format (content is checked separately)."""
        return output_format in self.formats and (self.tasks is None or task_type in self.tasks)


def load_error_kinds(path: str | Path | None = None) -> tuple[ErrorKind, ...]:
    """Read and validate the error kinds file (default: the built-in ``prompts/error_kinds.yaml``)."""
    file = Path(path) if path is not None else prompts_dir() / ERROR_KINDS_FILE
    try:
        data = yaml.safe_load(read_text(file, "error kinds file"))
    except OSError as exc:
        raise MediflowError(f"cannot read error kinds file {file}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise MediflowError(f"{file} is not valid YAML: {exc}") from exc
    entries = data.get("error_kinds") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise MediflowError(f"{file}: expected a non-empty list under the key 'error_kinds'")
    kinds = tuple(_parse_kind(file, index, entry) for index, entry in enumerate(entries))
    names = [kind.name for kind in kinds]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise MediflowError(f"{file}: duplicate error kind name(s) {', '.join(duplicates)}")
    return kinds


def _parse_kind(file: Path, index: int, entry: Any) -> ErrorKind:
    where = f"{file}: error_kinds[{index}]"
    if not isinstance(entry, dict):
        raise MediflowError(f"{where} must be a mapping")
    for key in ("name", "description", "how", "formats"):
        if not entry.get(key):
            raise MediflowError(f"{where} is missing the key '{key}'")
    where = f"{file}: error kind '{entry['name']}'"
    strategy = entry.get("strategy", "rewrite")
    if strategy not in STRATEGIES:
        raise MediflowError(f"{where}: unknown strategy '{strategy}' (known: {', '.join(STRATEGIES)})")
    requires = entry.get("requires")
    if requires is not None and requires not in REQUIREMENTS:
        raise MediflowError(f"{where}: unknown requirement '{requires}' (known: {', '.join(REQUIREMENTS)})")
    structural = entry.get("structural", False)
    if not isinstance(structural, bool):
        raise MediflowError(f"{where}: 'structural' must be true or false")
    tasks = entry.get("tasks", "all")
    if tasks != "all" and not (isinstance(tasks, list) and all(isinstance(t, str) for t in tasks)):
        raise MediflowError(f"{where}: 'tasks' must be 'all' or a list of task names")
    return ErrorKind(
        name=str(entry["name"]),
        description=str(entry["description"]).strip(),
        how=str(entry["how"]).strip(),
        formats=tuple(entry["formats"]),
        tasks=None if tasks == "all" else tuple(tasks),
        requires=requires,
        strategy=strategy,
        structural=structural,
    )


def _has_icd10_code(output: str) -> bool:
    return bool(valid_codes_in(output))


#: Content requirements a kind may name in ``requires``: a predicate on the chosen answer.
REQUIREMENTS: dict[str, Callable[[str], bool]] = {"icd10_code": _has_icd10_code}


def applicable_kinds(kinds: Sequence[ErrorKind], task_type: str, output_format: str, output: str) -> list[ErrorKind]:
    """The kinds that fit this record: its task, its format and what its answer contains."""
    return [kind for kind in kinds if kind.applies_to(task_type, output_format) and (kind.requires is None or REQUIREMENTS[kind.requires](output))]


def choose_kind(candidates: Sequence[ErrorKind], record_key: str, seed: int) -> ErrorKind | None:
    """Pick one kind for a record, stable across runs (a hash of seed and record id, not a shared RNG)."""
    if not candidates:
        return None
    digest = hashlib.sha256(f"{seed}:{record_key}:error-kind".encode()).digest()
    return candidates[int.from_bytes(digest[:8], "big") % len(candidates)]
