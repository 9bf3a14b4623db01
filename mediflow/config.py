"""The run config of ``mediflow generate``: one documented schema, validated, with one-line errors.

The schema is a tree of dataclasses (the single source of truth: defaults, types and the help text
of every key live on the fields). A JSON Schema is derived from that tree and checked with
``jsonschema`` so that YAML, JSON, Python dicts and CLI flags all go through the same validation,
and every problem is reported as one :class:`~mediflow.errors.ConfigError` line naming the key
(``sampling.response.temperature: -1 is less than the minimum of 0``), with a "did you mean" for
misspelt keys. Which task / document type / difficulty names exist is the taxonomy's business and is
checked when the plan is built (:mod:`mediflow.pipeline.plan`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

import jsonschema
import yaml

from mediflow.errors import ConfigError

#: The generation stages, in the order a record goes through them.
STAGES: tuple[str, ...] = ("document", "instruction", "response")


def _key(default: Any = None, help: str = "", **constraints: Any) -> Any:
    """A config field with its help text and JSON Schema constraints (``minimum``, ``maximum`` ...)."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **constraints})
    return field(default=default, metadata={"help": help, **constraints})


@dataclass
class TeacherConfig:
    """Which LLM writes the data. The API key is read from an environment variable, never from the config."""

    spec: str = _key("local", "local | openai:MODEL | azure:DEPLOYMENT | vllm:PATH")
    base_url: str | None = _key(None, "OpenAI-compatible server URL (vLLM, SGLang, llama.cpp, Azure endpoint)")
    api_key_env: str | None = _key(None, "name of the environment variable holding the API key (default: the SDK's)")


@dataclass
class SamplingConfig:
    """Sampling parameters of one stage's teacher calls."""

    temperature: float = _key(0.7, "sampling temperature", minimum=0, maximum=2)
    top_p: float = _key(1.0, "nucleus sampling mass", exclusiveMinimum=0, maximum=1)
    max_tokens: int = _key(1024, "upper bound on the answer's length in tokens", minimum=1)


@dataclass
class StageSampling:
    """Sampling per stage: documents want variety, responses want precision. Correction turns use ``response``."""

    document: SamplingConfig = _key(SamplingConfig(temperature=0.9, top_p=0.95, max_tokens=1024), "document stage")
    instruction: SamplingConfig = _key(SamplingConfig(temperature=0.8, top_p=0.95, max_tokens=256), "instruction stage")
    response: SamplingConfig = _key(SamplingConfig(temperature=0.3, top_p=1.0, max_tokens=1024), "response stage")


@dataclass
class LimitsConfig:
    """How hard to push the teacher (see the engine): a concurrency cap, rate buckets, adaptive backoff."""

    concurrency: int = _key(64, "most teacher requests in flight at once", minimum=1)
    rpm: int | None = _key(None, "requests-per-minute bucket (default: from x-ratelimit headers, else none)", minimum=1)
    tpm: int | None = _key(None, "tokens-per-minute bucket", minimum=1)
    adaptive: bool = _key(True, "additive-increase / multiplicative-decrease on 429s and rising latency")
    max_retries: int = _key(6, "retries per request on 429 / 5xx / timeouts / truncated answers", minimum=0)
    request_timeout: float = _key(120.0, "seconds before one request counts as timed out", exclusiveMinimum=0)
    error_rate_threshold: float = _key(0.5, "stop the run when this share of a window's requests fail", minimum=0, maximum=1)


@dataclass
class PricesConfig:
    """Price of the teacher's tokens, for the cost shown in the progress bar and the manifest."""

    input_per_1k: float | None = _key(None, "USD per 1,000 prompt tokens", minimum=0)
    output_per_1k: float | None = _key(None, "USD per 1,000 completion tokens", minimum=0)


@dataclass
class OutputConfig:
    """Where and how the run's output directory is written."""

    dir: str = _key("mediflow-out/run", "output directory (shards, rejects, manifest, teacher cache)")
    shard_size: int = _key(1000, "plan items per Parquet shard (a shard holds at most this many records)", minimum=1)


