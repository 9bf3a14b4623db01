"""``engine: ray``: what the driver holds to hand a stage to Ray, and req/s of the local engine against Ray at 1, 2, 4 actors.

**Driver memory** (``--records N``, default 100k, projected linearly to ``--target``, default 2.5M):
each hand-off runs in a fresh child process; ``added`` is the child's peak RSS above its RSS just
before the hand-off (the input already written, the imports done), read from ``getrusage`` (it
includes what the allocators keep after a free); ``held`` is the peak of what the hand-off itself
allocated, Python's (``tracemalloc``) plus Arrow's memory pool. The projection to ``--target``
extrapolates ``held`` from N/4 and N records (a fixed cost stays fixed, a streamed read does not
grow). No teacher is called and no Ray is started: it is what the driver itself holds to describe
the work, before Ray copies anything into its object store.

- ``generate, plan listed (e60e824)``: the baseline, the hand-off as it was: every pending
  instruction group of the plan listed, then pickled into one dataset row each;
- ``generate, plan blocks``: now: :meth:`BlockPlan.of`, one cursor into the lazy plan per shard
  range, pickled into one row each;
- ``pairs, input listed (e60e824)``: the baseline: the whole input read, the selection taken,
  every tried record turned into a dict and pickled into one row;
- ``pairs, selected rows``: now: the selection read on ids and scores, then only the selected rows,
  handed to Ray as Arrow slices (no dict, no pickle).

Pairs input: N records of realistic length (document 2,400 characters, answer 1,000, instruction
240: the realistic lengths of docs/scaling.md), judged, in 8 Parquet files; ``top_fraction`` 1.0
(the default: every record tried) and 0.054 (the paper's 135k of 2.5M).

**Throughput**: N requests (``--requests``, default 2,000) with at most C in flight
(``--concurrency``, 64) against the test teacher server with a fixed latency (``--latency``,
0.2 s): the local engine (``run_step`` on one ``Engine``) against ``run_step_on_ray`` at 1, 2 and 4
actors on a local Ray with ``--ray-cpus`` CPUs (each actor reserves 0.5). Each path in a fresh child
process; the timed section is the stage call (for Ray: its actors' start-up included, Ray's own
start-up printed apart). The server counts the requests.

    flock /tmp/mediflow-heavy.lock python benchmarks/ray_scaling.py --records 100000 --requests 2000
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HANDOFFS = ("generate-listed", "generate-blocks", "pairs-listed", "pairs-selected")
LABELS = {
    "generate-listed": "generate, plan listed (e60e824)",
    "generate-blocks": "generate, plan blocks",
    "pairs-listed": "pairs, input listed (e60e824)",
    "pairs-selected": "pairs, selected rows",
}
ENGINES = ("local", "ray-1", "ray-2", "ray-4")


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the hand-offs, each in its own child -------------------------------------------------------------


def _run_config(records: int, out: Path) -> Any:
    from mediflow.config import load_config

    return load_config(None, per_cell=max(1, records // 1500 + 1), max_records=records, documents_per_instruction=3, output={"dir": str(out), "shard_size": 1000})


def _handoff(kind: str, records: int, workdir: Path, top_fraction: float) -> dict[str, Any]:
    """Prepare the input, then measure what the hand-off adds: peak RSS, and the peak of Python's and Arrow's own allocations."""
    import tracemalloc

    import pyarrow as pa

    result = _handoff_rows(kind, records, workdir, top_fraction)
    result["held_mb"] = (tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory() - result.pop("arrow_before")) / 2**20
    return result


def _mark() -> tuple[float, int]:
    """The start of the measured hand-off: RSS now, Arrow's pool peak so far, Python's allocations traced from here."""
    import tracemalloc

    import pyarrow as pa

    tracemalloc.start()
    return _rss_mb(), pa.default_memory_pool().max_memory()


def _handoff_rows(kind: str, records: int, workdir: Path, top_fraction: float) -> dict[str, Any]:
    if kind.startswith("generate"):
        from mediflow.pipeline.collect import ShardCollector
        from mediflow.pipeline.output import RunOutput
        from mediflow.pipeline.plan import build_plan
        from mediflow.pipeline.ray_generate import BlockPlan
        from mediflow.taxonomy import load_taxonomy

        config = _run_config(records, workdir / "out")
        plan = build_plan(config, load_taxonomy())
        before, arrow = _mark()
        if kind == "generate-listed":
            units: list[Any] = list(plan.groups())
        else:
            output = RunOutput(workdir / "out")
            units = BlockPlan.of(plan, ShardCollector(output, len(plan), config.output.shard_size, set()), workdir / "out").units
        rows = [{"index": index, "unit": pickle.dumps(unit)} for index, unit in enumerate(units)]
        return {"added_mb": _peak_mb() - before, "arrow_before": arrow, "rows": len(rows), "records": len(plan), "row_bytes": sum(len(row["unit"]) for row in rows)}
    from mediflow.folders import open_input
    from mediflow.preference import PairsConfig
    from mediflow.preference.build import _INPUT_COLUMNS, _tried
    from mediflow.preference.selection import select_best

    data = open_input(workdir / "pairs-in")
    config = PairsConfig(top_fraction=top_fraction)
    before, arrow = _mark()
    if kind == "pairs-listed":
        selection = select_best(data.read(_INPUT_COLUMNS), min_score=None, top_fraction=top_fraction)
        listed = selection.records.to_pylist()
        blobs = [{"index": index, "unit": pickle.dumps(record)} for index, record in enumerate(listed)]
        tried, row_bytes = len(blobs), sum(len(blob["unit"]) for blob in blobs)
    else:
        _, table = _tried(data, config)
        slices = [table.slice(start, 256) for start in range(0, table.num_rows, 256)]  # the Arrow blocks Ray gets
        tried, row_bytes = sum(part.num_rows for part in slices), table.nbytes
    return {"added_mb": _peak_mb() - before, "arrow_before": arrow, "rows": tried, "records": data.num_rows, "row_bytes": row_bytes}


def write_pairs_input(folder: Path, records: int, files: int = 8) -> None:
    """``records`` judged records of realistic length in ``files`` Parquet files (a plain folder)."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(7)
    vocabulary = "patient admitted with community acquired pneumonia treated amoxicillin clavulanate oral discharge stable follow up clinic renal function normal".split()

    def text(characters: int) -> str:
        words: list[str] = []
        while sum(len(word) + 1 for word in words) < characters:
            words.append(rng.choice(vocabulary))
        return " ".join(words)

    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-records // files)
    for number in range(files):
        count = min(per_file, records - number * per_file)
        if count <= 0:
            break
        rows = {
            "id": [f"r{number}-{i}" for i in range(count)],
            "instruction": [text(240) for _ in range(count)],
            "input": [text(2400) for _ in range(count)],
            "output": [text(1000) for _ in range(count)],
            "task_type": ["summarization"] * count,
            "input_data": ["discharge_summary"] * count,
            "output_format": ["plain_text"] * count,
            "difficulty_level": ["basic"] * count,
            "document_id": [f"d{number}-{i}" for i in range(count)],
            "document_category": ["clinical_notes"] * count,
            "teacher": ["openai:gpt-4o-mini"] * count,
            **{name: [float(rng.randint(1, 5)) for _ in range(count)] for name in ("quality", "alignment", "coherence", "realism", "difficulty")},
        }
        pq.write_table(pa.table(rows), folder / f"part-{number:05d}.parquet")


