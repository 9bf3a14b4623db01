"""Merge benchmark: ``mediflow merge`` against mergekit 0.1.5 on the same ~100M-parameter models.

A Llama-architecture base (~100M float32 parameters, random weights from a local config; nothing is
downloaded) and four "experts" (the base plus a different small perturbation of every tensor) are
written as sharded safetensors in a temp folder. Each merge then runs as its own child process,
``python -m mediflow merge`` or ``mergekit-yaml`` on the very same YAML, and the child's wall time
and peak RSS are read from ``os.wait4`` (the kernel's ``ru_maxrss`` of that child alone), so
neither tool's figure includes the other's or this script's memory. Runs alternate between the
tools and the table reports the median of ``--repeats``; a final column gives the largest
element-wise difference between the two outputs, to show both computed the same merge.

    python benchmarks/merge.py                          # ties, breadcrumbs_ties, linear; 2 repeats
    python benchmarks/merge.py --methods ties --repeats 1 --keep /tmp/merge-bench

Targets: ours <= 1.0x mergekit's time and <= 0.5x its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

#: ~100M parameters: 2 x 16k x 768 embeddings/head + 12 layers x ~6.3M.
MODEL_SHAPE = {
    "vocab_size": 16000,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
EXPERTS = 4
SHARD_SIZE = "100MB"

#: Per-expert parameters: MediPhi's published expert first, then spread-out values.
EXPERT_PARAMETERS = [
    {"weight": 0.0635, "density": 0.494, "gamma": 0.01},
    {"weight": 0.4, "density": 0.6, "gamma": 0.05},
    {"weight": 0.7, "density": 0.3, "gamma": 0.01},
    {"weight": 0.25, "density": 0.8, "gamma": 0.02},
]


def build_models(root: Path) -> tuple[Path, list[Path]]:
    """Write the base and the experts as sharded float32 safetensors folders under ``root``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**MODEL_SHAPE))
    parameters = sum(p.numel() for p in model.parameters())
    base = root / "base"
    model.save_pretrained(base, max_shard_size=SHARD_SIZE)
    original = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    experts = []
    for index in range(EXPERTS):
        generator = torch.Generator().manual_seed(1000 + index)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                scale = 0.01 * (index + 1) * (float(original[name].std()) if original[name].numel() > 1 else 1.0)
                tensor.copy_(original[name] + scale * torch.randn(tensor.shape, generator=generator))
        experts.append(root / f"expert{index}")
        model.save_pretrained(experts[-1], max_shard_size=SHARD_SIZE)
    shards = len(list(base.glob("*.safetensors")))
    print(f"models: base + {EXPERTS} experts, {parameters / 1e6:.1f}M float32 parameters each, {shards} shards each, in {root}")
    return base, experts


def merge_config(method: str, base: Path, experts: list[Path]) -> dict:
    """The same mergekit-format config for both tools."""
    if method == "linear":
        weights = [1.0] + [p["weight"] for p in EXPERT_PARAMETERS[: len(experts)]]
        models = [{"model": str(path), "parameters": {"weight": w}} for path, w in zip([base, *experts], weights)]
        return {"merge_method": "linear", "models": models, "dtype": "float32"}
    keys = {
        "task_arithmetic": ("weight",),
        "ties": ("weight", "density"),
        "breadcrumbs": ("weight", "density", "gamma"),
        "breadcrumbs_ties": ("weight", "density", "gamma"),
    }[method]
    config = {
        "merge_method": method,
        "base_model": str(base),
        "dtype": "float32",
        "models": [{"model": str(path), "parameters": {k: p[k] for k in keys}} for path, p in zip(experts, EXPERT_PARAMETERS)],
    }
    if method == "breadcrumbs_ties":
        config["parameters"] = {"int8_mask": True, "normalize": False}  # MediPhi's published settings
    return config


def commands(config: Path, output: Path) -> dict[str, list[str]]:
    """Each tool's command line for one merge, both on the CPU with default options."""
    mergekit_yaml = Path(sys.executable).with_name("mergekit-yaml")
    return {
        "mediflow": [sys.executable, "-m", "mediflow", "merge", "--config", str(config), "--output", str(output), "--overwrite"],
        "mergekit": [str(mergekit_yaml), str(config), str(output), "--no-copy-tokenizer", "--quiet"],
    }


