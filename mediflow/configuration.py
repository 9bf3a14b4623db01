"""The one config mechanism: typed dataclasses -> JSON Schema -> one-line errors -> CLI flags.

Every MediFlow config (the run, curate and its stages, pairs, PIT QA, the training stages) is a
tree of dataclasses deriving from :class:`Config`. The fields are the single source of truth:
their type, default, help text and JSON Schema constraints (``option(64, "help", minimum=1)``).
From that tree this module derives, with no hand-written copy anywhere:

- a JSON Schema (:func:`json_schema`), checked with ``jsonschema``: YAML, JSON, dicts, keyword
  overrides, CLI flags and direct construction all go through the same validation, and every
  problem is one :class:`~mediflow.errors.ConfigError` line naming the dotted key
  (``judge.samples: 0 is less than the minimum of 1``), with "did you mean" for a misspelt key;
- CLI flags (:func:`add_flags` / :func:`flag_overrides`): one flag per leaf field, named after its
  dotted key (``limits.concurrency`` -> ``--limits-concurrency``) or after a short alias the class
  declares in ``ALIASES`` (``--concurrency``); help text and defaults come from the fields.

The API, in full::

    @dataclass
    class MyConfig(Config):
        ALIASES: ClassVar[dict[str, str]] = {"teacher": "teacher.spec"}   # optional flag/keyword shortcuts
        teacher: TeacherConfig = option(TeacherConfig(), "the teacher")   # nested sections are dataclasses
        samples: int = option(5, "samples per record", minimum=1)
        how: Literal["mean", "median"] = option("mean", "aggregation")
        def check(self) -> None: ...                                       # cross-field rules, raise ConfigError

    MyConfig.load("x.yaml", section="judge", samples=3)    # file | dict | instance | None, plus overrides
    add_flags(parser, MyConfig); overrides = flag_overrides(args)   # then MyConfig.load(path, **overrides)
    config.to_dict()                                       # plain JSON data (secrets left out), for manifests
    config.samples = 3                                     # FrozenInstanceError: frozen once validated (replace/load instead)

Types understood: ``str``, ``int``, ``float``, ``bool``, ``Path``, ``Literal[...]``, ``list[X]``,
``tuple[X, ...]``, ``dict[str, X]``, ``X | None`` and nested :class:`Config` dataclasses. An
optional section (``judge: JudgeConfig | None``) also accepts ``true`` (the section with its
defaults) and ``false`` (off). A field that is ``true`` or a value (``train.resume_from_checkpoint:
bool | str``) gets a flag that may be given bare, meaning ``true`` (``--resume`` or ``--resume PATH``).
A :func:`secret` field (an API key given from Python) is never written by :meth:`Config.to_dict`,
never in the schema and never a flag.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

import jsonschema
import yaml

from mediflow.errors import ConfigError
from mediflow.textfiles import read_text

C = TypeVar("C", bound="Config")
#: The field metadata that is not a JSON Schema constraint.
_SWITCH = "switch"
_NOT_CONSTRAINTS = frozenset({"help", _SWITCH})


def option(default: Any = None, help: str = "", *, switch: str | None = None, **constraints: Any) -> Any:
    """A config field: its default, its help text and its JSON Schema constraints (``minimum``, ...).

    ``switch`` (a ``Literal`` field only) names one of its values that also gets a flag of its own:
    ``mode: Literal["online", "batch"] = option("online", "...", switch="batch")`` gives ``--mode
    {online,batch}`` and ``--batch``, which sets ``mode: batch``.
    """
    metadata = {"help": help, **constraints, **({_SWITCH: switch} if switch is not None else {})}
    if isinstance(default, (list, dict, tuple)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def secret(help: str) -> Any:
    """A field holding a secret given from Python (an API key): never in ``to_dict``, manifests or reprs."""
    return dataclasses.field(default=None, repr=False, compare=False, metadata={"help": help, "secret": True})


class Config:
    """Base of every config dataclass: validated when built, loadable, turned into flags."""

    #: Short names for dotted keys, accepted as keyword overrides and as CLI flags (``out`` -> ``output.dir``).
    ALIASES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        _raise_first_error(type(self), self.to_dict(), prefix="")
        self.check()
        object.__setattr__(self, "_validated", True)

    def __setattr__(self, name: str, value: Any) -> None:
        """A config is frozen once validated: what was checked is what runs, and what the manifest records."""
        if getattr(self, "_validated", False):
            raise dataclasses.FrozenInstanceError(
                f"cannot assign to {type(self).__name__}.{name}: a config is frozen once validated; make a new one with dataclasses.replace(config, {name}=...) or {type(self).__name__}.load(config, {name}=...)"
            )
        super().__setattr__(name, value)

    def check(self) -> None:
        """Rules across fields that a JSON Schema cannot say; raise one :class:`ConfigError` line."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (for manifests and round trips); secrets are left out."""
        return typing.cast(dict[str, Any], to_plain(self))

    @classmethod
    def load(
        cls: type[C],
        source: C | Mapping[str, Any] | str | Path | None = None,
        /,
        *,
        section: str | None = None,
        **overrides: Any,
    ) -> C:
        """A validated config from a YAML/JSON path, a dict, a config or nothing, plus overrides.

        ``section`` picks one key of a file or dict (``mediflow judge`` reads the ``judge`` section
        of a curate YAML) and prefixes error messages with it. Overrides are field names, dotted
        keys (``**{"sampling.response.max_tokens": 64}``) or :attr:`ALIASES`; ``None`` values are
        ignored, so flags that were not given change nothing.
        """
        return load(cls, source, section=section, overrides=overrides)


