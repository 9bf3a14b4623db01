"""Merge config parsing (mergekit's YAML subset): one-line errors, filters, gradients, precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mediflow.errors import ConfigError
from mediflow.train.merge import METHODS, parse_merge_config
from mediflow.train.merge.config import evaluate_setting, layer_position, load_merge_config, resolve_parameter


@pytest.fixture()
def folders(tmp_path: Path) -> dict[str, str]:
    """Three model folders (a config.json is all the parser looks at)."""
    paths = {}
    for name in ("base", "a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        paths[name] = str(tmp_path / name)
    return paths


def _ties(folders: dict[str, str], **extra) -> dict:
    return {
        "merge_method": "ties",
        "base_model": folders["base"],
        "models": [{"model": folders["a"], "parameters": {"weight": 0.5, "density": 0.5}}, {"model": folders["b"]}],
        "parameters": {"weight": 0.3},
        **extra,
    }


def test_a_mergekit_config_parses_and_the_base_is_added(folders: dict[str, str]) -> None:
    config = parse_merge_config(_ties(folders, dtype="bfloat16", tokenizer={"source": "base"}))
    assert config.method.name == "ties"
    assert [str(model.path) for model in config.models] == [folders["a"], folders["b"], folders["base"]]
    assert config.base_index == 2
    assert str(config.tokenizer_source) == folders["base"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"merge_method": "frankenmerge"}, "merge_method 'frankenmerge' is not one of"),
        ({"slices": []}, "'slices': layer slices are not supported"),
        ({"seed": 3}, "unknown key 'seed'"),
        ({"dtype": "int4"}, "dtype: 'int4' is not one of"),
        ({"parameters": {"epsilon": 0.1}}, "unknown parameter 'epsilon' for ties"),
        ({"parameters": {"normalize": "maybe"}}, "parameters.normalize: expected true/false"),
        ({"base_model": None}, "'ties' needs a base_model"),
        ({"tokenizer_source": "union"}, "'union' vocabularies are not supported"),
    ],
)
def test_config_errors_are_one_line_and_name_the_key(folders: dict[str, str], change: dict, message: str) -> None:
    raw = _ties(folders) | change
    with pytest.raises(ConfigError, match=message) as error:
        parse_merge_config(raw)
    assert "\n" not in str(error.value)


def test_missing_model_folder_and_per_model_shared_parameter(folders: dict[str, str], tmp_path: Path) -> None:
    raw = _ties(folders)
    raw["models"][1] = {"model": str(tmp_path / "nowhere")}
    with pytest.raises(ConfigError, match=r"models\[1\]\.model: '.*nowhere' is not a local model folder"):
        parse_merge_config(raw)
    raw = _ties(folders)
    raw["models"][0]["parameters"]["normalize"] = True
    with pytest.raises(ConfigError, match="under the top-level 'parameters'"):
        parse_merge_config(raw)


def test_slerp_takes_exactly_base_and_one_model(folders: dict[str, str]) -> None:
    raw = {"merge_method": "slerp", "base_model": folders["base"], "parameters": {"t": 0.5}, "models": [{"model": folders["a"]}, {"model": folders["b"]}]}
    with pytest.raises(ConfigError, match="slerp takes at most 2 models"):
        parse_merge_config(raw)


def test_load_from_yaml_file(folders: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(_ties(folders, parameters={"int8_mask": 1.0, "normalize": 0.0})))
    config = load_merge_config(path)
    assert config.parameters == {"int8_mask": 1.0, "normalize": 0.0}
    with pytest.raises(ConfigError, match="merge config not found"):
        load_merge_config(tmp_path / "missing.yaml")


def test_precedence_and_required_parameters(folders: dict[str, str]) -> None:
    config = parse_merge_config(_ties(folders))
    weight = METHODS["ties"].parameter("weight")
    own, other = config.models[0].parameters, config.models[1].parameters
    assert resolve_parameter(weight, [own, config.parameters], "x", 0.0, "a") == 0.5
    assert resolve_parameter(weight, [other, config.parameters], "x", 0.0, "b") == 0.3
    with pytest.raises(ConfigError, match="missing required parameter 'weight' for model b"):
        resolve_parameter(weight, [other, {}], "x", 0.0, "model b")


SLERP_T = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}, {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]


@pytest.mark.parametrize(
    ("tensor", "position"),
    [
        ("model.layers.0.self_attn.o_proj.weight", 0.0),
        ("model.layers.3.self_attn.o_proj.weight", 0.6),
        ("model.layers.5.mlp.down_proj.weight", 1.0),
        ("model.layers.2.input_layernorm.weight", 0.4),
        ("lm_head.weight", 0.0),
    ],
)
def test_filters_and_gradients_match_mergekit(tensor: str, position: float) -> None:
    from mergekit.config import ConditionalParameter
    from mergekit.config import evaluate_setting as mergekit_evaluate

    assert layer_position(tensor, 6) == pytest.approx(position)
    spec = METHODS["slerp"].parameter("t")
    ours = evaluate_setting(SLERP_T, spec, tensor, position)
    theirs = mergekit_evaluate(tensor, [ConditionalParameter(**c) for c in SLERP_T], position, validate=float)
    assert ours == pytest.approx(theirs)
    bool_spec = METHODS["ties"].parameter("normalize")
    assert evaluate_setting([True, False], bool_spec, tensor, position) == mergekit_evaluate(tensor, [True, False], position, validate=bool)
