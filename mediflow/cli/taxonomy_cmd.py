"""``mediflow taxonomy``: show the tasks, document types, difficulty levels and formats a run would use.

The listing is how a user checks an extended taxonomy (``--path DIR``) before paying for a run:
it loads and validates exactly what ``generate`` would, and prints the size of the grid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mediflow.resources import taxonomies_dir
from mediflow.taxonomy import Taxonomy, load_taxonomy


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mediflow taxonomy`` to the top-level parser."""
    parser = subparsers.add_parser(
        "taxonomy",
        help="list tasks, document types, difficulty levels and output formats",
        description="Load and validate the taxonomy (built-in, or a folder merged over it) and list it.",
    )
    parser.add_argument(
        "--path",
        type=Path,
        default=None,
        metavar="DIR",
        help="a taxonomy folder that extends (or, with replace: true in its taxonomy.yaml, replaces) the built-in one",
    )
    parser.add_argument("--json", action="store_true", help="print the whole taxonomy as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the taxonomy; validation errors propagate as TaxonomyError (one line, exit 2)."""
    taxonomy = load_taxonomy(args.path)
    text = json.dumps(taxonomy.to_dict(), indent=2, ensure_ascii=False) if args.json else render_listing(taxonomy, args.path)
    try:
        print(text)
    except BrokenPipeError:  # `mediflow taxonomy | head`: the reader stopped early, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def render_listing(taxonomy: Taxonomy, path: Path | None) -> str:
    """The human-readable listing: tasks with their answer shape, document types by category, then counts."""
    source = "built-in" + (f" + {path}" if path else f": {taxonomies_dir().resolve()}")
    lines = [f"MediFlow taxonomy {taxonomy.version} ({source})", "", f"Tasks ({len(taxonomy.tasks)})"]
    name_width = max(len(name) for name in taxonomy.tasks)
    for task in taxonomy.tasks.values():
        count = len(taxonomy.document_types_for(task.name))
        lines.append(f"  {task.name:<{name_width}}  {count:>3} doc types  json: {schema_shape(task.output_schema)}")
    lines += ["", f"Document types ({len(taxonomy.document_types)}) in {len(taxonomy.categories)} categories"]
    for category in taxonomy.categories.values():
        members = [doc for doc in taxonomy.document_types.values() if doc.category == category.name]
        lines.append(f"  {category.name} ({len(members)})")
        for doc in members:
            length = f"{doc.typical_length.min_words}-{doc.typical_length.max_words} words"
            lines.append(f"    {doc.name:<40} {length}")
    lines += ["", f"Difficulty levels ({len(taxonomy.difficulty_levels)})"]
    for level in taxonomy.difficulty_levels:
        lines.append(f"  {level.rank}. {level.name:<13} {level.description}")
    lines += ["", f"Output formats: {', '.join(taxonomy.output_formats)}"]
    cells = len(taxonomy.cells())
    strata = cells * len(taxonomy.difficulty_levels) * len(taxonomy.output_formats)
    lines += [
        "",
        f"{len(taxonomy.tasks)} tasks x {len(taxonomy.document_types)} document types: {cells} compatible cells; x {len(taxonomy.difficulty_levels)} difficulty levels x {len(taxonomy.output_formats)} output formats = {strata} strata",
    ]
    return "\n".join(lines)


def schema_shape(schema: dict[str, Any], root: dict[str, Any] | None = None, depth: int = 0) -> str:
    """A one-line sketch of a JSON Schema: ``{codes: [{code, description, role, evidence}]}``."""
    root = root if root is not None else schema
    if "$ref" in schema:
        schema = root.get("$defs", {}).get(schema["$ref"].rsplit("/", 1)[-1], {})
    kind = schema.get("type")
    if kind == "array":
        return f"[{schema_shape(schema.get('items', {}), root, depth + 1)}]"
    if kind == "object":
        parts = []
        for key, sub in schema.get("properties", {}).items():
            nested = depth < 1 and _is_container(sub, root)
            parts.append(f"{key}: {schema_shape(sub, root, depth + 1)}" if nested else key)
        return "{" + ", ".join(parts) + "}"
    return str(kind)


def _is_container(schema: dict[str, Any], root: dict[str, Any]) -> bool:
    if "$ref" in schema:
        return True
    return schema.get("type") in ("array", "object")
