"""Training as a TRL user runs it unattended (issue 22): each reproduction of the issue is a test here.

Tiny Phi-3 models built locally (tests/tiny_models.py), a few steps each. The resume-after-kill
reproduction, which kills real processes, is tests/test_train_resume.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import PHI4_STYLE, TINY_CHAT_TEMPLATE, build_tiny_phi3, with_template
from transformers import TrainerCallback

from mediflow.cli import main
from mediflow.errors import ConfigError, MediflowError
from mediflow.train.align import build_dpo_trainer, build_sft_trainer, prepare_inputs, run_sft
from mediflow.train.config import StageConfig, config_from_dict
from mediflow.train.eval import generate_answers, run_eval
from mediflow.train.metrics import TaskMetric, aggregate, icd10_codes, measure, task_metrics
from mediflow.train.models import load_causal_lm, load_tokenizer
from mediflow.train.templates import COMPLETION_ONLY, strip_generation_markers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

TWO_TURNS = [
    {"role": "system", "content": "Answer in JSON."},
    {"role": "user", "content": "List the drugs."},
    {"role": "assistant", "content": '{"drugs": ["amoxicillin"]}'},
    {"role": "user", "content": "And the doses?"},
    {"role": "assistant", "content": '{"doses": ["500 mg"]}'},
]
ONE_TURN = [{"role": "user", "content": "What is the diagnosis?"}, {"role": "assistant", "content": "Pneumonia."}]


def _rows(path: Path, conversations: list[list[dict[str, str]]]) -> Path:
    path.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in conversations), encoding="utf-8")
    return path


def _sft(root: Path, output: str, *, model_path: str = "base", rows: str = "rows.jsonl", max_length: int = 96, **sections: Any) -> StageConfig:
    """An SFT config of 2 steps on ``rows`` from ``model_path``; ``sections`` update its sections (``train={...}``)."""
    raw: dict[str, Any] = {
        "model": {"name_or_path": model_path},
        "data": {"train": rows, "max_length": max_length},
        "output": {"dir": output, "logging_steps": 1, "save_steps": 1000},
        "train": {"batch_size": 2, "max_steps": 2, "learning_rate": 1e-3},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return config_from_dict(raw, "sft", root=root)


def _trained_spans(trainer: Any, index: int) -> list[str]:
    """The stretches of one training row that carry loss, decoded."""
    example = trainer.data_collator([trainer.train_dataset[index]])
    ids, labels = example["input_ids"][0].tolist(), example["labels"][0].tolist()
    spans: list[list[int]] = []
    for position, (token, label) in enumerate(zip(ids, labels)):
        if label != -100:
            if position == 0 or labels[position - 1] == -100:
                spans.append([])
            spans[-1].append(token)
    return [trainer.processing_class.decode(span) for span in spans]


class _Starts(TrainerCallback):
    """Counts trainings started (a reused model starts none)."""

    def __init__(self) -> None:
        self.count = 0

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        self.count += 1


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unattended")
    build_tiny_phi3(root / "base")
    _rows(root / "rows.jsonl", [ONE_TURN, TWO_TURNS] * 3)
    return root


def _phi4_model(root: Path, name: str, template: str = PHI4_STYLE) -> Path:
    return with_template(root / "base", root / name, template)


# ---------------------------------------------------------------- 2. end of turn from the template


def test_end_of_turn_is_read_from_a_template_no_code_knows(tmp_path: Path) -> None:
    """A template whose turns end with `[[end]]`: saved in generation_config and where our eval stops."""
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}[[end]]\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    build_tiny_phi3(tmp_path / "base", chat_template=template, extra_special_tokens=("[[end]]",))
    _rows(tmp_path / "rows.jsonl", [[{"role": "user", "content": "Findings?"}, {"role": "assistant", "content": "CT."}]] * 8)
    config = _sft(tmp_path, "sft", max_length=32, train={"batch_size": 8, "max_steps": 12, "learning_rate": 3e-2})
    model_dir = run_sft(config)
    tokenizer = load_tokenizer(model_dir)
    end = tokenizer.convert_tokens_to_ids("[[end]]")
    assert sorted(json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"]) == sorted([tokenizer.eos_token_id, end])
    model = load_causal_lm(model_dir, for_training=False)
    prompt = [{"role": "user", "content": "Findings?"}]
    assert generate_answers(model, tokenizer, [prompt], 12, 1) == ["CT."]  # stops where the template ends the turn
    # What stopping at eos only (the old behaviour) gave: generation runs past [[end]].
    batch = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**batch, max_new_tokens=12, do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    runaway = tokenizer.decode(output[0][batch["input_ids"].shape[1] :])
    assert runaway.startswith("CT.[[end]]") and len(runaway) > len("CT.[[end]]")


def test_a_whitespace_token_that_closes_a_turn_is_never_a_stop(tmp_path: Path) -> None:
    """Gemma's vocabulary has "\\n" as an added token and its turns close with "<end_of_turn>\\n": only the marker stops."""
    from tiny_models import build_tiny_tokenizer

    from mediflow.train.templates import end_of_turn_ids

    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}[[end]]\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    tokenizer = build_tiny_tokenizer(tmp_path, chat_template=template, extra_special_tokens=("[[end]]",))
    tokenizer.add_tokens(["\n"])
    newline, end = tokenizer.convert_tokens_to_ids("\n"), tokenizer.convert_tokens_to_ids("[[end]]")
    assert newline in tokenizer(tokenizer.apply_chat_template(ONE_TURN, tokenize=False), add_special_tokens=False)["input_ids"]
    assert end_of_turn_ids(tokenizer, template) == sorted([tokenizer.eos_token_id, end])


