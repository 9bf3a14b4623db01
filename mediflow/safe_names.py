"""Safe names: the values that become file or folder names (task, document type, category, config).

A name is a slug, ``[a-z0-9_]+``: it can never climb out of a folder (``..``, ``/``), be absolute,
hide (a leading dot) or differ only by case on another file system. Names are checked when a
taxonomy loads and again wherever a value becomes a path (a record's ``task_type`` becomes an
export config folder), because records can come from outside MediFlow.
"""

from __future__ import annotations

import re

from mediflow.errors import MediflowError

SLUG = re.compile(r"[a-z0-9_]+")


def is_safe_name(value: object) -> bool:
    """Whether ``value`` is a slug."""
    return isinstance(value, str) and SLUG.fullmatch(value) is not None


def safe_name(value: object, what: str) -> str:
    """``value`` when it is a slug; otherwise an error naming ``what`` (e.g. "task_type in runs/a") and the value."""
    if not is_safe_name(value):
        raise MediflowError(f"{what}: {value!r} is not a safe name (use only a-z, 0-9 and _)")
    return str(value)
