"""Run a merge config end to end: stream every tensor of the input folders into a new model folder.

For each tensor of the reference model (the base, else the first model), in shard order: resolve
its parameters (filters, layer gradients), run the method's statistics pass, then merge and write
it row chunk by row chunk. The output is a contract folder (:mod:`.output`): the model is built in a
``.tmp-*`` staging folder inside it and published at the end, so an interrupted merge never leaves a
half-written model where a good one is expected.
The output is a normal Hugging Face folder: sharded safetensors + index, ``config.json`` (with the
output dtype), ``generation_config.json`` and the tokenizer files of the tokenizer source.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mediflow.errors import ConfigError, MediflowError
from mediflow.folders.model import staging_for
from mediflow.train.merge.config import MergeConfig, layer_index, layer_position, resolve_parameter
from mediflow.train.merge.output import MERGE_CONFIG_NAME, merge_identity, open_merge_output, plain_merge_config, publish_merge
from mediflow.train.merge.safetensors_io import ModelFolder, ShardedWriter
from mediflow.train.merge.tensor_plans import TensorSource, plan_tensor, row_chunks

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
#: Elements per row chunk: 4M float32 = 16 MiB per input, small next to any real model tensor.
DEFAULT_CHUNK_ELEMENTS = 1 << 22

#: An output-embedding tensor a model may leave out because it is tied to its input embedding.
TIED_FALLBACKS = {"lm_head.weight": ("model.embed_tokens.weight", "transformer.wte.weight")}

#: Files copied beside the weights; tokenizer files come from the tokenizer source.
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}


@dataclass(frozen=True)
class MergePlan:
    """Everything a merge needs to know before it writes a byte: the inputs opened, every tensor's
    inputs and output dtype checked (a missing tensor or a shape mismatch is refused here)."""

    config: MergeConfig
    folders: list[ModelFolder]
    reference_index: int
    reference_config: dict[str, Any]
    num_layers: int
    tensor_inputs: dict[str, list[str]]
    out_dtypes: dict[str, torch.dtype]


def plan_merge(config: MergeConfig) -> MergePlan:
    """Open the config's model folders and check that every tensor can be merged."""
    folders = [ModelFolder(model.path) for model in config.models]
    reference_index = config.base_index if config.base_index is not None else 0
    reference = folders[reference_index]
    reference_config = _read_json(config.models[reference_index].path / "config.json")
    num_layers = int(reference_config.get("num_hidden_layers") or _count_layers(reference))
    tensor_inputs = {name: _input_names(name, folders, config) for name in reference.tensors}
    out_dtypes = {name: _output_dtype(config, folders, names) for name, names in tensor_inputs.items()}
    return MergePlan(config, folders, reference_index, reference_config, num_layers, tensor_inputs, out_dtypes)


def write_merge(
    plan: MergePlan,
    folder: Path,
    *,
    seed: int = 0,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    progress: bool = False,
) -> Path:
    """Write the merged model into the new folder ``folder`` (a staging or scratch folder) and return it.

    ``seed`` drives DARE's random drops (per tensor and per input, so a rerun gives the same
    model); the deterministic methods ignore it.
    """
    config = plan.config
    reference = plan.folders[plan.reference_index]
    layout = [(name, reference.info(name).shape, plan.out_dtypes[name]) for name in reference.tensors]
    folder.mkdir(parents=True)
    writer = ShardedWriter(folder, layout, max_shard_bytes)
    for name in tqdm(list(writer.tensors()), desc="merging tensors", disable=not progress, unit="tensor"):
        _merge_one(name, plan.tensor_inputs[name], plan.folders, config, writer, plan.out_dtypes[name], plan.num_layers, seed, chunk_elements)
    writer.finish()
    _write_config(plan.reference_config, folder, plan.out_dtypes)
    _copy_side_files(config, config.models[plan.reference_index].path, folder)
    return folder


def run_merge(
    config: MergeConfig,
    output: Path,
    *,
    seed: int = 0,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    progress: bool = False,
    config_text: str | None = None,
) -> Path:
    """Merge the config's models into the merge folder ``output`` and return it.

    ``output`` is a contract folder of kind ``merge`` (:mod:`.output`): the inputs are checked and
    every tensor planned before anything is written; the same merge there already finished is
    reused; another one is refused unless ``overwrite``; the model is published only when complete.
    ``config_text`` (the YAML as the user wrote it) is saved beside the model as ``merge_config.yaml``.
    """
    output = Path(output)
    identity, inputs = merge_identity(config, seed)
    plan = plan_merge(config)
    folder = open_merge_output(output, config=plain_merge_config(config, seed), identity=identity, inputs=inputs, overwrite=overwrite)
    with folder:
        if (output / "config.json").is_file():  # kept by the open: this same merge, complete
            previous = folder.previous
            folder.finish(previous.counts if previous else {}, previous.details if previous else {})
            logger.info("merge: %s was merged from these exact inputs; reused (--overwrite merges again)", output)
            return output
        staging = staging_for(output / "model")
        write_merge(plan, staging, seed=seed, max_shard_bytes=max_shard_bytes, chunk_elements=chunk_elements, progress=progress)
        if config_text is not None:
            (staging / MERGE_CONFIG_NAME).write_text(config_text, encoding="utf-8")
        publish_merge(folder, staging)
        folder.finish({"models": len(config.models), "tensors": len(plan.tensor_inputs)})
    return output


