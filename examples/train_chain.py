"""The whole MediPhi-style chain on the real Gemma-3-270M: two PIT experts, merge, SFT, DPO, eval.

    python examples/train_chain.py                 # CPU: a handful of steps per stage (~15-25 min on 2 cores)
    python examples/train_chain.py --gpu           # GPU: the configs' realistic epochs / lengths / batches
    python examples/train_chain.py --model PATH    # any local Hugging Face model folder instead
    python examples/train_chain.py --teacher openai:gpt-4o-mini   # generate PIT task data with a teacher first
    python examples/train_chain.py --evaluate final               # evaluate the final model only (and compare with earlier reports)

Every stage runs through the real command line (``python -m mediflow train ...`` and
``python -m mediflow merge``) in its own process, with the stage configs in ``examples/train/``
and the synthetic corpora in ``examples/data/``; only paths and the CPU/GPU budget are overridden,
with the flags every config key has (``--train-max-steps 2``, ``--output-dir ...``). After each stage the model is evaluated with the same eval config, and the last
step prints all reports side by side, so one can see what each stage did.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "train"
DOMAINS = {"discharge": "discharge_notes.jsonl", "radiology": "radiology_reports.jsonl"}

#: The PIT schedule for a few CPU steps: MediPhi's order and data, but learning rates scaled down.
#: MediPhi's 1e-4 / 3e-4 assume large batches, warm-up and thousands of steps; two batch-1 steps at
#: those rates throw Gemma-3-270M's held-out perplexity from ~30 to ~800 (measured), which shows
#: nothing about PIT.
CPU_PIT_SCHEDULE = "[{name: task, data: [task], epochs: 1, learning_rate: 1.0e-5}, {name: task_and_documents, data: [task, documents], epochs: 2, learning_rate: 1.0e-5, order: shuffled}]"

#: Config overrides per stage (``section.key=value``, passed as the key's flag). CPU: a few steps on short sequences (Gemma-3-270M trains at roughly
#: 5-15 s per step of ~100 tokens on 2 cores); GPU: the configs as written. PIT's max_length is 256
#: because at 128 half of the example task rows do not fit (the stage would drop 12 of 24 rows).
BUDGETS = {
    "cpu": {
        "pit": ["train.max_steps=2", "train.batch_size=1", "train.gradient_accumulation_steps=1", "train.warmup_steps=0", "data.max_length=256", "output.logging_steps=1", f"pit.schedule={CPU_PIT_SCHEDULE}"],
        "sft": ["train.max_steps=3", "train.batch_size=1", "train.gradient_accumulation_steps=1", "train.warmup_steps=0", "train.learning_rate=2.0e-5", "data.max_length=256", "output.logging_steps=1"],
        "dpo": ["train.max_steps=2", "train.batch_size=1", "train.gradient_accumulation_steps=1", "train.warmup_steps=0", "train.learning_rate=1.0e-6", "data.max_length=256", "output.logging_steps=1"],
        "eval": ["eval.max_new_tokens=96", "eval.eval_batch_size=4", "data.max_length=256"],
    },
    "gpu": {"pit": [], "sft": [], "dpo": [], "eval": []},
}


def mediflow(*arguments: str | Path) -> None:
    """Run one ``mediflow`` command in a fresh process (memory is returned between stages)."""
    command = [sys.executable, "-m", "mediflow", *map(str, arguments)]
    print(f"\n$ mediflow {' '.join(map(str, arguments))}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def as_flags(overrides: list[str]) -> list[str]:
    """``section.key=value`` overrides as the flags of the config keys (``--section-key value``)."""
    flags = []
    for override in overrides:
        key, _, value = override.partition("=")
        flags += ["--" + key.replace(".", "-").replace("_", "-"), value]
    return flags


def length_rows(work: Path) -> list[tuple[str, dict[str, int]]]:
    """Every training stage's length counts, read back from the manifests the stages wrote."""
    rows = []
    for manifest in sorted(work.glob("expert_*/manifest.json")):
        rows.append((manifest.parent.name, json.loads(manifest.read_text())["lengths"]))
    for stage in ("sft", "dpo"):
        manifest = work / stage / "manifest.json"
        if manifest.is_file():
            rows.append((stage, json.loads(manifest.read_text())["lengths"]))
    return rows