# ---------------------------------------------------------------- 3. every assistant turn trained


def test_every_assistant_turn_is_trained_on_the_completion_only_path(root: Path) -> None:
    _phi4_model(root, "phi4")
    config = _sft(root, "sft_turns", model_path="phi4")
    trainer = build_sft_trainer(config)
    assert trainer.args.completion_only_loss and not trainer.args.assistant_only_loss
    assert _trained_spans(trainer, 0) == ["Pneumonia.<|end|>"]
    assert _trained_spans(trainer, 1) == ['{"drugs": ["amoxicillin"]}<|end|>', '{"doses": ["500 mg"]}<|end|>']  # both turns, not only the last
    run_sft(config)
    manifest = json.loads((root / "sft_turns" / "manifest.json").read_text())
    assert manifest["masking"]["masking"] == COMPLETION_ONLY
    assert manifest["masking"]["rows"] == {
        "single_turn": {"rows": 3, "assistant_turns": 3, "trained_turns": 3},
        "multi_turn": {"rows": 3, "assistant_turns": 6, "trained_turns": 6},
    }


def test_turn_masks_equal_trls_own_where_trl_has_one(root: Path, tmp_path: Path) -> None:
    """Multi-turn: TRL's assistant_only_loss (generation markers) = our per-turn prefixes on the same layout unmarked.
    One turn: TRL's completion_only_loss on prompt/completion rows = our prefix mask."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mediflow.train.masking import tokenize_conversation

    def trl_masks(model_dir: Path, row: dict[str, Any], **flags: Any) -> tuple[list[int], list[int]]:
        args = SFTConfig(output_dir=str(tmp_path / "trl"), max_length=512, report_to="none", use_cpu=True, bf16=False, **flags)
        trainer = SFTTrainer(model=load_causal_lm(model_dir), args=args, train_dataset=Dataset.from_list([row]), processing_class=load_tokenizer(model_dir))
        prepared = trainer.train_dataset[0]
        return prepared["input_ids"], [int(label != -100) for label in prepared["labels"]]

    marked = load_tokenizer(root / "base")  # the tiny Phi-3 template has {% generation %} markers
    unmarked = load_tokenizer(root / "base")
    unmarked.chat_template = strip_generation_markers(TINY_CHAT_TEMPLATE)
    ours = tokenize_conversation(unmarked, TWO_TURNS, COMPLETION_ONLY)
    assert trl_masks(root / "base", {"messages": TWO_TURNS}, assistant_only_loss=True) == (ours.input_ids, ours.completion_mask)
    assert ours.trained_turns == 2 and marked.chat_template == TINY_CHAT_TEMPLATE

    phi4 = _phi4_model(root, "phi4")
    ours = tokenize_conversation(load_tokenizer(phi4), ONE_TURN, COMPLETION_ONLY)
    row = {"prompt": ONE_TURN[:1], "completion": ONE_TURN[1:]}
    assert trl_masks(phi4, row, completion_only_loss=True) == (ours.input_ids, ours.completion_mask)


def test_a_template_that_rewrites_earlier_turns_is_refused_with_one_line(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rewrites = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' }}"
        "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'] | upper }}{% else %}{{ m['content'] }}{% endif %}{{ '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    _phi4_model(root, "rewrites", rewrites)
    (root / "rewrites.yaml").write_text(json.dumps({"model": {"name_or_path": "rewrites"}, "data": {"train": "rows.jsonl"}, "output": {"dir": "sft_rewrites"}}))
    assert main(["train", "sft", "--config", str(root / "rewrites.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.train row 1: the chat template renders assistant turn 1 of 2 differently once later turns follow" in err[0]
    assert not (root / "sft_rewrites").exists()


# ---------------------------------------------------------------- 4. an eval set cannot vanish


def test_an_eval_set_emptied_by_length_is_an_error(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = [{"role": "user", "content": "Summarise the note."}, {"role": "assistant", "content": "The patient was admitted with chest pain. " * 12}]
    _rows(root / "long_eval.jsonl", [long, long])
    (root / "eval_gone.yaml").write_text(json.dumps({"model": {"name_or_path": "base"}, "data": {"train": "rows.jsonl", "eval": "long_eval.jsonl", "max_length": 96}, "output": {"dir": "sft_eval_gone"}}))
    assert main(["train", "sft", "--config", str(root / "eval_gone.yaml")]) == 2
    assert capsys.readouterr().err.strip() == "error: sft eval: none of the 2 eval rows fits data.max_length=96; raise data.max_length or set data.overlong=cut"
    assert not (root / "sft_eval_gone").exists()
    config = _sft(root, "sft_eval_cut", data={"eval": "long_eval.jsonl", "overlong": "cut"})
    inputs = prepare_inputs(config, "sft")
    assert inputs.eval_lengths is not None and (inputs.eval_lengths.rows, inputs.eval_lengths.cut) == (2, 2) and len(inputs.eval_rows) == 2


# ---------------------------------------------------------------- 5. fingerprints over content, not paths


def test_the_same_content_at_another_path_and_settings_that_change_nothing_reuse_the_model(root: Path, tmp_path: Path) -> None:
    starts = _Starts()
    first = run_sft(_sft(root, "sft_same"), callbacks=[starts])
    weights = (first / "model.safetensors").read_bytes()
    assert starts.count == 1
    (root / "elsewhere").mkdir(exist_ok=True)
    shutil.copy(root / "rows.jsonl", root / "elsewhere" / "copy.jsonl")
    if not (root / "models" / "copy").exists():
        shutil.copytree(root / "base", root / "models" / "copy")
    (root / "sub").mkdir(exist_ok=True)
    reruns = {
        "the same rows in another file": _sft(root, "sft_same", rows="elsewhere/copy.jsonl"),
        "a byte-identical model at another path": _sft(root, "sft_same", model_path="models/copy"),
        "a path through a subfolder": _sft(root, "sft_same", model_path="sub/../base", rows="sub/../rows.jsonl"),
        "data.warn_fraction": _sft(root, "sft_same", data={"warn_fraction": 0.5}),
        "method.lora.* under full fine-tuning": _sft(root, "sft_same", method={"finetuning": "full", "lora": {"r": 4, "use_dora": True}}),
        "train.eval_steps with no eval set": _sft(root, "sft_same", train={"eval_steps": 3}),
        "dataloader_num_workers": _sft(root, "sft_same", train={"extra": {"dataloader_num_workers": 1}}),
    }
    for what, config in reruns.items():
        assert run_sft(config, callbacks=[starts]) == first, what
        assert starts.count == 1, f"{what} retrained the model"
    assert (first / "model.safetensors").read_bytes() == weights
    # What does change the result is refused, naming it.
    _rows(tmp_path / "other.jsonl", [ONE_TURN] * 6)
    with pytest.raises(MediflowError, match=r"another config \(changed: data.train rows\)"):
        run_sft(_sft(root, "sft_same", rows=str(tmp_path / "other.jsonl")))
    with pytest.raises(MediflowError, match=r"another config \(changed: method.finetuning 'full' -> 'lora', method.lora.alpha"):
        run_sft(_sft(root, "sft_same", method={"finetuning": "lora"}))


def test_merge_reuses_a_byte_identical_expert_at_another_path(root: Path, tmp_path: Path) -> None:
    from mediflow.train.merge import parse_merge_config, run_merge

    build_tiny_phi3(tmp_path / "expert", seed=1)
    shutil.copytree(tmp_path / "expert", tmp_path / "moved" / "expert")
    (tmp_path / "sub").mkdir()

    def merge(expert: str) -> Path:
        raw = {"merge_method": "linear", "models": [{"model": str(root / "base"), "parameters": {"weight": 0.5}}, {"model": expert, "parameters": {"weight": 0.5}}]}
        return run_merge(parse_merge_config(raw), tmp_path / "merged")

    merged = merge(str(tmp_path / "expert"))
    stamp = (merged / "config.json").stat().st_mtime_ns
    merge(str(tmp_path / "moved" / "expert"))
    merge(str(tmp_path / "sub" / ".." / "expert"))
    assert (merged / "config.json").stat().st_mtime_ns == stamp  # reused, not merged again
    build_tiny_phi3(tmp_path / "other", seed=2)  # other weights: refused, naming the input that changed
    with pytest.raises(MediflowError, match=r"merge run of another config \(changed: models.1.weights\)"):
        merge(str(tmp_path / "other"))


# ---------------------------------------------------------------- 6. metric definitions, held-out checks


def test_icd10_codes_are_the_real_code_set_and_empty_pairs_are_not_perfect() -> None:
    assert icd10_codes("HbA1C 7.2%, vitamin B12 low; COVID-19 U07.1; E119, i10") == {"U07.1", "E11.9", "I10"}
    metric = TaskMetric("icd10_codes")
    empty = [measure(metric, "No codes apply.", "None.")] * 3
    assert aggregate("icd10_codes", empty) == {**aggregate("icd10_codes", empty), "precision": None, "recall": None, "f1": None, "score": None, "empty_both": 3.0}
    scores = task_metrics(metric, [("E11.9", "E11.9"), ("No codes.", "None."), ("I10", "E11.9")])
    assert (scores["precision"], scores["recall"], scores["empty_both"]) == (0.5, 0.5, 1.0)  # the empty pair is counted apart


def test_evaluating_on_the_models_own_training_rows_is_refused(root: Path, tmp_path: Path) -> None:
    model = run_sft(_sft(root, "sft_overlap"))
    records = [{"prompt": [m for m in TWO_TURNS[:4]], "reference": TWO_TURNS[4]["content"], "task": "t"} for _ in range(2)]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    raw = {"model": {"name_or_path": str(model)}, "data": {"records": str(tmp_path / "records.jsonl")}, "eval": {"max_new_tokens": 4}, "output": {"dir": str(tmp_path / "eval")}}
    with pytest.raises(MediflowError, match=r"eval: 2 of 2 records overlap what .* was trained on \(sft .*rows.jsonl, per its manifests\).*--allow-train-overlap"):
        run_eval(config_from_dict(raw, "eval", root=tmp_path))
    assert not (tmp_path / "eval").exists()
    with pytest.warns(UserWarning, match="2 of 2 records were seen in training"):
        report = run_eval(config_from_dict({**raw, "eval": {"max_new_tokens": 4, "allow_train_overlap": True}}, "eval", root=tmp_path))
    assert report["train_overlap"]["seen_in_training"] == 2


# ---------------------------------------------------------------- 7. late errors


def test_an_unknown_dpo_loss_type_is_one_line_before_any_model_loads(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "pairs.jsonl").write_text(json.dumps({"prompt": ONE_TURN[:1], "chosen": ONE_TURN[1:], "rejected": [{"role": "assistant", "content": "Asthma."}]}) + "\n")
    (root / "dpo.yaml").write_text(json.dumps({"model": {"name_or_path": "base"}, "data": {"train": "pairs.jsonl"}, "output": {"dir": "dpo_bad_loss"}}))
    assert main(["train", "dpo", "--config", str(root / "dpo.yaml"), "--dpo-loss-type", "sigmoidd"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dpo.loss_type: 'sigmoidd' is not one of TRL's loss types (sigmoid, hinge, ipo") and err.endswith("did you mean 'sigmoid'?")
    assert not (root / "dpo_bad_loss").exists()


def test_explicit_bf16_false_means_fp32_unless_fp16() -> None:
    from unittest import mock

    from mediflow.train import runtime

    with mock.patch.object(runtime, "_bf16_supported", return_value=True):  # a bf16-capable GPU
        assert runtime.mixed_precision(None, None, on_gpu=True) == (True, False)  # nothing said: bf16
        assert runtime.mixed_precision(False, None, on_gpu=True) == (False, False)  # said false: fp32, not a silent fp16
        assert runtime.mixed_precision(False, True, on_gpu=True) == (False, True)
    with mock.patch.object(runtime, "_bf16_supported", return_value=False):  # V100, T4
        assert runtime.mixed_precision(None, None, on_gpu=True) == (False, True)
    assert runtime.mixed_precision(None, None, on_gpu=False) == (False, False)


def test_use_cache_is_restored_before_saving(root: Path) -> None:
    assert json.loads((root / "base" / "config.json").read_text()).get("use_cache", True) is True
    model = run_sft(_sft(root, "sft_cache", train={"gradient_checkpointing": True}))
    assert json.loads((model / "config.json").read_text())["use_cache"] is True  # the trainer set it false to train


# ---------------------------------------------------------------- 8. what TRL / axolotl users expect


def _hub_cache(cache: Path, repo_id: str, model: Path) -> str:
    """A real Hugging Face cache layout holding ``model`` as ``repo_id`` (blobs, a snapshot of links, refs/main)."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in model.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return revision