@dataclass
class Run:
    seconds: float
    peak_rss_mib: float


def measure(command: list[str]) -> Run:
    """Run ``command`` as a child process; its wall time and its own peak RSS (``wait4``)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({process.returncode}):\n{stderr.decode(errors='replace')[-3000:]}")
    return Run(seconds, usage.ru_maxrss / 1024)  # Linux reports KiB


def max_difference(first: Path, second: Path) -> float:
    """The largest ``|a - b|`` over every tensor of two merged folders, read one tensor at a time."""
    from safetensors import safe_open

    def locations(folder: Path) -> dict[str, Path]:
        found = {}
        for file in folder.glob("*.safetensors"):
            with safe_open(str(file), framework="pt") as handle:
                found.update(dict.fromkeys(handle.keys(), file))
        return found

    ours, theirs = locations(first), locations(second)
    if set(ours) != set(theirs):
        raise SystemExit(f"the merged folders hold different tensors: {sorted(set(ours) ^ set(theirs))[:5]}")
    worst = 0.0
    for name in ours:
        with safe_open(str(ours[name]), framework="pt") as a, safe_open(str(theirs[name]), framework="pt") as b:
            worst = max(worst, float((a.get_tensor(name).double() - b.get_tensor(name).double()).abs().max()))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["ties", "breadcrumbs_ties", "linear"])
    parser.add_argument("--repeats", type=int, default=2, help="runs per tool and method (the median is reported)")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the models here and keep them")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="mediflow-merge-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if (root / f"expert{EXPERTS - 1}" / "config.json").is_file():
            base, experts = root / "base", [root / f"expert{i}" for i in range(EXPERTS)]
            print(f"models: reusing {root}")
        else:
            base, experts = build_models(root)
        import mergekit
        import torch

        print(f"python {sys.version.split()[0]}, torch {torch.__version__}, mergekit {getattr(mergekit, '__version__', '0.1.5')}, "
              f"{os.cpu_count()} CPUs")
        rows = []
        for method in args.methods:
            config = root / f"{method}.yaml"
            config.write_text(yaml.safe_dump(merge_config(method, base, experts), sort_keys=False))
            outputs = {tool: root / f"out-{method}-{tool}" for tool in ("mediflow", "mergekit")}
            runs: dict[str, list[Run]] = {"mediflow": [], "mergekit": []}
            for repeat in range(args.repeats):
                order = ("mediflow", "mergekit") if repeat % 2 == 0 else ("mergekit", "mediflow")
                for tool in order:
                    shutil.rmtree(outputs[tool], ignore_errors=True)
                    run = measure(commands(config, outputs[tool])[tool])
                    runs[tool].append(run)
                    print(f"  {method:17s} {tool:8s} run {repeat + 1}: {run.seconds:7.1f} s  {run.peak_rss_mib:7.0f} MiB", flush=True)
            difference = max_difference(outputs["mediflow"], outputs["mergekit"])
            for output in outputs.values():
                shutil.rmtree(output, ignore_errors=True)
            seconds = {tool: statistics.median(r.seconds for r in rs) for tool, rs in runs.items()}
            rss = {tool: statistics.median(r.peak_rss_mib for r in rs) for tool, rs in runs.items()}
            rows.append((method, seconds, rss, difference))

        print("\nmethod              ours s  mergekit s  time x   ours MiB  mergekit MiB  RSS x   max |ours - mergekit|")
        for method, seconds, rss, difference in rows:
            print(
                f"{method:17s} {seconds['mediflow']:8.1f} {seconds['mergekit']:11.1f} {seconds['mediflow'] / seconds['mergekit']:7.2f}"
                f" {rss['mediflow']:10.0f} {rss['mergekit']:13.0f} {rss['mediflow'] / rss['mergekit']:6.2f}   {difference:.2e}"
            )
        print(json.dumps({"results": [
            {"method": m, "seconds": s, "peak_rss_mib": r, "max_abs_difference": d} for m, s, r, d in rows
        ]}))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
