"""Read a merge config in mergekit's YAML format (the subset our methods need) and resolve its
parameters per tensor.

Supported keys: ``merge_method``, ``base_model``, ``models: [{model, parameters}]``,
``parameters``, ``dtype``, ``out_dtype``, ``tokenizer_source`` or ``tokenizer: {source}``. A
parameter value is a scalar, a *gradient* (a list of numbers interpolated over the layers, first
layer to last) or a list of ``{filter, value}`` conditions where the first condition whose
``filter`` is a substring of the tensor name wins (no filter, or ``*``, matches everything). A
model's own ``parameters`` take precedence over the top-level ones. Models are local folders,
relative to the working directory as in mergekit, or Hub ids read from the local Hugging Face cache
(``HF_HUB_CACHE``; a merge never downloads). Everything else is a one-line
:class:`~mediflow.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from mediflow.errors import ConfigError
from mediflow.textfiles import read_text
from mediflow.train.merge.catalog import METHODS, MethodSpec, ParameterSpec
from mediflow.train.models import HUB_ID, hub_snapshot

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_TOP_LEVEL_KEYS = {
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
}
_UNSUPPORTED = {
    "slices": "layer slices are not supported; list whole models under 'models'",
    "modules": "modules are not supported; list whole models under 'models'",
    "chat_template": "chat_template is not supported; the tokenizer (and its template) is copied from the tokenizer source",
}
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")

Setting = Any  # a scalar, a list of scalars (gradient), or conditions ({filter, value})


@dataclass(frozen=True)
class InputModel:
    """One model taking part in the merge, with its own parameter settings."""

    path: Path
    parameters: Mapping[str, Setting]


@dataclass(frozen=True)
class MergeConfig:
    """A validated merge config. ``models`` are the inputs in config order (the base is added at
    the end when it is not listed, as mergekit does); ``tokenizer_source`` is a folder."""

    method: MethodSpec
    base_model: Path | None
    models: tuple[InputModel, ...]
    parameters: Mapping[str, Setting]
    dtype: torch.dtype | None
    out_dtype: torch.dtype | None
    tokenizer_source: Path

    @property
    def base_index(self) -> int | None:
        if self.base_model is None:
            return None
        return next(i for i, model in enumerate(self.models) if model.path == self.base_model)


def load_merge_config(path: Path) -> MergeConfig:
    """Parse and validate a mergekit-style YAML file."""
    if not Path(path).exists():
        raise ConfigError(f"{path}: merge config not found")
    try:
        raw = yaml.safe_load(read_text(path, "merge config", ConfigError))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_merge_config(raw, source=str(path))


def parse_merge_config(raw: Any, *, source: str = "merge config") -> MergeConfig:
    """Validate a config already loaded from YAML (a dict)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping of merge settings at the top level")
    for key in raw:
        if key in _UNSUPPORTED:
            raise ConfigError(f"{source}: '{key}': {_UNSUPPORTED[key]}")
        if key not in _TOP_LEVEL_KEYS:
            raise ConfigError(f"{source}: unknown key '{key}' (known: {', '.join(sorted(_TOP_LEVEL_KEYS))})")
    method_name = raw.get("merge_method")
    if method_name not in METHODS:
        raise ConfigError(f"{source}: merge_method '{method_name}' is not one of: {', '.join(METHODS)}")
    method = METHODS[method_name]
    base = _model_path(raw["base_model"], f"{source}: base_model") if raw.get("base_model") else None
    models = _input_models(raw.get("models"), method, source)
    if base is not None and all(model.path != base for model in models):
        models.append(InputModel(base, {}))
    if method.needs_base and base is None:
        raise ConfigError(f"{source}: merge_method '{method.name}' needs a base_model")
    _check_input_count(method, len(models), source)
    parameters = _parameters(raw.get("parameters"), method, f"{source}: parameters", allowed_scopes=None)
    return MergeConfig(
        method=method,
        base_model=base,
        models=tuple(models),
        parameters=parameters,
        dtype=_dtype(raw.get("dtype"), f"{source}: dtype"),
        out_dtype=_dtype(raw.get("out_dtype"), f"{source}: out_dtype"),
        tokenizer_source=_tokenizer_source(raw, base, models, source),
    )


