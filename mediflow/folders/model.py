"""Model output folders on the one contract: the model appears only when it is complete.

A training stage's folder (``train pit|sft|dpo``) and a merge's (``merge``, ``merge --preset``) are
contract folders like any other (:class:`~mediflow.folders.OutputFolder`: the overlap guards, the
lock naming its holder, the typed manifest with ``kind`` ``pit``/``sft``/``dpo``/``merge``, the
status, the config fingerprint and the inputs' fingerprints). What differs is what they hold:

* ``train sft|dpo``: ``OUT/model/`` (the finished Hugging Face folder) and ``OUT/checkpoint-*``;
* ``train pit``: ``OUT/stage<i>-<name>/`` per stage, each with ``model/``, its checkpoints and
  ``stage_manifest.json`` (what that model was trained from);
* ``merge``: the model files themselves in ``OUT`` (so ``OUT`` loads as a model), with
  ``merge_config.yaml``; the preset adds ``preset_report.json`` and ``work/``, its cache of chosen
  SLERPs and logged search scores (kept by ``--overwrite``, like a teacher cache).

A model is written to a ``.tmp-*`` staging folder and moved in by :func:`publish_model`:
``config.json`` leaves first and comes back last, so at no moment does a killed save leave a folder
that loads as a finished model (without ``config.json`` nothing loads; the old and new weights
never mix), and the manifest says ``finished`` only after the move. A model read as an input is
refused while its folder's run is unfinished or held by another process (:func:`check_model_input`).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from mediflow.errors import MediflowError
from mediflow.folders.atomic import TEMP_PREFIX, fsync_dir
from mediflow.folders.guards import lock_holder, refuse_link
from mediflow.folders.manifest import read_manifest

#: What a model folder's manifest says it holds.
HOLDS_MODEL = "model"
#: Where a training stage's finished model is, inside its folder.
MODEL_DIR = "model"
#: The trainer's checkpoints (``train.resume_from_checkpoint``).
CHECKPOINTS = "checkpoint-*"
#: The files a Hugging Face model folder is made of (weights, config, generation config, tokenizer).
MODEL_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
CONFIG_NAME = "config.json"


def staging_for(target: Path) -> Path:
    """Where the model bound for ``target`` is saved first (the same name in every process of a run)."""
    return target.parent / f"{TEMP_PREFIX}{target.name}.partial"


def publish_model(staging: Path, target: Path, replaces: Iterable[str] = ("*",)) -> Path:
    """Move the complete model saved in ``staging`` into ``target``; return ``target``.

    ``config.json`` is removed first and moved in last: in between nothing loads from ``target``, so a
    kill leaves no finished-looking mix of old and new files. ``replaces`` are the glob patterns of
    the old model's files to remove (everything, for ``OUT/model``; the model files, for a merge
    folder that also holds its manifest and cache).
    """
    patterns = tuple(replaces)
    refuse_link(target)  # checked when the folder opened; a link planted since is refused too
    target.mkdir(parents=True, exist_ok=True)
    (target / CONFIG_NAME).unlink(missing_ok=True)
    fsync_dir(target)
    for old in target.iterdir():
        if old.name.startswith(TEMP_PREFIX) or not any(fnmatch.fnmatchcase(old.name, p) for p in patterns):
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for entry in sorted(staging.iterdir(), key=lambda p: (p.name == CONFIG_NAME, p.name)):
        os.replace(entry, target / entry.name)
    fsync_dir(target)
    staging.rmdir()
    return target


def check_model_input(path: Path) -> None:
    """Refuse a model folder inside a model output folder whose run has not finished, or is running now.

    The folder is the model's own (a merge), its parent (``OUT/model``) or its grandparent (a PIT
    stage's ``OUT/stage<i>-<name>/model``). A model folder from anywhere else is read as it is.
    """
    path = Path(path)
    for root in (path, *list(path.parents)[:2]):
        try:
            manifest = read_manifest(root)
        except MediflowError:
            continue  # somebody else's manifest.json: not a MediFlow folder around this model
        if manifest is None:
            continue
        if manifest.holds != HOLDS_MODEL:
            return
        holder = lock_holder(root)
        if holder is not None:
            raise MediflowError(f"{path}: is being written by another process ({holder}); wait for it to finish")
        if manifest.status != "finished":
            why = f": {manifest.reason}" if manifest.reason else ""
            where = "" if root == path else f" in {root}"
            raise MediflowError(f"{path}: the {manifest.kind} run{where} did not finish (status {manifest.status}{why}); rerun it first")
        return