def print_length_table(work: Path) -> None:
    print("\nrows per training stage (data.max_length decides what fits):")
    print(f"{'stage':18s}{'max_length':>11s}{'rows':>6s}{'trained':>9s}{'dropped':>9s}{'cut':>5s}{'tokens lost':>13s}{'doc chunks':>12s}")
    for name, counts in length_rows(work):
        chunks = f"{counts['documents_chunked']}->{counts['chunks']}" if counts["documents_chunked"] else "-"
        print(f"{name:18s}{counts['max_length']:>11d}{counts['rows']:>6d}{counts['kept']:>9d}{counts['dropped']:>9d}{counts['cut']:>5d}{str(counts['tokens_lost']) + '/' + str(counts['tokens']):>13s}{chunks:>12s}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="realistic settings for a GPU (default: a few CPU steps)")
    parser.add_argument("--model", default="gemma3-270m", help="base model: 'gemma3-270m' (PyPI GGUF) or a local folder")
    parser.add_argument("--workdir", type=Path, default=Path("runs/train_chain"), help="where every stage writes")
    parser.add_argument(
        "--evaluate",
        choices=("every", "final"),
        default="every",
        help="evaluate after every stage (default), or only the final model; the comparison shows every report in --workdir",
    )
    parser.add_argument("--teacher", help="generate the PIT task data with this teacher (e.g. local, openai:MODEL) instead of the supplied files")
    args = parser.parse_args()
    budget = BUDGETS["gpu" if args.gpu else "cpu"]
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from mediflow.train.models import resolve_model

    base = resolve_model(args.model) if not Path(args.model).is_dir() else Path(args.model).resolve()
    print(f"base model: {base}")
    reports: list[Path] = []

    def evaluate(label: str, model: Path, final: bool = False) -> None:
        if args.evaluate == "final" and not final:
            return
        mediflow("train", "eval", "--config", CONFIGS / "eval.yaml", *as_flags([f"model.name_or_path={model}", f"output.dir={work / ('eval_' + label)}", *budget["eval"]]))
        reports.append(work / f"eval_{label}" / "eval_report.json")

    evaluate("0_base", base)

    experts: list[Path] = []
    for domain, corpus in DOMAINS.items():
        task_data: list[str] = []
        if args.teacher:
            mediflow("train", "qa", "--config", CONFIGS / "qa_discharge.yaml", "--teacher", args.teacher, *as_flags([f"data.documents={HERE / 'data' / corpus}", f"output.dir={work / ('task_data_' + domain)}"]))
            task_data = [f"data.task_data={work / ('task_data_' + domain)}"]
        output = work / f"expert_{domain}"
        mediflow("train", "pit", "--config", CONFIGS / f"pit_{domain}.yaml", *as_flags([f"model.name_or_path={base}", f"output.dir={output}", *task_data, *budget["pit"]]))
        expert = Path(json.loads((output / "manifest.json").read_text())["final"])
        experts.append(expert)
        evaluate(f"1_expert_{domain}", expert)

    merge = yaml.safe_load((CONFIGS / "merge_experts.yaml").read_text())
    merge["base_model"] = str(base)
    for entry, expert in zip(merge["models"], experts):
        entry["model"] = str(expert)
    merge["tokenizer"] = {"source": "base"}
    (work / "merge.yaml").write_text(yaml.safe_dump(merge, sort_keys=False))
    merged = work / "merged"
    mediflow("merge", "--config", work / "merge.yaml", "--output", merged, "--overwrite")
    evaluate("2_merged", merged)

    mediflow("train", "sft", "--config", CONFIGS / "sft.yaml", *as_flags([f"model.name_or_path={merged}", f"output.dir={work / 'sft'}", *budget["sft"]]))
    evaluate("3_sft", work / "sft" / "model")

    mediflow("train", "dpo", "--config", CONFIGS / "dpo.yaml", *as_flags([f"model.name_or_path={work / 'sft' / 'model'}", f"output.dir={work / 'dpo'}", *budget["dpo"]]))
    evaluate("4_dpo", work / "dpo" / "model", final=True)

    print_length_table(work)
    # Reports of earlier runs in the same folder count too (a stage reused from its fingerprint is the same model).
    reports = sorted(set(reports) | set(work.glob("eval_*/eval_report.json")))
    mediflow("train", "eval", "--compare", *reports)
    print(f"\nchain finished in {time.perf_counter() - started:.0f} s; everything is under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
