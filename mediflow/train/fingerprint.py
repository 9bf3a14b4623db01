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


#: The training stages with a section of their own that shapes the result (pit's schedule is
#: fingerprinted stage by stage by :mod:`.pit`).
_OWN_SECTION_INPUTS = ("dpo",)

#: Config values that are not inputs of the result: where things are (their content is hashed
#: instead), how progress is shown, whether to resume.
_NOT_INPUTS = ("data.train", "data.eval", "data.documents", "data.task_data", "data.records", "data.prompts", "train.resume_from_checkpoint")


def training_inputs(config: Any) -> dict[str, Any]:
    """The flat ``section.key`` values of a training stage's config that shape its result."""
    values = {
        "model": {"dtype": config.model.dtype, "chat_template": config.model.chat_template},
        "method": dataclasses.asdict(config.method),
        **({config.stage: dataclasses.asdict(getattr(config, config.stage))} if config.stage in _OWN_SECTION_INPUTS else {}),
        "data": dataclasses.asdict(config.data),
        "train": dataclasses.asdict(config.train),
    }
    return {key: value for key, value in flatten(values).items() if key not in _NOT_INPUTS}