def test_a_hub_id_is_read_from_the_local_cache_offline(root: Path, tmp_path: Path) -> None:
    revision = _hub_cache(tmp_path / "hub", "tiny-org/tiny-phi3", root / "base")
    from huggingface_hub import try_to_load_from_cache

    assert try_to_load_from_cache("tiny-org/tiny-phi3", "config.json", cache_dir=tmp_path / "hub")  # a real cache, as huggingface_hub reads it
    config = tmp_path / "sft.yaml"
    config.write_text(json.dumps({"model": {"name_or_path": "tiny-org/tiny-phi3"}, "data": {"train": str(root / "rows.jsonl"), "max_length": 96}, "output": {"dir": "out", "save_steps": 1000}, "train": {"max_steps": 1, "batch_size": 2}}))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "mediflow", "train", "sft", "--config", str(config)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["init_from"] == str(tmp_path / "hub" / "models--tiny-org--tiny-phi3" / "snapshots" / revision) and manifest["status"] == "finished"
    config.write_text(config.read_text().replace("tiny-org/tiny-phi3", "tiny-org/not-cached"))
    missing = subprocess.run([sys.executable, "-m", "mediflow", "train", "sft", "--config", str(config)], capture_output=True, text=True, env=env, timeout=600)
    assert missing.returncode == 2 and "tiny-org/not-cached is not in the local Hugging Face cache" in missing.stderr and missing.stderr.count("error:") == 1


