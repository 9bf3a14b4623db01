"""Merging real (tiny) model folders: equality with mergekit 0.1.5, loading, memory, CLI, preset.

The experts are the tiny Phi-3 base plus task vectors built so that, within a tensor, no two
entries of a task vector have the same magnitude and ``base + delta - base == delta`` exactly in
float32: mergekit ranks magnitudes with an unstable sort, so on exactly tied magnitudes at the edge
of a density band the two tools may keep different (equally many) entries. Away from such ties
every deterministic method must agree to 1e-6.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import build_tiny_phi3

from mediflow.cli import main
from mediflow.errors import MediflowError
from mediflow.train.merge import METHODS, parse_merge_config, run_merge
from mediflow.train.merge.catalog import DETERMINISTIC_METHODS
from mediflow.train.merge.preset import parse_preset, run_mediphi_preset

EXPERTS = 3


def _quantize(tensor: torch.Tensor) -> torch.Tensor:
    return torch.round(tensor * 1024) / 1024


def _tie_free_delta(shape: torch.Size, generator: torch.Generator, scale: int) -> torch.Tensor:
    count = int(torch.tensor(shape).prod())
    magnitudes = (torch.randperm(count, generator=generator) + 1).float() * scale * 2.0**-22
    signs = torch.randint(0, 2, (count,), generator=generator).float() * 2 - 1
    return (magnitudes * signs).reshape(shape)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge_models")
    base = build_tiny_phi3(root / "base", seed=0)
    weights = {name: _quantize(t) for name, t in load_file(base / "model.safetensors").items()}
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    paths = {"base": base}
    for index in range(EXPERTS):
        expert = root / f"expert{index}"
        shutil.copytree(base, expert)
        generator = torch.Generator().manual_seed(100 + index)
        deltas = {name: _tie_free_delta(t.shape, generator, scale=index + 1) for name, t in weights.items()}
        tuned = {name: weights[name] + delta for name, delta in deltas.items()}
        assert all(torch.equal(tuned[name] - weights[name], delta) for name, delta in deltas.items())
        save_file(tuned, expert / "model.safetensors", metadata={"format": "pt"})
        paths[f"expert{index}"] = expert
    return paths


def _config(method: str, models: dict[str, Path]) -> dict:
    experts = [str(models[f"expert{i}"]) for i in range(EXPERTS)]
    base = str(models["base"])
    params = [
        {"weight": 0.0635, "density": 0.494, "gamma": 1.672},  # MediPhi's published expert
        {"weight": 0.4, "density": 0.6, "gamma": 0.05},
        {"weight": 0.7, "density": 0.3, "gamma": 0.01},
    ]
    names = {"task_arithmetic": ("weight",), "ties": ("weight", "density"), "breadcrumbs": ("weight", "density", "gamma")}
    names["breadcrumbs_ties"] = names["breadcrumbs"]
    if method == "linear":
        return {"merge_method": "linear", "models": [{"model": e, "parameters": {"weight": w}} for e, w in zip(experts, (0.5, 0.3, 0.2))]}
    if method == "slerp":
        t = [{"filter": "self_attn", "value": [0.1, 0.9]}, {"filter": "mlp", "value": [0.8, 0.2]}, {"value": 0.5}]
        return {"merge_method": "slerp", "base_model": base, "models": [{"model": base}, {"model": experts[0]}], "parameters": {"t": t}}
    if method == "model_stock":
        return {"merge_method": "model_stock", "base_model": base, "models": [{"model": e} for e in experts]}
    config = {
        "merge_method": method,
        "base_model": base,
        "dtype": "float32",
        "models": [{"model": e, "parameters": {k: p[k] for k in names[method]}} for e, p in zip(experts, params)],
    }
    if method == "breadcrumbs_ties":
        config["parameters"] = {"int8_mask": 1.0, "normalize": 0.0}
    return config


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


@pytest.mark.parametrize("method", DETERMINISTIC_METHODS)
def test_every_tensor_equals_mergekit(method: str, models: dict[str, Path], tmp_path: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions
    from mergekit.merge import run_merge as mergekit_merge

    raw = _config(method, models)
    mergekit_merge(MergeConfiguration.model_validate(raw), str(tmp_path / "mergekit"), options=MergeOptions(quiet=True))
    run_merge(parse_merge_config(raw), tmp_path / "ours")
    theirs, ours = _tensors(tmp_path / "mergekit"), _tensors(tmp_path / "ours")
    assert set(ours) == set(theirs) and len(ours) == 15
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        torch.testing.assert_close(ours[name], tensor, atol=1e-6, rtol=0, msg=f"{method}: {name}")
    if method != "linear":  # the merge changed something: not a copy of an input
        assert not torch.equal(ours["model.layers.0.mlp.down_proj.weight"], _tensors(models["base"])["model.layers.0.mlp.down_proj.weight"])


def test_merged_folder_is_sharded_loads_and_generates(models: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = _config("breadcrumbs_ties", models) | {"dtype": "bfloat16"}
    output = run_merge(parse_merge_config(raw), tmp_path / "merged", max_shard_bytes=20_000)
    index = json.loads((output / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert json.loads((output / "config.json").read_text())["dtype"] == "bfloat16"
    assert (output / "tokenizer.json").is_file() and (output / "generation_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(output)
    assert model.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(output)
    inputs = tokenizer("Patient admitted with chest pain", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
    merged = _tensors(output)["model.embed_tokens.weight"]
    assert torch.equal(merged, model.get_input_embeddings().weight.detach())


def test_missing_tensor_errors_and_tied_head_falls_back_to_embeddings(models: dict[str, Path], tmp_path: Path) -> None:
    tied = tmp_path / "tied"
    shutil.copytree(models["expert0"], tied)
    weights = load_file(tied / "model.safetensors")
    embeddings = weights["model.embed_tokens.weight"]
    del weights["lm_head.weight"]
    save_file(weights, tied / "model.safetensors", metadata={"format": "pt"})
    raw = {"merge_method": "linear", "models": [{"model": str(models["base"]), "parameters": {"weight": 1.0}}, {"model": str(tied), "parameters": {"weight": 1.0}}]}
    merged = _tensors(run_merge(parse_merge_config(raw), tmp_path / "out"))
    base_head = load_file(models["base"] / "model.safetensors")["lm_head.weight"]
    torch.testing.assert_close(merged["lm_head.weight"], (base_head + embeddings) / 2)

    del weights["model.norm.weight"]
    save_file(weights, tied / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MediflowError, match="tensor 'model.norm.weight' is missing from model"):
        run_merge(parse_merge_config(raw), tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from pathlib import Path
    from mediflow.train.merge import parse_merge_config, run_merge

    def rss_kib():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    raw, output, warmup = json.loads(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    run_merge(parse_merge_config(warmup), output / "warmup", chunk_elements=1 << 18)
    before, peak, done = rss_kib(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    run_merge(parse_merge_config(raw), output / "merged", chunk_elements=1 << 18)
    done.set()
    sampler.join()
    print(json.dumps({"before_kib": before, "peak_kib": peak[0]}))
    """
)