# --- throughput ------------------------------------------------------------------------------------


def _throughput(kind: str, url: str, requests: int, concurrency: int, workdir: Path, ray_cpus: int) -> dict[str, Any]:
    import asyncio

    from mediflow.engine import LimitsConfig
    from mediflow.scale.config import RayConfig
    from mediflow.scale.ray_runner import StepWork, run_step_on_ray
    from mediflow.steps import Answer, LLMStep, open_engine, run_step
    from mediflow.teachers import ChatRequest
    from mediflow.teachers.factory import TeacherConfig

    class Note(LLMStep[int, str]):
        def request(self, row: int) -> ChatRequest:
            return ChatRequest(messages=(("system", "Write a short progress note."), ("user", f"patient {row}")), max_tokens=64)

        def parse(self, row: int, answer: Answer) -> str:
            return answer.text

    rows = list(range(requests))
    teacher = TeacherConfig(spec="openai:bench", base_url=url)
    limits = LimitsConfig(concurrency=concurrency)
    setup = 0.0
    if kind == "local":

        async def local() -> int:
            async with open_engine(teacher, workdir / "cache.sqlite", limits) as engine:
                return len([result async for result in run_step(engine, Note(), rows, 2 * concurrency)])

        started = time.perf_counter()
        done = asyncio.run(local())
    else:
        import ray

        begun = time.perf_counter()
        ray_dir = Path(f"/tmp/mf-ray-{os.getpid()}")  # Ray's socket paths must stay under 107 bytes
        ray.init(num_cpus=ray_cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False, _temp_dir=str(ray_dir))
        setup = time.perf_counter() - begun
        config = RayConfig(actors=int(kind.split("-")[1]), batch_size=32)
        started = time.perf_counter()
        done = len(run_step_on_ray(rows, StepWork(Note(), teacher, limits, workdir / "cache.sqlite"), config, folder=workdir).results)
    wall = time.perf_counter() - started
    if kind != "local":
        ray.shutdown()
        import shutil

        shutil.rmtree(ray_dir, ignore_errors=True)
    return {"wall_s": wall, "setup_s": setup, "results": done}


