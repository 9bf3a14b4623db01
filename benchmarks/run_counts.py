"""Teacher calls and tokens per record of the default stages, measured, and what they make at 2.5M records.

One run against the test teacher server with every stage at its defaults (only the teacher, the
size and the output folders are set): ``generate`` (document -> instruction -> response, JSON
correction turns), the record ``judge`` (5 samples per record) and ``pairs`` (error injection +
one pair-judge call per record tried). The server counts the requests; the stages' manifests give
the tokens. Calls per record do not depend on what the teacher writes (the test teacher answers
every JSON request with a schema-valid instance, so no correction turn is needed: a real teacher
adds its own correction rate). Tokens do: the test teacher's answers are short synthetic
paragraphs, so completion tokens, and the prompt tokens of the prompts that quote earlier answers,
are low; docs/scaling.md corrects them for realistic answer lengths (:data:`REALISTIC_PER_RECORD`).

With ``--mode batch`` every stage runs in batch mode (``mode: batch``, the test teacher's emulated
batch API): the calls are then the lines of the batches it submitted, and the rounds are printed.
Last, what the run costs at the target size, online and in provider batches, at the list prices of
``mediflow/engine/accounting.py`` (``PRICES``), for the measured and the realistic tokens.

    python benchmarks/run_counts.py --records 300 --target 2500000 [--mode batch]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from mediflow import generate
from mediflow.engine.accounting import MODES, price_per_1k
from mediflow.preference import PairsConfig, build_pairs
from mediflow.quality import JudgeConfig, run_judge
from mediflow.testing import TeacherServerURL, teacher_server

TEACHER = "openai:mediflow-test-teacher"
#: Per record, the tokens of docs/scaling.md's realistic estimate (the test teacher's answer lengths
#: replaced by realistic ones wherever an answer is written or quoted): (prompt, completion).
REALISTIC_PER_RECORD = (13_014, 1_922)
PRICED_MODELS = ("gpt-4o-mini", "gpt-4.1")


def _calls(url: TeacherServerURL, mode: str) -> int:
    """The requests the server answered online, or the lines of the batches it was given."""
    stats = url.stats()
    return int(stats["requests"]) if mode == "online" else sum(stats["batch_submitted"].values())


def measure(records: int, workdir: Path, mode: str = "online") -> dict[str, Any]:
    """Run the three stages on ``records`` planned records; calls, tokens and answer lengths per stage."""
    stages: dict[str, Any] = {}
    batch = {"mode": mode, "batch": {"poll_interval": 0.1}}
    with teacher_server() as url:
        run = workdir / "run"
        dataset = generate({"teacher": {"spec": TEACHER, "base_url": str(url)}, "per_cell": 1, "max_records": records, "progress": False, "output": {"dir": str(run)}, **batch})
        manifest = json.loads((run / "manifest.json").read_text())
        stages["generate"] = {
            "records_in": manifest["plan"]["items"],
            "records_out": len(dataset),
            "calls": _calls(url, mode),
            "rounds": manifest.get("batch", {}).get("rounds"),
            **manifest["usage"],
        }
        url.reset()
        judged = workdir / "judged"
        report = run_judge(run, judged, JudgeConfig.load(None, teacher=TEACHER, base_url=str(url), progress=False, thresholds={}, **batch))
        usage = report.details["usage"]
        stages["judge"] = {
            "records_in": report.details["judged"],
            "records_out": report.kept,
            "calls": _calls(url, mode),
            "rounds": report.details.get("batch", {}).get("rounds"),
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
        }
        url.reset()
        result = build_pairs(judged, workdir / "pairs", PairsConfig.load(None, teacher=TEACHER, base_url=str(url), progress=False, **batch))
        usage = next(iter(result.manifest["usage"].values()))
        stages["pairs"] = {
            "records_in": result.tried,
            "records_out": result.kept,
            "calls": _calls(url, mode),
            "rounds": result.manifest.get("batch", {}).get("rounds"),
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
        }
    return stages


def cost_lines(rates: dict[str, dict[str, float]], target: int) -> list[str]:
    """What ``target`` records cost, online and in batches, per model, at measured and at realistic tokens."""
    measured = (sum(rate["prompt_tokens"] for rate in rates.values()), sum(rate["completion_tokens"] for rate in rates.values()))
    lines = [f"cost of {target:,} records at the list prices of mediflow/engine/accounting.py", f"{'model':<14}{'tokens':<11}{'per record (prompt+compl)':>27}{'online':>14}{'batch':>14}"]
    for model in PRICED_MODELS:
        for label, (prompt, completion) in (("measured", measured), ("realistic", REALISTIC_PER_RECORD)):
            costs = []
            for mode in MODES:
                price = price_per_1k(model, None, None, mode=mode)
                assert price is not None
                costs.append((prompt * price[0] + completion * price[1]) / 1000 * target)
            lines.append(f"{model:<14}{label:<11}{f'{prompt:,.0f} + {completion:,.0f}':>27}{f'${costs[0]:,.0f}':>14}{f'${costs[1]:,.0f}':>14}")
    return lines


def per_record(stages: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "calls": stage["calls"] / stage["records_in"],
            "prompt_tokens": stage["prompt_tokens"] / stage["records_in"],
            "completion_tokens": stage["completion_tokens"] / stage["records_in"],
        }
        for name, stage in stages.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300, help="records of the measured run")
    parser.add_argument("--target", type=int, default=2_500_000, help="records of the run to project")
    parser.add_argument("--mode", choices=MODES, default="online", help="run every stage online, or in batch mode (calls are then batch lines)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mediflow-counts-") as tmp:
        stages = measure(args.records, Path(tmp), args.mode)
    rates = per_record(stages)
    print(f"measured: {args.records} planned records, default stages, mode {args.mode}, test teacher server; projected to {args.target:,} records")
    print(f"{'stage':<10}{'records in':>11}{'calls':>8}{'calls/rec':>10}{'prompt tok/rec':>15}{'compl tok/rec':>14}{'calls @target':>15}{'prompt tok @target':>19}{'compl tok @target':>18}")
    for name, stage in stages.items():
        rate = rates[name]
        print(
            f"{name:<10}{stage['records_in']:>11}{stage['calls']:>8}{rate['calls']:>10.2f}{rate['prompt_tokens']:>15.0f}{rate['completion_tokens']:>14.0f}"
            f"{rate['calls'] * args.target:>15,.0f}{rate['prompt_tokens'] * args.target:>19,.0f}{rate['completion_tokens'] * args.target:>18,.0f}"
        )
    if args.mode == "batch":
        print("batch rounds: " + ", ".join(f"{name} {stage['rounds']}" for name, stage in stages.items()))
    print("\n".join(cost_lines(rates, args.target)))
    if args.out:
        args.out.write_text(json.dumps({"argv": sys.argv[1:], "stages": stages, "per_record": rates}, indent=2) + "\n")


if __name__ == "__main__":
    main()
