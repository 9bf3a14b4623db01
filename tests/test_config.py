"""The run config: one schema, defaults, overrides, and one-line errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_every_example_config_loads() -> None:
    from mediflow.preference import PairsConfig
    from mediflow.quality import CurateConfig

    examples = Path(__file__).resolve().parents[1] / "examples"
    assert load_config(examples / "run.yaml").teacher.api_key_env == "OPENAI_API_KEY"
    assert CurateConfig.load(examples / "curate.yaml").judge is not None
    pairs = PairsConfig.load(examples / "pairs.yaml")
    assert pairs.judge.spec == "openai:gpt-4o" and pairs.teacher.spec == "openai:gpt-4o-mini"


def test_flags_are_derived_from_the_fields_and_only_given_ones_override() -> None:
    import argparse

    from mediflow.configuration import add_flags, flag_overrides
    from mediflow.quality import JudgeConfig

    parser = argparse.ArgumentParser()
    add_flags(parser, JudgeConfig)
    args = parser.parse_args(["--teacher", "openai:x", "--concurrency", "7", "--limits-rpm", "60", "--no-progress", "--thresholds", "{quality: 4}"])
    overrides = flag_overrides(args)
    assert overrides == {"teacher.spec": "openai:x", "limits.concurrency": 7, "limits.rpm": 60.0, "progress": False, "thresholds": {"quality": 4}}
    config = JudgeConfig.load(None, **overrides)
    assert (config.teacher.spec, config.limits.concurrency, config.limits.max_retries, config.samples) == ("openai:x", 7, 6, 5)
    assert config.thresholds == {"quality": 4.0} and not config.progress
    with pytest.raises(SystemExit):
        parser.parse_args(["--aggregate", "mode"])  # a Literal field's flag takes only its choices
    assert "default 5" in parser.format_help() and "judge samples per record" in parser.format_help()


def test_sections_secrets_and_cross_field_checks() -> None:
    from mediflow.configuration import to_plain
    from mediflow.quality import CurateConfig
    from mediflow.teachers.factory import TeacherConfig

    assert CurateConfig.load({"judge": True, "dedup": False}).judge is not None  # true: on, with defaults
    assert CurateConfig.load({"judge": True, "dedup": False}).dedup is None  # false: off
    with pytest.raises(ConfigError, match=r"^unknown config key 'judge.concurrency'; did you mean 'judge.limits.concurrency'\?$"):
        CurateConfig.load({"judge": {"concurrency": 3}})
    with pytest.raises(ConfigError, match=r"^dedup.bands: 50 does not divide num_perm 192$"):
        CurateConfig.load({"dedup": {"bands": 50}})
    section = TeacherConfig("openai:x", api_key="sk-secret")
    assert "sk-secret" not in json.dumps(to_plain(section)) and "sk-secret" not in repr(section)
    assert TeacherConfig.load(section) is section  # a built config passes through with its secret


def test_an_unset_key_variable_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from mediflow.teachers.factory import TeacherConfig, teacher_from

    monkeypatch.delenv("MEDIFLOW_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match="^judge.teacher.api_key_env \\(--api-key-env\\): the environment variable MEDIFLOW_UNSET_KEY is not set$"):
        teacher_from(TeacherConfig("openai:x", api_key_env="MEDIFLOW_UNSET_KEY"), where="judge.teacher")
