"""What a model was trained on, as its folders' manifests say: the data an evaluation must not reuse.

Every training stage records in its manifest (``details.trained_on``) the data it trained on: the
path, the reader family and the split. A model folder made by MediFlow (``OUT/model`` of SFT/DPO,
``OUT/stage<i>-<name>/model`` of PIT, a merge folder) leads to that manifest, and the models it
started from or was merged from (its ``model`` inputs) lead to theirs, so an SFT model trained on
top of a merge of PIT experts names the SFT rows, and every expert's task data and documents.
``mediflow train eval`` compares its records with these texts (:func:`trained_texts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mediflow.errors import MediflowError
from mediflow.folders.manifest import Manifest, read_manifest
from mediflow.folders.model import HOLDS_MODEL
from mediflow.train.data import load_documents, load_messages, load_preferences, load_task_rows
from mediflow.train.overlap import conversation_text

#: The reader families a stage trains on, in the manifests' ``trained_on`` entries.
TRAINING_FAMILIES = ("sft", "preferences", "task_data", "documents")


def training_entry(path: Path, family: str, *, split: str | None = None, text_field: str | None = None) -> dict[str, Any]:
    """One ``trained_on`` entry of a stage's manifest."""
    return {"path": str(path), "family": family, "split": split, "text_field": text_field}


def _manifest_of(model: Path) -> Manifest | None:
    """The manifest of the MediFlow folder holding ``model`` (the merge folder itself, ``OUT`` of ``OUT/model``,
    or a PIT folder of ``OUT/stage<i>-<name>/model``); ``None`` for a model from anywhere else."""
    for root in (model, *list(model.parents)[:2]):
        try:
            manifest = read_manifest(root)
        except MediflowError:
            continue
        if manifest is not None:
            return manifest if manifest.holds == HOLDS_MODEL else None
    return None


def _entries(manifest: Manifest) -> list[dict[str, Any]]:
    """The data a manifest's run trained on: its ``trained_on``, else (an older manifest) its non-model inputs."""
    recorded = manifest.details.get("trained_on")
    if isinstance(recorded, list):
        return [entry for entry in recorded if isinstance(entry, dict)]
    if manifest.kind == "merge":
        return []
    refs = [ref for ref in manifest.inputs if ref.kind != "model"]
    if manifest.kind in ("sft", "dpo"):
        refs = refs[:1]  # the training rows; a second entry of the same family is the eval set
    return [training_entry(Path(ref.path), ref.kind) for ref in refs if ref.kind in TRAINING_FAMILIES]


def _texts(entry: dict[str, Any]) -> list[str]:
    path, family, split = Path(entry["path"]), entry["family"], entry.get("split") or "train"
    if family == "sft":
        return [conversation_text(row["messages"]) for row in load_messages(path, split)]
    if family == "preferences":
        return [conversation_text(row["prompt"] + row["chosen"]) for row in load_preferences(path, split)]
    if family == "task_data":
        return [f"{row['prompt']}\n{row['completion']}" for row in load_task_rows(path)]
    return [document["text"] for document in load_documents(path, entry.get("text_field") or "text")]


def trained_texts(model: Path) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """``([(what, texts), ...], unreadable)``: the training texts of ``model`` and of every model it came from.

    ``what`` names the data (``sft rows /data/train.parquet``); ``unreadable`` lists the data the
    manifests name that can no longer be read (moved or deleted), which the caller reports.
    """
    sources: list[tuple[str, list[str]]] = []
    unreadable: list[str] = []
    seen: set[str] = set()
    pending = [Path(model)]
    while pending:
        current = pending.pop()
        key = str(current.resolve())
        if key in seen:
            continue
        seen.add(key)
        manifest = _manifest_of(current)
        if manifest is None:
            continue
        for entry in _entries(manifest):
            what = f"{entry['family']} {entry['path']}"
            try:
                sources.append((what, _texts(entry)))
            except (MediflowError, OSError):
                unreadable.append(what)
        pending += [Path(ref.path) for ref in manifest.inputs if ref.kind == "model"]
    return sources, unreadable