# --- parent ----------------------------------------------------------------------------------------


def _child(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {argv[:2]} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--target", type=int, default=2_500_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--skip", choices=("memory", "throughput"), action="append", default=[])
    parser.add_argument("--paths", nargs="+", choices=ENGINES, default=list(ENGINES), help="throughput: the paths to time (local is the baseline)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, workdir = args.child[0], Path(args.child[1])
        if kind in HANDOFFS:
            print(json.dumps(_handoff(kind, int(args.child[2]), workdir, float(args.child[3]))))
        else:
            print(json.dumps(_throughput(kind, args.child[2], int(args.child[3]), int(args.child[4]), workdir, int(args.child[5]))))
        return

    with tempfile.TemporaryDirectory(prefix="mediflow-ray-scaling-") as tmp:
        workdir = Path(tmp)
        if "memory" not in args.skip:
            small = max(1, args.records // 4)
            write_pairs_input(workdir / "pairs-in", args.records)
            write_pairs_input(workdir / "pairs-small" / "pairs-in", small)
            print(f"driver memory to hand a stage to Ray: {args.records:,} records (and {small:,} for the slope), projected to {args.target:,}")
            print("added: peak RSS over the child's RSS before the hand-off; held: peak of Python's (tracemalloc) + Arrow's pool allocations")
            print(f"{'hand-off':34} {'top_frac':>8} {'rows':>8} {'added MB':>9} {'held MB':>8} {'held GB @target':>16} {'vs baseline':>11}")
            for fraction in (1.0, 0.054):
                baseline = None
                for kind in HANDOFFS:
                    if kind.startswith("generate") and fraction != 1.0:
                        continue
                    row = _child([kind, str(workdir), str(args.records), str(fraction)])
                    low = _child([kind, str(workdir / "pairs-small"), str(small), str(fraction)])
                    slope = max(0.0, (row["held_mb"] - low["held_mb"]) / (args.records - small))  # MB per record
                    projected = (row["held_mb"] + slope * (args.target - args.records)) / 1024
                    if kind.endswith("listed"):
                        baseline = projected
                    ratio = f"{projected / baseline:.3f}x" if baseline and not kind.endswith("listed") else "baseline"
                    shown = "-" if kind.startswith("generate") else f"{fraction:g}"
                    print(f"{LABELS[kind]:34} {shown:>8} {row['rows']:>8,} {row['added_mb']:>9.1f} {row['held_mb']:>8.1f} {projected:>16,.2f} {ratio:>11}")
        if "throughput" not in args.skip:
            from mediflow.testing import teacher_server

            print(f"\nreq/s: {args.requests} requests, concurrency {args.concurrency}, {args.latency} s latency, local Ray with {args.ray_cpus} CPUs")
            print(f"{'path':18} {'wall s':>8} {'req/s':>8} {'vs local':>9}  notes")
            with teacher_server("--latency", str(args.latency)) as url:
                local_rate = None
                for kind in args.paths:
                    url.reset()
                    run_dir = workdir / f"run-{kind}"
                    run_dir.mkdir()
                    row = _child([kind, str(run_dir), str(url), str(args.requests), str(args.concurrency), str(args.ray_cpus)])
                    served = url.stats()["requests"]
                    rate = served / row["wall_s"]
                    local_rate = local_rate or rate
                    note = f"{served} served" + (f", +{row['setup_s']:.1f} s Ray start (untimed)" if row["setup_s"] else "")
                    label = "local engine" if kind == "local" else f"ray, {kind.split('-')[1]} actor(s)"
                    print(f"{label:18} {row['wall_s']:>8.1f} {rate:>8.1f} {rate / local_rate:>8.2f}x  {note}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
