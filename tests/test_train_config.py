"""Stage configs: defaults (MediPhi's PIT schedule), overrides, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mediflow.cli import main
from mediflow.errors import ConfigError
from mediflow.train.config import config_from_dict, load_config

PIT = {
    "model": {"name_or_path": "base"},
    "data": {"documents": "docs", "task_data": "qa.parquet"},
    "output": {"dir": "out"},
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stage.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_pit_defaults_to_the_mediphi_schedule(tmp_path: Path) -> None:
    config = config_from_dict(PIT, "pit", root=tmp_path)
    first, second = config.pit.schedule
    assert (first.data, first.epochs, first.learning_rate) == (["task"], 1.0, 1e-4)
    assert (second.data, second.epochs, second.learning_rate) == (["task", "documents"], 2.0, 3e-4)
    assert config.path("out") == tmp_path / "out"
    assert config.method.finetuning == "full"


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "model: {name_or_path: base}\ndata: {train: records.parquet}\noutput: {dir: out, report_to: [tensorboard]}\ntrain: {learning_rate: 1e-5, extra: {max_grad_norm: 0.5}}\n",
    )
    config = load_config(path, "sft", {"train.max_steps": 7, "method.finetuning": "lora", "method.lora.r": 4})
    assert config.train.max_steps == 7
    assert config.train.learning_rate == 1e-5  # YAML reads "1e-5" as a string; the config widens it
    assert config.method.finetuning == "lora" and config.method.lora.r == 4
    assert config.output.report_to == ["tensorboard"]
    assert config.train.extra == {"max_grad_norm": 0.5}
    assert config.root == tmp_path


@pytest.mark.parametrize(
    ("text", "stage", "message"),
    [
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {train: t}\ntrain: {batch_sise: 2}\n", "sft", "unknown config key 'train.batch_sise'; did you mean 'train.batch_size'?"),
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {train: t}\ntrain: {batch_size: two}\n", "sft", "train.batch_size: 'two' is not of type 'integer'"),
        ("model: {name_or_path: b}\noutput: {dir: o}\n", "sft", "data.train is required for the sft stage"),
        ("output: {dir: o}\ndata: {train: t}\n", "dpo", "model.name_or_path is required"),
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {train: t}\ndpo: {reference: adapter}\n", "dpo", "dpo.reference 'adapter' needs method.finetuning 'lora'"),
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {documents: d, task_data: q}\npit: {schedule: [{name: s, data: [papers]}]}\n", "pit", "pit.schedule.0.data.0: 'papers' is not one of ['task', 'documents']"),
        ("stage: dpo\nmodel: {name_or_path: b}\n", "sft", "the file is for 'dpo' but was run as 'sft'"),
        ("modle: {name_or_path: b}\n", "sft", "unknown config key 'modle'; did you mean 'model'?"),
        ("model: [1, 2\n", "sft", "not valid YAML"),
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {train: t, overlong: trim}\n", "sft", "data.overlong: 'trim' is not one of ['drop', 'cut']"),
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {train: t, packing: true}\n", "dpo", "data.packing: DPO compares whole chosen/rejected sequences"),
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {documents: d, task_data: q, max_length: 64, chunk_overlap: 40}\n", "pit", "data.chunk_overlap: must be below half"),
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {train: t}\ntrain: {bf16: true, fp16: true}\n", "sft", "train.bf16 and train.fp16: choose one"),
        # each stage's own keys live in its own section, and only that stage's config may hold it
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {train: t}\nmethod: {beta: 0.2}\n", "dpo", "unknown config key 'method.beta'; did you mean 'dpo.beta'?"),
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {documents: d, task_data: q}\nmethod: {schedule: []}\n", "pit", "unknown config key 'method.schedule'; did you mean 'pit.schedule'?"),
        ("model: {teacher: local}\noutput: {dir: o}\ndata: {documents: d}\n", "qa", "unknown config key 'model.teacher'; did you mean 'qa.teacher'?"),
        ("qa: {teacher: {spec: local}, concurrency: 4}\noutput: {dir: o}\ndata: {documents: d}\n", "qa", "unknown config key 'qa.concurrency'; did you mean 'qa.limits.concurrency'?"),
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {train: t}\neval: {max_new_tokens: 8}\n", "sft", "eval: this section belongs to the eval stage, not to a sft config"),
        ("model: {name_or_path: b}\noutput: {dir: o}\ndata: {train: t}\npit: {schedule: [{name: s, data: [task]}]}\n", "dpo", "pit: this section belongs to the pit stage, not to a dpo config"),
        ("output: {dir: o}\ndata: {documents: d}\n", "qa", "qa.teacher is required for the qa stage"),
        ("qa: {teacher: {spec: local}, limits: {concurrency: 0}}\noutput: {dir: o}\ndata: {documents: d}\n", "qa", "qa.limits.concurrency: 0 is less than the minimum of 1"),
    ],
)
def test_errors_are_one_line_and_name_the_key(tmp_path: Path, text: str, stage: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text), stage)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(tmp_path / "stage.yaml"))


def test_one_override_syntax_the_derived_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--set is gone: every key is a flag of the config mechanism, a list of sections a YAML value, --resume bare or with a folder."""
    from mediflow.cli import build_parser
    from mediflow.configuration import flag_overrides

    path = _write(tmp_path, "model: {name_or_path: b}\noutput: {dir: o}\ndata: {documents: d, task_data: q}\n")
    args = build_parser().parse_args(["train", "pit", "--config", str(path), "--pit-schedule", "[{name: only, data: [task], learning_rate: 1e-3}]", "--resume"])
    config = load_config(path, "pit", flag_overrides(args))
    assert [(s.name, s.data, s.learning_rate) for s in config.pit.schedule] == [("only", ["task"], 1e-3)]
    assert config.train.resume_from_checkpoint is True
    args = build_parser().parse_args(["train", "pit", "--config", str(path), "--resume", "o/checkpoint-4"])
    assert load_config(path, "pit", flag_overrides(args)).train.resume_from_checkpoint == "o/checkpoint-4"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "pit", "--config", str(path), "--set", "train.max_steps=1"])
    assert "unrecognized arguments: --set" in capsys.readouterr().err