def _read_json(path: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return value


def _count_layers(folder: ModelFolder) -> int:
    indices = [index for name in folder.tensors if (index := layer_index(name)) is not None]
    return max(indices) + 1 if indices else 1


def _input_names(name: str, folders: list[ModelFolder], config: MergeConfig) -> list[str]:
    """The tensor each input contributes for ``name``: the same name, or its tied input embedding."""
    names = []
    for folder, model in zip(folders, config.models, strict=True):
        found = name if name in folder else next((alt for alt in TIED_FALLBACKS.get(name, ()) if alt in folder), None)
        if found is None:
            raise MediflowError(f"tensor '{name}' is missing from model {model.path}; all models must share an architecture")
        names.append(found)
    shapes = [folder.info(n).shape for folder, n in zip(folders, names, strict=True)]
    if len(set(shapes)) > 1:
        listed = ", ".join(f"{model.path}: {list(shape)}" for model, shape in zip(config.models, shapes, strict=True))
        raise MediflowError(f"tensor '{name}' has different shapes across models ({listed}); vocabularies must match")
    return names


def _output_dtype(config: MergeConfig, folders: list[ModelFolder], names: list[str]) -> torch.dtype:
    stored = [folder.info(n).dtype for folder, n in zip(folders, names, strict=True)]
    if not all(dtype.is_floating_point for dtype in stored):
        return stored[0]
    if config.out_dtype is not None:
        return config.out_dtype
    if config.dtype is not None:
        return config.dtype
    promoted = stored[0]
    for dtype in stored[1:]:
        promoted = torch.promote_types(promoted, dtype)
    return promoted


def _merge_one(
    name: str,
    input_names: list[str],
    folders: list[ModelFolder],
    config: MergeConfig,
    writer: ShardedWriter,
    out_dtype: torch.dtype,
    num_layers: int,
    seed: int,
    chunk_elements: int,
) -> None:
    infos = [folder.info(n) for folder, n in zip(folders, input_names, strict=True)]
    if not all(info.dtype.is_floating_point for info in infos):
        _copy_agreed_buffer(name, input_names, folders, writer)
        return
    compute = torch.float64 if torch.float64 in (config.dtype, *(i.dtype for i in infos)) else torch.float32
    sources = [TensorSource(info.shape, functools.partial(folder.read_rows, n), compute, config.dtype) for folder, n, info in zip(folders, input_names, infos, strict=True)]
    shared, per_input = _tensor_parameters(config, name, input_names, num_layers)
    chunks = row_chunks(infos[0].shape, chunk_elements)
    plan = plan_tensor(config.method, sources, config.base_index, shared, per_input, chunks, lambda i: _generator(seed, name, i))
    for start, stop in chunks:
        writer.write(name, plan.merge_rows(start, stop).to(out_dtype))


def _tensor_parameters(config: MergeConfig, name: str, input_names: list[str], num_layers: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    position = layer_position(name, num_layers)
    shared = {spec.name: resolve_parameter(spec, [config.parameters], name, position, "the merge") for spec in config.method.parameters if spec.scope == "shared"}
    per_input = []
    for index, (model, input_name) in enumerate(zip(config.models, input_names, strict=True)):
        per_input.append(
            {
                spec.name: resolve_parameter(spec, [model.parameters, config.parameters], input_name, position, f"model {model.path}")
                for spec in config.method.parameters
                if spec.scope == "input" or (spec.scope == "non_base" and index != config.base_index)
            }
        )
    return shared, per_input


def _generator(seed: int, tensor_name: str, input_index: int) -> torch.Generator:
    """A generator seeded from (seed, tensor, input): the same draws on every run and in both passes."""
    digest = hashlib.sha256(f"{seed}:{tensor_name}:{input_index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _copy_agreed_buffer(name: str, input_names: list[str], folders: list[ModelFolder], writer: ShardedWriter) -> None:
    """Integer buffers are not merged: they must agree across the inputs and are copied."""
    first = folders[0].read(input_names[0])
    for folder, other_name in zip(folders[1:], input_names[1:], strict=True):
        if not torch.equal(first, folder.read(other_name)):
            raise MediflowError(f"non-floating tensor '{name}' differs between models {folders[0].path} and {folder.path}")
    writer.write(name, first)


def _write_config(reference_config: dict[str, Any], folder: Path, out_dtypes: dict[str, torch.dtype]) -> None:
    """The reference's config.json, with the dtype the weights were written in."""
    floating = [dtype for dtype in out_dtypes.values() if dtype.is_floating_point]
    merged = dict(reference_config)
    if floating:
        name = _DTYPE_NAMES.get(floating[0], str(floating[0]).removeprefix("torch."))
        merged["dtype"] = name
        if "torch_dtype" in merged:
            merged["torch_dtype"] = name
    (folder / "config.json").write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _copy_side_files(config: MergeConfig, reference: Path, folder: Path) -> None:
    source = config.tokenizer_source
    if source != reference:
        ours = _read_json(reference / "config.json").get("vocab_size")
        theirs = _read_json(source / "config.json").get("vocab_size")
        if ours != theirs:
            raise ConfigError(f"tokenizer source {source} has vocab_size {theirs} but the merged weights have {ours}; vocabulary remapping is not supported")
    if (reference / "generation_config.json").is_file():
        shutil.copy2(reference / "generation_config.json", folder / "generation_config.json")
    for file_name in TOKENIZER_FILES:
        if (source / file_name).is_file():
            shutil.copy2(source / file_name, folder / file_name)
