"""A merge's output folder on the one folder contract (see :mod:`mediflow.folders.model`).

``mediflow merge`` and the MediPhi preset write a folder of kind ``merge`` that is itself the merged
model (so ``--model-name-or-path OUT`` loads it), beside its ``manifest.json`` and ``.lock``. Its
identity is the merge's settings and the content of every input model (weights, config, tokenizer):
the same merge there is reused, another one is refused naming what changed unless ``--overwrite``,
and a model given as a path overlapping the output is refused before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mediflow.folders import InputRef, OutputFolder
from mediflow.folders.manifest import flatten
from mediflow.folders.model import HOLDS_MODEL, MODEL_FILES, check_model_input, publish_model
from mediflow.train.fingerprint import model_fingerprint, value_hash
from mediflow.train.merge.config import MergeConfig

MERGE_CONFIG_NAME = "merge_config.yaml"
PRESET_REPORT_NAME = "preset_report.json"
#: What a merge folder holds besides the contract's own files.
MERGE_ENTRIES = (*MODEL_FILES, MERGE_CONFIG_NAME, PRESET_REPORT_NAME)


def model_inputs(paths: Sequence[Path]) -> list[InputRef]:
    """The input model folders as manifest entries (each checked: a model still being written is refused)."""
    refs = []
    for path in paths:
        check_model_input(path)
        refs.append(InputRef(str(path), "model", model_fingerprint(path)))
    return refs


def plain_merge_config(config: MergeConfig, seed: int) -> dict[str, Any]:
    """The merge config as plain data for the manifest (the mergekit keys, paths as strings)."""
    return {
        "merge_method": config.method.name,
        "base_model": str(config.base_model) if config.base_model else None,
        "models": [{"model": str(model.path), "parameters": dict(model.parameters)} for model in config.models],
        "parameters": dict(config.parameters),
        "dtype": str(config.dtype).removeprefix("torch.") if config.dtype else None,
        "out_dtype": str(config.out_dtype).removeprefix("torch.") if config.out_dtype else None,
        "tokenizer_source": str(config.tokenizer_source),
        "seed": seed,
    }


def merge_identity(config: MergeConfig, seed: int) -> tuple[dict[str, Any], list[InputRef]]:
    """What a merge's result depends on (settings and input weights, not paths), and its inputs."""
    paths = [model.path for model in config.models]
    if config.tokenizer_source not in paths:
        paths.append(config.tokenizer_source)
    inputs = model_inputs(paths)
    weights = {ref.path: ref.fingerprint for ref in inputs}
    plain = plain_merge_config(config, seed)
    identity = {
        **{key: value for key, value in plain.items() if key not in ("models", "base_model", "tokenizer_source")},
        "models": {str(i): {"parameters": model["parameters"], "weights": weights[model["model"]]} for i, model in enumerate(plain["models"])},
        "base model": config.base_index,
        "tokenizer": weights[str(config.tokenizer_source)],
    }
    return flatten(identity), inputs


def open_merge_output(
    output: Path,
    *,
    config: dict[str, Any],
    identity: dict[str, Any],
    inputs: Sequence[InputRef],
    overwrite: bool,
    caches: Iterable[str] = (),
    data_paths: Sequence[Path] = (),
) -> OutputFolder:
    """Open a merge folder: every guard (overlap with any input model or the evaluators' ``data_paths``,
    another merge's folder), the lock, ``running``."""
    return OutputFolder.open(
        output,
        kind="merge",
        holds=HOLDS_MODEL,
        config=config,
        fingerprint=value_hash(identity),
        inputs=inputs,
        input_paths=[Path(ref.path) for ref in inputs] + list(data_paths),
        overwrite=overwrite,
        staged=False,
        extra_entries=MERGE_ENTRIES,
        caches=caches,
        details={"fingerprint": identity},
    )


def publish_merge(folder: OutputFolder, staging: Path) -> Path:
    """Move the complete merged model from ``staging`` into the merge folder (config.json last)."""
    return publish_model(staging, folder.root, replaces=MERGE_ENTRIES)
