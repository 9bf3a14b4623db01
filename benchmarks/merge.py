"""Merge benchmark: ``mediflow merge`` against mergekit 0.1.5 on the same ~100M-parameter models.

A Llama-architecture base (~100M float32 parameters, random weights from a local config; nothing is
downloaded) and four "experts" (the base plus a different small perturbation of every tensor) are
written as sharded safetensors in a temp folder. Each merge then runs as its own child process,
``python -m mediflow merge`` or ``mergekit-yaml`` on the very same YAML, and the child's wall time
and peak RSS are read from ``os.wait4`` (the kernel's ``ru_maxrss`` of that child alone), so
neither tool's figure includes the other's or this script's memory. Runs alternate between the
tools and the table reports the median of ``--repeats``; the last columns compare the two outputs
(largest element-wise difference, and how many elements differ by more than 1e-6), to show both
computed the same merge.

On Linux ``ru_maxrss`` survives ``exec``: a child started from a process that had already grown
(say, by building the models) would report the parent's size. So this script's own process never
imports torch before the measurements: the models are built in a child (``--build``), and versions
are read from package metadata.

    python benchmarks/merge.py                          # ties, breadcrumbs_ties, linear; 2 repeats
    python benchmarks/merge.py --methods ties --repeats 1 --keep /tmp/merge-bench

Targets: ours <= 1.0x mergekit's time and <= 0.5x its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import struct
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


def build_in_child(root: Path) -> None:
    """Build the models in a separate process, so this one stays small (see the module docstring)."""
    subprocess.run([sys.executable, __file__, "--build", str(root)], check=True)


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


def version(package: str) -> str:
    from importlib.metadata import version as installed

    return installed(package)


def parameter_count(folder: Path) -> int:
    """Parameters stored in a safetensors folder, from the shard headers alone (no torch import)."""
    total = 0
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
        total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return total


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


def compare_outputs(first: Path, second: Path) -> tuple[float, int]:
    """The largest ``|a - b|`` over every tensor of two merged folders, and how many elements differ
    by more than 1e-6 (read one tensor at a time)."""
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
    worst, differing = 0.0, 0
    for name in ours:
        with safe_open(str(ours[name]), framework="pt") as a, safe_open(str(theirs[name]), framework="pt") as b:
            difference = (a.get_tensor(name).double() - b.get_tensor(name).double()).abs()
        worst = max(worst, float(difference.max()))
        differing += int((difference > 1e-6).sum())
    return worst, differing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["ties", "breadcrumbs_ties", "linear"])
    parser.add_argument("--repeats", type=int, default=2, help="runs per tool and method (the median is reported)")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the models here and keep them")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # internal: build the models in ROOT and exit
    args = parser.parse_args()
    if args.build:
        build_models(args.build)
        return 0

    root = args.keep or Path(tempfile.mkdtemp(prefix="mediflow-merge-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if (root / f"expert{EXPERTS - 1}" / "config.json").is_file():
            base, experts = root / "base", [root / f"expert{i}" for i in range(EXPERTS)]
            print(f"models: reusing {root}")
        else:
            build_in_child(root)
            base, experts = root / "base", [root / f"expert{i}" for i in range(EXPERTS)]
        print(f"python {sys.version.split()[0]}, torch {version('torch')}, mergekit {version('mergekit')}, {os.cpu_count()} CPUs")
        rows = []
        outputs_by_method = {}
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
            outputs_by_method[method] = outputs
            seconds = {tool: statistics.median(r.seconds for r in rs) for tool, rs in runs.items()}
            rss = {tool: statistics.median(r.peak_rss_mib for r in rs) for tool, rs in runs.items()}
            rows.append((method, seconds, rss))

        # Only now may this process import torch (compare_outputs): every measurement is done.
        print(f"\n{len(experts)} experts + base, {parameter_count(base) / 1e6:.1f}M parameters each (float32); median of {args.repeats} runs")
        print("method             ours s  mergekit s  time x  ours MiB  mergekit MiB  RSS x  max |diff|  elements > 1e-6")
        results = []
        for method, seconds, rss in rows:
            worst, differing = compare_outputs(outputs_by_method[method]["mediflow"], outputs_by_method[method]["mergekit"])
            for output in outputs_by_method[method].values():
                shutil.rmtree(output, ignore_errors=True)
            print(
                f"{method:17s} {seconds['mediflow']:7.1f} {seconds['mergekit']:11.1f} {seconds['mediflow'] / seconds['mergekit']:7.2f}"
                f" {rss['mediflow']:9.0f} {rss['mergekit']:13.0f} {rss['mediflow'] / rss['mergekit']:6.2f}  {worst:10.2e}  {differing:>15,d}"
            )
            results.append({"method": method, "seconds": seconds, "peak_rss_mib": rss, "max_abs_difference": worst, "elements_differing": differing})
        print(json.dumps({"results": results}))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