def test_cli_prints_one_error_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "model: {name_or_path: b}\noutput: {dir: o}\ndata: {train: t}\ndpo: {beta: -1}\n")
    assert main(["train", "dpo", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}: dpo.beta: -1 is less than or equal to the minimum of 0"


def test_each_stage_gets_the_flags_of_its_own_section_and_the_shared_teacher_sections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "data: {documents: d.jsonl}\noutput: {dir: o}\n")
    (tmp_path / "d.jsonl").write_text('{"id": "d1", "text": "Pneumonia, treated."}\n', encoding="utf-8")
    assert main(["train", "qa", "--config", str(path), "--teacher", "openai:m", "--api-key-env", "MEDIFLOW_NOT_SET_XYZ", "--concurrency", "3"]) == 2
    assert "qa.teacher.api_key_env (--api-key-env): the environment variable MEDIFLOW_NOT_SET_XYZ is not set" in capsys.readouterr().err
    config = load_config(path, "qa", flags={"teacher": "openai:m", "base_url": "http://127.0.0.1:9/v1", "concurrency": 3})
    assert config.qa.teacher is not None and (config.qa.teacher.spec, config.qa.teacher.base_url) == ("openai:m", "http://127.0.0.1:9/v1")
    assert config.qa.limits.concurrency == 3 and config.qa.limits.max_retries == 6  # the shared limits' defaults
    with pytest.raises(SystemExit):
        main(["train", "sft", "--config", str(path), "--dpo-beta", "0.2"])  # another stage's key is no flag of sft
    assert "unrecognized arguments: --dpo-beta" in capsys.readouterr().err


def test_unknown_trl_extra_is_rejected(tmp_path: Path) -> None:
    from trl import SFTConfig

    from mediflow.train.runtime import trl_arguments

    config = config_from_dict({**PIT, "train": {"extra": {"max_grad_nrom": 1.0}}}, "pit", root=tmp_path)
    with pytest.raises(ConfigError, match=r"train.extra.max_grad_nrom: not a SFTConfig field \(did you mean 'max_grad_norm'\?\)"):
        trl_arguments(SFTConfig, config, tmp_path)


@pytest.mark.parametrize(("gpu", "bf16_capable", "expected"), [(False, False, (False, False)), (True, False, (False, True))])
def test_mixed_precision_follows_the_hardware(tmp_path: Path, gpu: bool, bf16_capable: bool, expected: tuple[bool, bool]) -> None:
    """fp16 on a GPU without bf16 (V100, T4), fp32 on a CPU (bf16 cannot be built on a CPU machine); eval wired with an eval set."""
    from unittest import mock

    from trl import SFTConfig

    from mediflow.train import runtime

    config = config_from_dict({**PIT, "train": {"eval_steps": 5}}, "pit", root=tmp_path)
    with mock.patch.object(runtime, "cuda_available", return_value=gpu), mock.patch.object(runtime, "_bf16_supported", return_value=bf16_capable):
        args = runtime.trl_arguments(SFTConfig, config, tmp_path, has_eval=True)
    assert (args.bf16, args.fp16) == expected
    assert (str(args.eval_strategy), args.eval_steps) in (("steps", 5), ("IntervalStrategy.STEPS", 5))