def to_plain(value: Any) -> Any:
    """A config (or anything inside one) as plain JSON-able data, secrets left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if not f.metadata.get("secret")}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- schema derivation


def _optional_inner(annotation: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0]
    return None


def _type_schema(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        schema: dict[str, Any] = {"anyOf": [_type_schema(arg) for arg in typing.get_args(annotation)]}
        if dataclasses.is_dataclass(_optional_inner(annotation)):
            schema["anyOf"].append({"type": "boolean"})  # true: the section with its defaults; false: off
        return schema
    if origin in (list, tuple):
        return {"type": "array", "items": _type_schema(typing.get_args(annotation)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(typing.get_args(annotation)[1])}
    if origin is Literal:
        return {"enum": list(typing.get_args(annotation))}
    if dataclasses.is_dataclass(annotation):
        return _dataclass_schema(typing.cast(type, annotation))
    if annotation is Any:
        return {}  # passed through as is (e.g. train.extra: checked against TRL's own fields)
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null", Path: "string"}
    return {"type": simple[annotation]}


def _dataclass_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("secret"):
            continue
        schema = _type_schema(hints[f.name])
        constraints = {k: v for k, v in f.metadata.items() if k not in _NOT_CONSTRAINTS}
        if constraints:  # they apply to the non-null branch of an optional
            target = next((s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"), schema)
            target.update(constraints)
        schema["description"] = f.metadata.get("help", "")
        properties[f.name] = schema
    return {"type": "object", "properties": properties, "additionalProperties": False}


@cache
def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of config class ``cls``, derived from its fields (also what the docs print)."""
    schema = _dataclass_schema(cls)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


@cache
def _validator(cls: type) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json_schema(cls))


def _error_line(error: jsonschema.ValidationError, prefix: str, root: Mapping[str, Any]) -> str:
    key = ".".join(([prefix] if prefix else []) + [str(p) for p in error.absolute_path]) or "config"
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping) and isinstance(error.schema, Mapping):
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        where = f"{key}." if key != "config" else ""
        # the key spelt right in a section of this level, or elsewhere in the config (a stage's own section), else a near spelling
        close = [f"{where}{name}" for name in _nested_home(error.schema, unknown[0])]
        if not close and key != "config":
            close = [f"{prefix}.{home}" if prefix else home for home in _home_anywhere(root, unknown[0])]
        close = close or [f"{where}{name}" for name in difflib.get_close_matches(unknown[0], known, n=1)]
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
        return f"unknown config key '{where}{unknown[0]}'{hint}"
    if error.validator == "anyOf":  # an optional value of the wrong type: report the non-null branch
        branches = [e for e in error.context or [] if e.validator != "type" or e.validator_value not in ("null", "boolean")]
        if branches:
            return _error_line(branches[0], prefix, root)
    return f"{key}: {error.message}"