def test_merge_reads_a_hub_id_from_the_local_cache(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mergekit names models by Hub id: a cached one merges like its folder; one not cached is one line (a merge never downloads)."""
    from huggingface_hub import constants

    from mediflow.train.merge import parse_merge_config, run_merge
    from mediflow.train.merge.preset import parse_preset

    build_tiny_phi3(tmp_path / "expert", seed=1)
    revision = _hub_cache(tmp_path / "hub", "tiny-org/expert", tmp_path / "expert")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)

    def merge(expert: str, out: str) -> Path:
        raw = {"merge_method": "linear", "models": [{"model": str(root / "base"), "parameters": {"weight": 0.5}}, {"model": expert, "parameters": {"weight": 0.5}}]}
        return run_merge(parse_merge_config(raw), tmp_path / out)

    by_id, by_folder = merge("tiny-org/expert", "by_id"), merge(str(tmp_path / "expert"), "by_folder")
    shard = "model-00001-of-00001.safetensors"
    assert (by_id / shard).read_bytes() == (by_folder / shard).read_bytes()
    snapshot = tmp_path / "hub" / "models--tiny-org--expert" / "snapshots" / revision
    assert json.loads((by_id / "manifest.json").read_text())["inputs"][1]["path"] == str(snapshot)
    with pytest.raises(ConfigError, match=r"models\[1\]\.model: 'tiny-org/missing' is neither a model folder with config.json nor a Hub id in the local .*hf download tiny-org/missing"):
        merge("tiny-org/missing", "missing")
    preset = parse_preset({"preset": "mediphi", "base_model": str(root / "base"), "experts": ["tiny-org/expert"], "output": "p", "evaluate": {"eval_config": "e.yaml"}}, root=tmp_path)
    assert preset.experts == (snapshot,)


def test_attention_kernels_qlora_and_lora_variants(root: Path) -> None:
    sdpa = build_sft_trainer(_sft(root, "sft_sdpa", model={"attn_implementation": "sdpa"}))
    assert sdpa.model.config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="model.attn_implementation: flash_attention_2 needs the flash-attn package"):
        prepare_inputs(_sft(root, "sft_fa2", model={"attn_implementation": "flash_attention_2"}), "sft")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="method.finetuning: qlora loads the base in 4 bits with bitsandbytes, which needs a CUDA GPU"):
            prepare_inputs(_sft(root, "sft_qlora", method={"finetuning": "qlora"}), "sft")
    lora = {"finetuning": "lora", "lora": {"r": 4, "alpha": 8, "use_dora": True, "use_rslora": True, "modules_to_save": ["lm_head"]}}
    config = _sft(root, "sft_dora", method=lora, train={"learning_rate": 1e-2})
    trainer = build_sft_trainer(config)
    peft = trainer.model.peft_config["default"]
    assert (peft.use_dora, peft.use_rslora, sorted(peft.modules_to_save or [])) == (True, True, ["lm_head"])
    merged = load_file(str(run_sft(config) / "model.safetensors"))
    base = load_file(str(root / "base" / "model.safetensors"))
    assert set(merged) == set(base) and not torch.equal(merged["lm_head.weight"], base["lm_head.weight"])  # trained in full, merged in


def test_chat_template_kwargs_reach_every_render(root: Path) -> None:
    template = "{% if terse %}{{ '<|system|>Be terse.<|end|>' }}{% endif %}" + PHI4_STYLE
    _phi4_model(root, "kwargs", template)
    trainer = build_sft_trainer(_sft(root, "sft_kwargs", model={"name_or_path": "kwargs", "chat_template_kwargs": {"terse": True}}))
    first = trainer.processing_class.decode(trainer.train_dataset[0]["input_ids"])
    assert first.startswith("<|system|>Be terse.<|end|><|user|>What is the diagnosis?")
    (root / "kwargs_pairs.jsonl").write_text(json.dumps({"prompt": ONE_TURN[:1], "chosen": ONE_TURN[1:], "rejected": [{"role": "assistant", "content": "Asthma."}]}) + "\n")
    dpo = config_from_dict(
        {"model": {"name_or_path": "kwargs", "chat_template_kwargs": {"terse": True}}, "data": {"train": "kwargs_pairs.jsonl", "max_length": 96}, "output": {"dir": "dpo_kwargs"}},
        "dpo",
        root=root,
    )
    pairs = build_dpo_trainer(dpo).train_dataset[0]
    assert load_tokenizer(root / "kwargs").decode(pairs["prompt_ids"]).startswith("<|system|>Be terse.<|end|>")


def test_the_preset_refuses_a_report_on_the_selection_data(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Selection and report never share data: not the same eval config, nor the same records under another name."""
    (tmp_path / "heldout.jsonl").write_text(json.dumps({"prompt": "Summarise: stable.", "reference": "stable"}) + "\n")
    shutil.copy(tmp_path / "heldout.jsonl", tmp_path / "copy.jsonl")
    for name, records in (("select.yaml", "heldout.jsonl"), ("report.yaml", "copy.jsonl")):
        (tmp_path / name).write_text(json.dumps({"data": {"records": records}, "output": {"dir": "eval"}}))
    build_tiny_phi3(tmp_path / "expert", seed=1)
    preset = {"preset": "mediphi", "base_model": str(root / "base"), "experts": [str(tmp_path / "expert")], "output": "merged", "evaluate": {"eval_config": "select.yaml"}}
    (tmp_path / "preset.yaml").write_text(json.dumps(preset))
    capsys.readouterr()
    cases = {
        ("--evaluate-report-config", "select.yaml"): "evaluate: eval_config and report_config are the same file",
        ("--evaluate-report-config", "report.yaml"): f"evaluate: report_config reads {tmp_path / 'copy.jsonl'}, the same content as {tmp_path / 'heldout.jsonl'}, which eval_config selects on",
        ("--search-budget", "0"): "search.budget: 0 is less than the minimum of 1",
        ("--slerp-t-choices", "[0.1, 1.5]"): "slerp.t_choices.1: 1.5 is greater than the maximum of 1",
    }
    for flags, says in cases.items():
        assert main(["merge", "--preset", "mediphi", "--config", str(tmp_path / "preset.yaml"), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], (flags, err)
    assert not (tmp_path / "merged").exists()
