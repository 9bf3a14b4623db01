"""The run config: one schema, defaults, overrides, and one-line errors naming the key."""

from __future__ import annotations

import json

import jsonschema
import pytest

from mediflow.config import RunConfig, load_config
from mediflow.configuration import json_schema
from mediflow.errors import ConfigError


def test_empty_config_is_all_defaults() -> None:
    config = load_config({})
    assert config == RunConfig()
    assert config.stages == ["document", "instruction", "response"]
    assert config.sampling.response.temperature == 0.3  # the stage's own default, not the class default


def test_yaml_and_json_files_load_the_same(tmp_path) -> None:
    data = {"per_cell": 3, "tasks": ["a"], "sampling": {"document": {"max_tokens": 200}}}
    (tmp_path / "run.json").write_text(json.dumps(data))
    (tmp_path / "run.yaml").write_text("per_cell: 3\ntasks: [a]\nsampling:\n  document:\n    max_tokens: 200\n")
    assert load_config(tmp_path / "run.json") == load_config(tmp_path / "run.yaml")
    config = load_config(tmp_path / "run.yaml")
    assert config.sampling.document.max_tokens == 200
    assert config.sampling.document.temperature == 0.9  # a partial section keeps the section's defaults


def test_overrides_use_flat_aliases_and_dotted_paths() -> None:
    config = load_config(
        {"teacher": {"spec": "local"}, "per_cell": 1},
        teacher="openai:gpt-4o-mini",
        base_url="http://127.0.0.1:9/v1",
        concurrency=8,
        out="runs/x",
        per_cell=4,
        seed=None,  # a CLI flag that was not given changes nothing
        **{"sampling.response.max_tokens": 64},
    )
    assert config.teacher.spec == "openai:gpt-4o-mini"
    assert config.teacher.base_url == "http://127.0.0.1:9/v1"
    assert config.limits.concurrency == 8
    assert config.output.dir == "runs/x"
    assert (config.per_cell, config.seed) == (4, 0)
    assert config.sampling.response.max_tokens == 64
    assert load_config(config) == config  # a config object round-trips


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"per_cel": 2}, "unknown config key 'per_cel'; did you mean 'per_cell'?"),
        ({"sampling": {"respons": {}}}, "unknown config key 'sampling.respons'; did you mean 'sampling.response'?"),
        ({"sampling": {"response": {"temperature": -1}}}, "sampling.response.temperature: -1 is less than the minimum of 0"),
        ({"limits": {"rpm": "fast"}}, "limits.rpm: 'fast' is not of type 'number'"),
        ({"tasks": "summarize"}, "tasks: 'summarize' is not of type 'array'"),
        ({"json_share": 1.5}, "json_share: 1.5 is greater than the maximum of 1"),
        ({"stages": ["response"]}, "stages: ['response'] must be a non-empty prefix"),
        ({"progress": "yes"}, "progress: 'yes' is not of type 'boolean'"),
    ],
)
def test_errors_are_one_line_naming_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(data)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_file_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("per_cell: [1,\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listed)


def test_json_schema_is_valid_and_documents_every_key() -> None:
    schema = json_schema(RunConfig)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert all(prop["description"] for prop in schema["properties"].values())
    assert set(schema["properties"]["sampling"]["properties"]) == {"document", "instruction", "response"}


def test_manifest_view_holds_no_secret() -> None:
    config = load_config({"teacher": {"spec": "openai:gpt-4o", "api_key_env": "MY_KEY"}})
    assert "MY_KEY" in json.dumps(config.to_dict())  # only the variable's name
    assert "api_key" not in {key for key in config.to_dict()["teacher"] if key != "api_key_env"}