def _nested_home(schema: Mapping[str, Any], name: str) -> list[str]:
    """``section.name`` when a key misplaced at this level lives in one of its sections (``limits.concurrency``)."""
    for key, branch in schema.get("properties", {}).items():
        for option_schema in branch.get("anyOf", [branch]):
            if name in option_schema.get("properties", {}):
                return [f"{key}.{name}"]
    return []


def _home_anywhere(root: Mapping[str, Any], name: str) -> list[str]:
    """The shallowest dotted key named ``name`` anywhere in the config (``method.beta`` lives at ``dpo.beta``)."""
    level: list[tuple[str, Mapping[str, Any]]] = [("", root)]
    while level:
        for path, schema in level:
            if name in schema.get("properties", {}):
                return [f"{path}{name}"]
        level = [(f"{path}{key}.", option_schema) for path, schema in level for key, branch in schema.get("properties", {}).items() for option_schema in branch.get("anyOf", [branch]) if option_schema.get("type") == "object"]
    return []


def _raise_first_error(cls: type, data: Any, prefix: str) -> None:
    error = jsonschema.exceptions.best_match(_validator(cls).iter_errors(data))
    if error is not None:
        raise ConfigError(_error_line(error, prefix, json_schema(cls)))


# --------------------------------------------------------------------------- loading


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON config file as a dict; a missing or unparsable file is one ConfigError line."""
    path = Path(path)
    text = read_text(path, "config file", ConfigError)
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


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
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
        if node.get(name) in (None, True):  # an absent section, or one switched on with its defaults
            node[name] = {}
        node = node[name]
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: cannot override inside '{name}', which is not a mapping")
    if isinstance(value, Mapping) and isinstance(node.get(leaf), Mapping):
        node[leaf] = _merge(node[leaf], value)
    else:
        node[leaf] = value


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _build(annotation: Any, value: Any, default: Any, path: str) -> Any:
    """A validated plain value as the annotated type; a partial section keeps its defaults."""
    inner = _optional_inner(annotation)
    if inner is not None and dataclasses.is_dataclass(inner):
        if value is None or value is False:
            return None
        return _build(inner, {} if value is True else value, default, path)
    if dataclasses.is_dataclass(annotation):
        cls = typing.cast(type, annotation)
        hints = typing.get_type_hints(cls)
        values = {
            f.name: _build(
                hints[f.name],
                value[f.name],
                getattr(default, f.name) if default is not None else _field_default(f),
                f"{path}{f.name}.",
            )
            for f in dataclasses.fields(cls)
            if f.name in value
        }
        try:
            return dataclasses.replace(default, **values) if default is not None else cls(**values)
        except ConfigError as exc:  # a check() of this section: say where it is
            raise ConfigError(f"{path}{exc}") from None
    origin = typing.get_origin(annotation)
    if origin in (list, tuple) and isinstance(value, list):
        item = typing.get_args(annotation)[0]
        items = [_build(item, v, None, f"{path[:-1]}[{i}].") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict and isinstance(value, Mapping):
        item = typing.get_args(annotation)[1]
        return {k: _build(item, v, None, f"{path}{k}.") for k, v in value.items()}
    if annotation is Path and isinstance(value, str):
        return Path(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if inner is not None and value is not None:
        return _build(inner, value, None, path)
    return value


def load(
    cls: type[C],
    source: C | Mapping[str, Any] | str | Path | None = None,
    *,
    section: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """See :meth:`Config.load`."""
    if isinstance(source, cls) and not any(value is not None for value in (overrides or {}).values()):
        return source  # already validated; rebuilding it would drop its secrets
    if source is not None and not isinstance(source, (cls, Mapping, str, Path)):
        what = f"a {type(source).__name__}" if isinstance(source, Config) else f"{type(source).__name__} {source!r}"[:80]
        raise ConfigError(f"config: expected a {cls.__name__}, a YAML/JSON file path or a dict, got {what}")
    if source is None:
        data: Any = {}
    elif isinstance(source, cls):
        data = source.to_dict()
    elif isinstance(source, Mapping):
        data = json.loads(json.dumps(source, default=str))  # a deep, plain copy
    else:
        data = read_config_file(typing.cast("str | Path", source))
    if section is not None and not isinstance(source, cls):
        data = data.get(section)
        data = {} if data in (None, True, False) else data
        if not isinstance(data, dict):
            raise ConfigError(f"{section}: expected a mapping, got {type(data).__name__}")
    for name, value in (overrides or {}).items():
        if value is not None:  # a section (a mapping) is set by its own name, not an alias's key
            plain = to_plain(value)
            _set_path(data, name if isinstance(plain, Mapping) else cls.ALIASES.get(name, name), plain)
    _raise_first_error(cls, data, prefix=section or "")
    return typing.cast(C, _build(cls, data, None, f"{section}." if section else ""))


# --------------------------------------------------------------------------- CLI flags


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field[Any]]]:
    """(dotted key, annotation, field) of every leaf field, nested sections flattened."""
    leaves = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("secret"):
            continue
        annotation = hints[f.name]
        section = _optional_inner(annotation) or annotation
        if dataclasses.is_dataclass(section):
            leaves += _leaves(typing.cast(type, section), f"{prefix}{f.name}.")
        else:
            leaves.append((f"{prefix}{f.name}", annotation, f))
    return leaves


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"not a YAML value: {text!r}") from None


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _flag_type(annotation: Any) -> Callable[[str], Any]:
    """How a flag's text becomes a value: scalars as themselves, lists of names comma-separated, the rest as YAML."""
    kind = _optional_inner(annotation) or annotation
    if kind in (int, float, str):
        return typing.cast(Callable[[str], Any], kind)
    if kind is Path:
        return str
    if typing.get_origin(kind) in (list, tuple) and typing.get_args(kind)[0] in (str, Path):
        return _comma_list
    return _yaml_value