def test_peak_memory_stays_near_one_tensor_not_whole_models(tmp_path: Path) -> None:
    """Four models whose 32 MiB tensor dominates: the TIES merge (global magnitude ranks, the most
    demanding path) holds one ``|delta|`` buffer of that tensor plus row chunks, so its peak stays
    below two copies of the tensor (holding it once per model would be four)."""
    rows, cols = 2048, 4096  # 8M float32 = 32 MiB

    def write_models(prefix: str, shape: tuple[int, int]) -> list[str]:
        folders = []
        for index in range(4):
            folder = tmp_path / f"{prefix}{index}"
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
            generator = torch.Generator().manual_seed(index)
            tensors = {"big.weight": torch.randn(*shape, generator=generator), "small.weight": torch.randn(64, generator=generator)}
            save_file(tensors, folder / "model.safetensors")
            folders.append(str(folder))
        return folders

    def ties(folders: list[str]) -> dict:
        models = [{"model": f, "parameters": {"weight": 0.3, "density": 0.5}} for f in folders[1:]]
        return {"merge_method": "ties", "base_model": folders[0], "models": models}

    raw, warmup = ties(write_models("big", (rows, cols))), ties(write_models("small", (8, 16)))
    probe = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, json.dumps(raw), str(tmp_path), json.dumps(warmup)],
        capture_output=True,
        text=True,
        check=True,
    )
    usage = json.loads(probe.stdout.strip().splitlines()[-1])
    peak_extra_mib = (usage["peak_kib"] - usage["before_kib"]) / 1024
    tensor_mib = rows * cols * 4 / 2**20
    print(f"peak extra {peak_extra_mib:.0f} MiB for a {tensor_mib:.0f} MiB tensor x 4 models")
    assert peak_extra_mib < 2 * tensor_mib  # one tensor-sized buffer + chunks, never one copy per model


