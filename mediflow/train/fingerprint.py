"""Content fingerprints behind every reuse of a training result.

A finished stage, a checkpoint to resume from, a cached SLERP merge or a logged search score may
only be reused when everything it was computed from is unchanged. "Everything" is the content, not
the name: a model folder is identified by the hash of its weights and config (replacing an expert
in place changes it), a data set by the hash of its rows, and every hyperparameter by its value.

A fingerprint is a flat mapping ``{name: value or hash}``, so a mismatch can say *what* changed
(``train.learning_rate 2e-05 -> 0.0001``, ``model weights``) in one line. A training or merge
output folder keeps it in its manifest (``fingerprint``) and its hash is the folder's
``config_fingerprint`` (see :mod:`mediflow.folders.model`): the folder contract refuses a rerun with
another fingerprint, naming what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mediflow.errors import ConfigError
from mediflow.folders import atomic
from mediflow.folders.manifest import flatten

#: Files whose bytes define a model: weights, its config and the tokenizer that reads its inputs.
_MODEL_FILES = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

#: (path, size, mtime_ns) -> hash, so one process hashes a model folder's weights once.
_HASHED: dict[tuple[str, int, int], str] = {}


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and modification time)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        with path.open("rb") as handle:
            _HASHED[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _HASHED[key]


def model_fingerprint(folder: Path) -> str:
    """One hash over the weights, config and tokenizer files of a model folder."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in _MODEL_FILES for p in Path(folder).glob(pattern) if p.is_file()})
    if not files:
        raise ConfigError(f"{folder}: no model files to fingerprint")
    for path in files:
        digest.update(f"{path.name}={file_hash(path)}\n".encode())
    return digest.hexdigest()


def value_hash(value: Any) -> str:
    """SHA-256 of a JSON-serialisable value (rows of data, a config mapping) in canonical form."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (a temp file, then rename), so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, value)


def path_fingerprint(path: Path) -> str:
    """The content hash of a data file, or of every file under a folder (names and bytes)."""
    if path.is_file():
        return file_hash(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path)}={file_hash(item)}\n".encode())
    return digest.hexdigest()


def rows_hash(rows: Iterable[Any]) -> str:
    """SHA-256 over rows of data (token ids, messages), one canonical JSON line at a time: the content, never the file."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8") + b"\n")
    return digest.hexdigest()


#: ``train.extra`` keys (TRL / transformers arguments) that change how a run is watched, logged, saved
#: or fed, never the weights it ends with: they stay out of the fingerprint.
_EXTRA_NOT_INPUTS = frozenset(
    {
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataset_num_proc",
        "disable_tqdm",
        "log_level",
        "log_level_replica",
        "log_on_each_node",
        "logging_dir",
        "logging_first_step",
        "logging_nan_inf_filter",
        "logging_steps",
        "logging_strategy",
        "report_to",
        "run_name",
        "project",
        "trackio_space_id",
        "save_steps",
        "save_strategy",
        "save_total_limit",
        "save_only_model",
        "save_safetensors",
        "save_on_each_node",
        "push_to_hub",
        "hub_model_id",
        "hub_strategy",
        "hub_token",
        "hub_private_repo",
        "hub_always_push",
        "hub_revision",
        "include_num_input_tokens_seen",
        "include_tokens_per_second",
    }
)
#: ... and those that only matter when there is an eval set (they shape the eval losses the manifest reports).
_EXTRA_EVAL_ONLY = frozenset({"eval_strategy", "eval_steps", "eval_delay", "eval_accumulation_steps", "per_device_eval_batch_size", "eval_on_start", "batch_eval_metrics"})


def training_inputs(config: Any, *, has_eval: bool = False) -> dict[str, Any]:
    """The flat ``section.key`` values of a training stage's config that can change what it produces.

    Only those: where the inputs are is left out (their content is hashed instead: the rows, the
    weights, the chat template the stage trains with), and so is what
    only shows or paces the run (``data.warn_fraction``, ``output.*``, ``dataloader_num_workers``),
    what another setting makes irrelevant (``method.lora.*`` under full fine-tuning, ``train.epochs``
    under ``train.max_steps``, ``train.eval_steps`` with no eval set) and what the hashed rows already
    decide (``data.max_samples``, ``data.overlong``, ``data.split``, ``data.chunk_overlap``).
    ``has_eval``: the stage has an eval set (its eval settings shape the eval losses it reports).
    """
    method = config.method
    train = dataclasses.asdict(config.train)
    train.pop("resume_from_checkpoint")
    if config.train.max_steps > 0:
        train.pop("epochs")
    if not has_eval:
        train.pop("eval_steps")
    train["extra"] = {key: value for key, value in config.train.extra.items() if key not in _EXTRA_NOT_INPUTS and (has_eval or key not in _EXTRA_EVAL_ONLY)}
    values: dict[str, Any] = {
        "model": {
            "dtype": config.model.dtype,
            "chat_template_kwargs": config.model.chat_template_kwargs,
            "attn_implementation": config.model.attn_implementation,
        },
        "method": {
            "finetuning": method.finetuning,
            **({"lora": dataclasses.asdict(method.lora)} if method.adapters else {}),
            **({"qlora": dataclasses.asdict(method.qlora)} if method.finetuning == "qlora" else {}),
        },
        "data": {"max_length": config.data.max_length, "packing": config.data.packing},
        "train": train,
    }
    if config.stage in _OWN_SECTION_INPUTS:
        values[config.stage] = dataclasses.asdict(getattr(config, config.stage))
    return flatten(values)


#: The training stages with a section of their own that shapes the result (pit's schedule is
#: fingerprinted stage by stage by :mod:`.pit`).
_OWN_SECTION_INPUTS = ("dpo",)
