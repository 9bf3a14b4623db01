"""Locate the data shipped with the package: ``prompts/`` and ``taxonomies/``.

Both folders live at the repository's top level (so clinical users can read and extend them) and
are linked into the package as ``mediflow/_data/`` so that the same paths work from a source
checkout, an editable install and an installed wheel.
"""

from __future__ import annotations

from pathlib import Path

_DATA = Path(__file__).resolve().parent / "_data"


def prompts_dir() -> Path:
    """The built-in prompt templates folder."""
    return _DATA / "prompts"


def taxonomies_dir() -> Path:
    """The built-in taxonomy folder (tasks, document types, difficulty levels, formats)."""
    return _DATA / "taxonomies"