@dataclass
class VllmProcessorConfig:
    """The GPU path of ``engine: ray`` with a ``vllm:PATH`` teacher: ray.data.llm's vLLM engine processor."""

    replicas: int = _key(1, "vLLM engine replicas (each holds the model on tensor_parallel_size GPUs)", minimum=1)
    tensor_parallel_size: int = _key(1, "GPUs per replica", minimum=1)
    batch_size: int = _key(64, "requests per batch handed to a replica", minimum=1)
    max_model_len: int | None = _key(None, "context length the engine reserves (default: the model's)", minimum=1)


@dataclass
class RayConfig:
    """Where and how wide ``engine: ray`` runs (see docs/scaling.md)."""

    address: str | None = _key(None, "Ray cluster address (auto, ray://HOST:10001); none: start a local Ray on this machine")
    actors: int = _key(
        2, "engine actors; each runs our Engine with concurrency, rpm and tpm divided by the number of actors", minimum=1
    )
    batch_size: int = _key(8, "plan units (instruction groups or records) per batch handed to an actor", minimum=1)
    batches_per_actor: int = _key(4, "batches one actor works on at once, so a slow answer holds back no batch", minimum=1)
    num_cpus: float = _key(0.5, "CPUs Ray reserves per actor (an actor mostly waits on the network)", exclusiveMinimum=0)
    vllm: VllmProcessorConfig = _key(VllmProcessorConfig(), "the vLLM engine processor (vllm:PATH teachers)")


@dataclass
class RunConfig:
    """Everything ``mediflow generate`` needs; every key has a default, so ``{}`` is a valid config."""

    teacher: TeacherConfig = _key(TeacherConfig(), "the teacher LLM")
    stages: list[str] = _key(list(STAGES), "stages to run, a prefix of document, instruction, response")
    tasks: list[str] | None = _key(None, "task names to generate (default: all in the taxonomy)")
    document_types: list[str] | None = _key(None, "document type names (default: all compatible with each task)")
    difficulty_levels: list[str] | None = _key(None, "difficulty level names (default: all)")
    per_cell: int = _key(
        1, "records per (task, document type, difficulty) stratum, x the difficulty's weight; split over formats", minimum=1
    )
    json_share: float = _key(0.5, "share of records asked for in JSON (the rest plain text)", minimum=0, maximum=1)
    documents_per_instruction: int = _key(
        1, "documents that share one instruction (the released set: ~3.6, 2.5M rows / 700k instructions)", minimum=1
    )
    max_records: int | None = _key(None, "stop the plan after this many records (a seeded, stratified prefix)", minimum=1)
    seed: int = _key(0, "seed of the plan, the seed facts and the teacher's sampling", minimum=0)
    max_corrections: int = _key(2, "correction turns for a JSON answer that fails its schema", minimum=0)
    records_in_flight: int | None = _key(None, "records being worked on at once (default: 2 x concurrency)", minimum=1)
    sampling: StageSampling = _key(StageSampling(), "sampling parameters per stage")
    limits: LimitsConfig = _key(LimitsConfig(), "request limits")
    prices: PricesConfig = _key(PricesConfig(), "token prices")
    taxonomy: str | None = _key(None, "a taxonomy folder merged over the built-in one")
    prompts: str | None = _key(None, "a prompts folder used instead of the built-in one")
    output: OutputConfig = _key(OutputConfig(), "the output directory")
    progress: bool = _key(True, "show a progress bar")
    engine: Literal["local", "ray"] = _key("local", "local: one asyncio process; ray: Ray Data actors (ray: section)")
    ray: RayConfig = _key(RayConfig(), "the Ray engine (engine: ray)")
    shard: str | None = _key(None, "K/N: make only the K-th of N deterministic shares of the plan (mediflow join)", pattern=r"^\s*\d+\s*/\s*\d+\s*$")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for the manifest). Holds no secret: the API key is only named, by its variable."""
        return dataclasses.asdict(self)


#: Flat names accepted by ``generate(**overrides)`` and the CLI, mapped to their dotted key.
ALIASES: dict[str, str] = {
    "teacher": "teacher.spec",
    "base_url": "teacher.base_url",
    "api_key_env": "teacher.api_key_env",
    "concurrency": "limits.concurrency",
    "rpm": "limits.rpm",
    "tpm": "limits.tpm",
    "adaptive": "limits.adaptive",
    "out": "output.dir",
    "shard_size": "output.shard_size",
    "ray_address": "ray.address",
    "actors": "ray.actors",
}


# --------------------------------------------------------------------------- schema derivation


def _type_schema(annotation: Any) -> dict[str, Any]:
    """JSON Schema of one annotation (str, int, float, bool, list[X], X | None, nested dataclass)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [_type_schema(arg) for arg in typing.get_args(annotation)]
        return {"anyOf": options}
    if origin is list:
        (item,) = typing.get_args(annotation)
        return {"type": "array", "items": _type_schema(item)}
    if origin is Literal:
        return {"enum": list(typing.get_args(annotation))}
    if dataclasses.is_dataclass(annotation):
        return _dataclass_schema(annotation)
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    return {"type": simple[annotation]}