#: Flags added by :func:`add_flags` keep their dotted key in ``dest``, behind this marker.
_FLAG_DEST = "config_key:"


def add_flags(parser: argparse.ArgumentParser, cls: type[Config], *, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """One flag per leaf field of ``cls`` (see the module docstring); ``skip`` leaves dotted keys out.

    ``prefix`` is the dotted key of ``cls`` inside the config the command loads (``judge`` when the
    judge section of a curate config is overridden), so that the overrides name the full key.
    """
    alias_of = {dotted: alias for alias, dotted in cls.ALIASES.items()}
    group = parser.add_argument_group("config keys (override --config; lists are comma-separated, mappings YAML)")
    for dotted, annotation, f in _leaves(cls):
        if dotted in skip or any(dotted.startswith(f"{name}.") for name in skip):
            continue
        flag = "--" + (alias_of.get(dotted) or dotted).replace(".", "-").replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} [{dotted}; default {json.dumps(to_plain(_field_default(f)))}]"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        dest = f"{_FLAG_DEST}{prefix + '.' if prefix else ''}{dotted}"
        kind = _optional_inner(annotation) or annotation
        if kind is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif bool in typing.get_args(kind):  # true or a value (resume: true, or a checkpoint folder): the bare flag means true
            group.add_argument(flag, dest=dest, nargs="?", const=True, type=_yaml_value, metavar="VALUE", default=None, help=help_text)
        elif typing.get_origin(kind) is Literal:
            group.add_argument(flag, dest=dest, choices=typing.get_args(kind), default=None, help=help_text)
            switch = f.metadata.get(_SWITCH)
            if switch is not None:  # --batch for --mode batch; a section's keeps its prefix: --judge-batch
                section = (alias_of.get(dotted) or dotted).rpartition(".")[0]
                name = "--" + f"{section}.{switch}".lstrip(".").replace(".", "-").replace("_", "-")
                group.add_argument(name, dest=dest, action="store_const", const=switch, help=f"the same as {flag} {switch}")
        else:
            parse = _flag_type(annotation)
            metavar = {int: "N", float: "X", str: "TEXT", _comma_list: "A,B"}.get(parse, "YAML")
            group.add_argument(flag, dest=dest, type=parse, metavar=metavar, default=None, help=help_text)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted keys set by the flags of :func:`add_flags` (only those given on the command line)."""
    return {name[len(_FLAG_DEST) :]: value for name, value in vars(args).items() if name.startswith(_FLAG_DEST) and value is not None}