def _model_path(value: Any, where: str) -> Path:
    """A model folder, or a Hub id's snapshot in the local Hugging Face cache (as mergekit names models; never downloaded here)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a model folder path or Hub id, got {value!r}")
    path = Path(value).expanduser()
    if not path.exists() and HUB_ID.match(value):
        return hub_snapshot(value, key=where, download=False)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{where}: '{value}' is not a local model folder with config.json")
    return path.resolve()  # one folder, one name: `sub/../experts/a` and `experts/a` are the same model


def _input_models(raw: Any, method: MethodSpec, source: str) -> list[InputModel]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: 'models' must be a non-empty list of {{model: PATH, parameters: {{...}}}}")
    models: list[InputModel] = []
    for index, entry in enumerate(raw):
        where = f"{source}: models[{index}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, Mapping) or "model" not in entry:
            raise ConfigError(f"{where}: expected {{model: PATH, parameters: {{...}}}}")
        extra = set(entry) - {"model", "parameters"}
        if extra:
            raise ConfigError(f"{where}: unknown key '{sorted(extra)[0]}' (known: model, parameters)")
        path = _model_path(entry["model"], f"{where}.model")
        if any(model.path == path for model in models):
            raise ConfigError(f"{where}.model: '{entry['model']}' is listed twice")
        models.append(InputModel(path, _parameters(entry.get("parameters"), method, f"{where}.parameters", allowed_scopes=("input", "non_base"))))
    return models


def _parameters(raw: Any, method: MethodSpec, where: str, allowed_scopes: tuple[str, ...] | None) -> dict[str, Setting]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of parameter names to values")
    for name, setting in raw.items():
        if name not in method.parameter_names:
            raise ConfigError(f"{where}: unknown parameter '{name}' for {method.name} (known: {', '.join(method.parameter_names)})")
        spec = method.parameter(name)
        if allowed_scopes is not None and spec.scope not in allowed_scopes:
            raise ConfigError(f"{where}.{name}: is set once for the whole merge, under the top-level 'parameters'")
        _check_setting(setting, spec, f"{where}.{name}")
    return dict(raw)


def _check_setting(setting: Setting, spec: ParameterSpec, where: str) -> None:
    """Reject malformed values up front, so a merge does not fail half-way through."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if isinstance(setting, list):
        if all(isinstance(item, Mapping) for item in setting):
            for item in setting:
                extra = set(item) - {"filter", "value"}
                if "value" not in item or extra:
                    raise ConfigError(f"{where}: a condition needs exactly 'value' and optionally 'filter'")
                _check_setting(item["value"], spec, f"{where}.value")
            return
        for item in setting:
            coerce_value(item, spec, where)
        return
    coerce_value(setting, spec, where)


def coerce_value(value: Any, spec: ParameterSpec, where: str) -> float | bool:
    """A scalar setting as the parameter's type (YAML ``1.0``/``0`` are accepted as booleans)."""
    if spec.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None


def _dtype(value: Any, where: str) -> torch.dtype | None:
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(f"{where}: '{value}' is not one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def _tokenizer_source(raw: Mapping[str, Any], base: Path | None, models: list[InputModel], source: str) -> Path:
    """The folder the tokenizer files are copied from (default: the base, else the first model)."""
    if raw.get("tokenizer_source") is not None and raw.get("tokenizer") is not None:
        raise ConfigError(f"{source}: set either tokenizer_source or tokenizer, not both")
    value = raw.get("tokenizer_source")
    where = f"{source}: tokenizer_source"
    if raw.get("tokenizer") is not None:
        tokenizer = raw["tokenizer"]
        where = f"{source}: tokenizer"
        if not isinstance(tokenizer, Mapping) or set(tokenizer) - {"source"}:
            raise ConfigError(f"{where}: only {{source: base | PATH}} is supported (no added tokens or padding)")
        value = tokenizer.get("source")
    default = base if base is not None else models[0].path
    if value is None or value == "base":
        return default
    if value == "union":
        raise ConfigError(f"{where}: 'union' vocabularies are not supported; use 'base' or a model folder")
    return _model_path(value, where)


def _check_input_count(method: MethodSpec, count: int, source: str) -> None:
    if count < method.min_inputs:
        raise ConfigError(f"{source}: {method.name} needs at least {method.min_inputs} models (base included), got {count}")
    if method.max_inputs is not None and count > method.max_inputs:
        raise ConfigError(f"{source}: {method.name} takes at most {method.max_inputs} models (base included), got {count}")


def layer_index(tensor_name: str) -> int | None:
    """The decoder layer a tensor belongs to (``model.layers.3.mlp...`` -> 3), None outside the stack."""
    match = _LAYER_INDEX.search(tensor_name)
    return int(match.group(1)) if match else None


def layer_position(tensor_name: str, num_layers: int) -> float:
    """Where a tensor sits for gradient values: layer i of L maps to i / (L - 1); tensors outside
    the layer stack (embeddings, final norm, head) map to 0, as in mergekit."""
    index = layer_index(tensor_name)
    if index is None:
        return 0.0
    return index / (num_layers - 1) if num_layers > 1 else 1.0


def evaluate_setting(setting: Setting, spec: ParameterSpec, tensor_name: str, position: float) -> float | bool | None:
    """The value of one setting for one tensor: conditions by name, then gradients by position.

    Returns None when no condition matches (the next, lower-precedence setting is then tried).
    """
    if isinstance(setting, Mapping):
        setting = [setting]
    if not isinstance(setting, list):
        return coerce_value(setting, spec, spec.name)
    if not setting:
        return None
    if all(isinstance(item, Mapping) for item in setting):
        for condition in setting:
            name_filter = condition.get("filter")
            if name_filter in (None, "*") or name_filter in tensor_name:
                return evaluate_setting(condition["value"], spec, tensor_name, position)
        return None
    values = [coerce_value(item, spec, spec.name) for item in setting]
    if spec.kind is bool:
        return values[int(position * (len(values) - 1))]
    scaled = position * (len(values) - 1)
    low = int(scaled)
    high = min(len(values) - 1, low + 1)
    fraction = scaled - low
    return (1 - fraction) * values[low] + fraction * values[high]


def resolve_parameter(
    spec: ParameterSpec,
    settings: list[Mapping[str, Setting]],
    tensor_name: str,
    position: float,
    where: str,
) -> float | bool:
    """The first setting (highest precedence first) that yields a value, else the default."""
    for scope in settings:
        if spec.name in scope:
            value = evaluate_setting(scope[spec.name], spec, tensor_name, position)
            if value is not None:
                return value
    if spec.default is None:
        raise ConfigError(f"missing required parameter '{spec.name}' for {where} (tensor {tensor_name})")
    return spec.default