def _dataclass_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        schema = _type_schema(hints[f.name])
        constraints = {k: v for k, v in f.metadata.items() if k != "help"}
        if constraints:  # apply to the non-null branch of an optional
            target = next((s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"), schema)
            target.update(constraints)
        schema["description"] = f.metadata.get("help", "")
        properties[f.name] = schema
    return {"type": "object", "properties": properties, "additionalProperties": False}


@cache
def json_schema() -> dict[str, Any]:
    """The run config's JSON Schema, derived from :class:`RunConfig` (also printed by the docs)."""
    schema = _dataclass_schema(RunConfig)
    schema["properties"]["stages"]["items"]["enum"] = list(STAGES)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


@cache
def _validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json_schema())


# --------------------------------------------------------------------------- loading


def _error_line(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "config"
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        where = f"{key}." if error.absolute_path else ""
        name = unknown[0]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean '{where}{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
        return f"unknown config key '{where}{name}'{hint}"
    if error.validator == "anyOf":  # an optional value of the wrong type: report the non-null branch
        branches = [e for e in error.context or [] if e.validator != "type" or e.validator_value != "null"]
        if branches:
            return _error_line(branches[0])
    return f"{key}: {error.message}"


def _check_stages(stages: list[str]) -> None:
    if list(stages) != list(STAGES[: len(stages)]) or not stages:
        raise ConfigError(f"stages: {stages} must be a non-empty prefix of {list(STAGES)}")


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            values[f.name] = _build(hints[f.name], value) if dataclasses.is_dataclass(hints[f.name]) else value
    return cls(**values)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for name in parents:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: cannot override inside '{name}', which is not a mapping")
    node[leaf] = value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON config file as a dict; a missing or unparsable file is one ConfigError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first_line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(source: RunConfig | Mapping[str, Any] | str | Path | None = None, /, **overrides: Any) -> RunConfig:
    """Build a validated :class:`RunConfig` from a file path, a dict or a config, plus keyword overrides.

    Overrides are top-level keys (``per_cell=2``), flat aliases (``teacher="openai:gpt-4o"``,
    ``concurrency=128``, ``out="runs/a"``; see :data:`ALIASES`) or dotted paths given as a dict
    (``**{"sampling.response.max_tokens": 512}``). ``None`` overrides are ignored, so CLI flags that
    were not given leave the config alone.
    """
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, RunConfig):
        data = source.to_dict()
    elif isinstance(source, Mapping):
        data = json.loads(json.dumps(source, default=str))  # a deep, plain copy
    else:
        data = read_config_file(source)
    for name, value in overrides.items():
        if value is None:
            continue
        dotted = ALIASES.get(name, name)
        if dotted == "teacher.spec" and isinstance(value, Mapping):
            dotted = "teacher"
        if isinstance(value, Mapping) and isinstance(data.get(dotted), Mapping):
            data[dotted] = _merge(data[dotted], value)
        else:
            _set_path(data, dotted, value)
    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        raise ConfigError(_error_line(error))
    # Partial sections keep the defaults of the section they are in (sampling.response's own temperature).
    config = _build(RunConfig, _merge(RunConfig().to_dict(), data))
    _check_stages(config.stages)
    return config