def _same(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[name], right[name]) for name in left)


def test_cli_merge_and_its_errors(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump(_config("ties", models)))
    assert main(["merge", "--config", str(config), "--output", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "merge_config.yaml").read_text() == config.read_text()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["kind"], manifest["status"]) == ("merge", "finished") and len(manifest["inputs"]) == EXPERTS + 1
    weights = _tensors(tmp_path / "out")
    assert main(["merge", "--config", str(config), "--output", str(tmp_path / "out")]) == 0  # the same merge: reused
    assert "reused" in capsys.readouterr().out and _same(_tensors(tmp_path / "out"), weights)
    config.write_text(yaml.safe_dump(_config("ties", models) | {"parameters": {"normalize": False}}))
    assert main(["merge", "--config", str(config), "--output", str(tmp_path / "out")]) == 2  # another merge: refused, untouched
    assert "another config (changed: parameters.normalize" in capsys.readouterr().err
    assert _same(_tensors(tmp_path / "out"), weights)
    config.write_text(yaml.safe_dump(_config("ties", models) | {"merge_method": "nope"}))
    assert main(["merge", "--config", str(config), "--output", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "other").exists()


def test_mediphi_preset_picks_slerp_ratios_searches_and_resumes(models: dict[str, Path], tmp_path: Path) -> None:
    """A cheap but real objective: closeness of one merged tensor to expert 1's."""
    target = load_file(models["expert1"] / "model.safetensors")["model.layers.1.mlp.down_proj.weight"]
    calls: list[Path] = []

    def evaluate(folder: Path) -> float:
        calls.append(folder)
        merged = _tensors(folder)["model.layers.1.mlp.down_proj.weight"].float()
        return -float((merged - target).pow(2).sum())

    raw = {
        "preset": "mediphi",
        "base_model": str(models["base"]),
        "experts": [str(models["expert0"]), str(models["expert1"])],
        "output": str(tmp_path / "mediphi"),
        "slerp": {"t_choices": [0.1, 0.5]},
        "search": {"budget": 6, "population": 3, "seed": 1},
    }
    preset = parse_preset(raw, root=tmp_path)
    result = run_mediphi_preset(preset, evaluate)
    assert len(calls) == 2 * 2 + 6 and len(result.trials) == 6
    assert result.slerp_t[str(models["expert1"])] == 0.5  # closer to expert 1
    assert result.best.score == max(trial.score for trial in result.trials)
    final = yaml.safe_load((result.output / "merge_config.yaml").read_text())
    assert final["merge_method"] == "breadcrumbs_ties" and final["parameters"] == {"int8_mask": True, "normalize": False}
    assert evaluate(result.output) == pytest.approx(result.best.score)
    assert sorted(p.name for p in preset.work_dir.iterdir()) == ["search_trials.jsonl", "slerp_0", "slerp_0.json", "slerp_1", "slerp_1.json"]
    assert preset.work_dir == result.output / "work"  # the cache lives under the output folder's lock

    calls.clear()  # a rerun reuses the chosen SLERPs and replays the search log: no new evaluations
    again = run_mediphi_preset(preset, evaluate)
    assert calls == [] and again.best == result.best
    report = json.loads((result.output / "preset_report.json").read_text())["report"]
    assert report["score"] is None and "no separate report set" in report["note"]

    # Another eval set (a new fingerprint): every score is measured again, nothing replayed.
    evaluate.fingerprint = "another eval set"  # type: ignore[attr-defined]
    run_mediphi_preset(preset, evaluate, overwrite=True)
    assert len(calls) == 2 * 2 + 6

    # Expert 0 replaced in place by expert 1's weights: its SLERP is redone and the result changes.
    calls.clear()
    swapped = tmp_path / "swapped"
    shutil.copytree(models["expert0"], swapped)
    preset = parse_preset({**raw, "experts": [str(swapped), str(models["expert1"])]}, root=tmp_path)
    before = run_mediphi_preset(preset, evaluate, overwrite=True)
    assert calls == []  # the same weights at another path: everything reused

    shutil.copy(models["expert1"] / "model.safetensors", swapped / "model.safetensors")
    after = run_mediphi_preset(preset, evaluate, overwrite=True)
    assert len(calls) == 2 + 6  # expert 0's SLERP ratios and the whole search were scored again
    assert after.slerp_t[str(swapped)] == 0.5 and after.best.score != before.best.score


def test_preset_selects_on_validation_and_reports_on_test(models: dict[str, Path], tmp_path: Path) -> None:
    seen: list[str] = []

    def hook(split: str) -> Any:
        def evaluate(folder: Path) -> float:
            seen.append(split)
            return -float(_tensors(folder)["model.layers.1.mlp.down_proj.weight"].float().pow(2).sum())

        evaluate.fingerprint = split  # type: ignore[attr-defined]
        return evaluate

    raw = {"base_model": str(models["base"]), "experts": [str(models["expert0"])], "output": str(tmp_path / "out"), "slerp": {"t_choices": [0.1, 0.5]}, "search": {"budget": 3, "population": 2}}
    result = run_mediphi_preset(parse_preset(raw, root=tmp_path), hook("validation"), report=hook("test"))
    assert seen == ["validation"] * 5 + ["test"]
    report = json.loads((tmp_path / "out" / "preset_report.json").read_text())
    assert report["report"]["score"] == pytest.approx(result.report_score) and report["report"]["evaluator"] == "test"
    first = json.loads((tmp_path / "out" / "work" / "search_trials.jsonl").read_text().splitlines()[0])["candidate"]
    assert first == {"weight_0": 0.0635, "density_0": 0.494, "gamma_0": 1.672}  # the search starts from the paper's published point


def test_cli_preset_with_the_train_eval_hook(models: dict[str, Path], tmp_path: Path) -> None:
    """The preset driven by ``mediflow train eval``'s perplexity, through the CLI."""
    documents = ["Discharge diagnosis: community-acquired pneumonia.", "CT chest shows a small nodule."]
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump({"data": {"documents": "heldout.jsonl", "max_length": 32}, "output": {"dir": "eval"}}))
    preset = {
        "base_model": str(models["base"]),
        "experts": [str(models["expert0"])],
        "output": "out",
        "slerp": {"t_choices": [0.25]},
        "search": {"budget": 2, "population": 2},
        "evaluate": {"eval_config": "eval.yaml"},
    }
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    assert main(["merge", "--preset", "mediphi", "--config", str(tmp_path / "preset.yaml")]) == 0
    report = json.loads((tmp_path / "out" / "preset_report.json").read_text())
    assert report["search"]["evaluations"] == 2 and report["search"]["best_score"] < 0  # minus log-perplexity
    assert METHODS["breadcrumbs_ties"].name in (tmp_path / "out" / "merge_config.yaml").read_text()
