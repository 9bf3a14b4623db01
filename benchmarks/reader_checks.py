"""What checking an input at the reader costs: ``open_input`` on a big folder, against one read of it, in one run.

``open_input`` checks every file before any work (issue 23): the footers and the schema (as before),
then one streaming pass over the text columns (every string valid UTF-8, no null in the text a record
is made of, no id naming two different records). This script writes a contract folder of ``--records``
records (realistic sizes: a ~15-word instruction, a ~250-word document, a ~60-word answer, the ids, the
grouping columns, and the ``messages`` view of the same text, as ``generate`` writes it; 100,000 rows
per shard as the stages write them) and measures, each in a fresh child
process, the wall time and the peak memory: Arrow's memory pool high-water mark (where the batches live)
and the process's peak resident memory (``VmHWM``) above what the child held before:

- ``footers``: the check before issue 23 (schemas and footers only; ``open_input`` without the pass),
- ``checked``: ``open_input`` as it is now (footers, then the streaming pass),
- ``baseline``: one streaming read of every column, batch by batch (``InputData.iter_batches``): what
  any stage pays to read its input once, and the yardstick the pass is compared against.

    flock /tmp/mediflow-heavy.lock python benchmarks/reader_checks.py --records 1000000
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROWS_PER_SHARD = 100_000
VOCABULARY = (
    "patient denies chest pain dyspnea fever cough nausea vomiting abdominal tenderness edema rash hypertension diabetes "
    "kidney liver cardiac pulmonary renal hepatic neurologic acute chronic stable improving worsening admitted discharged "
    "follow clinic imaging laboratory sodium potassium creatinine glucose insulin metformin lisinopril aspirin heparin "
    "warfarin ultrasound radiograph computed tomography lesion nodule effusion fracture wound infection sepsis pneumonia"
).split()


def _texts(rng: random.Random, count: int, words: int) -> list[str]:
    return [" ".join(rng.choices(VOCABULARY, k=words)) for _ in range(count)]


def build(folder: Path, records: int, seed: int = 0) -> None:
    """A finished ``generate`` folder of ``records`` records (texts drawn from pools, ids unique)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from mediflow.folders import OutputFolder, StagedWriter
    from mediflow.records import content_id

    rng = random.Random(seed)
    instructions = pa.array(_texts(rng, 5_000, 15))
    documents = pa.array(_texts(rng, 20_000, 250))
    answers = pa.array(_texts(rng, 50_000, 60))
    tasks = pa.array(["clinical_coding", "question_summarization", "named_entity_recognition"])
    shutil.rmtree(folder, ignore_errors=True)
    out = OutputFolder.open(folder, kind="generate", config={"benchmark": "reader_checks", "records": records}, staged=False)
    writer = StagedWriter(out, rows_per_shard=ROWS_PER_SHARD)
    for start in range(0, records, ROWS_PER_SHARD):
        rows = min(ROWS_PER_SHARD, records - start)
        pick = [rng.randrange(2**31) for _ in range(rows)]

        def take(pool: pa.Array, pick: list[int] = pick) -> pa.Array:
            return pool.take(pa.array([p % len(pool) for p in pick]))

        instruction, document, answer = take(instructions), take(documents), take(answers)
        turns = pa.StructArray.from_arrays(
            [pa.array(["user", "assistant"] * rows), pa.concat_arrays([pc.binary_join_element_wise(instruction, document, "\n\n"), answer]).take(pa.array([i // 2 + (i % 2) * rows for i in range(2 * rows)]))],
            names=["role", "content"],
        )
        writer.keep(
            pa.table(
                {
                    "id": pa.array([content_id(str(start + i)) for i in range(rows)]),
                    "instruction": instruction,
                    "input": document,
                    "output": answer,
                    "messages": pa.ListArray.from_arrays(pa.array(range(0, 2 * rows + 1, 2), pa.int32()), turns),
                    "task_type": take(tasks),
                    "input_data": pa.array(["discharge_summary"] * rows),
                    "output_format": pa.array(["plain_text"] * rows),
                    "document_id": pa.array([f"d{p % 20_000}" for p in pick]),
                }
            )
        )
    writer.publish(pa.schema([]), {"records": records})


def _status_kib(key: str) -> int:
    """This process's ``VmRSS`` (now) or ``VmHWM`` (its peak) in KiB, from /proc/self/status.

    Not ``ru_maxrss``: Linux keeps that across ``execve``, so a child started by a parent that built a
    big folder would report the parent's peak, not its own.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def _child(mode: str, folder: str) -> None:
    import pyarrow as pa

    import mediflow.folders.reader as reader

    if mode == "footers":
        reader._check_rows = lambda *args, **kwargs: None  # the check before issue 23: footers and schema only
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    data = reader.open_input(folder)
    rows = data.num_rows
    if mode == "baseline":
        rows = sum(batch.num_rows for batch in data.iter_batches())
    seconds = time.perf_counter() - started
    extra_kib = _status_kib("VmHWM") - before
    print(json.dumps({"rows": rows, "seconds": seconds, "mib": extra_kib / 1024, "arrow_mib": pa.default_memory_pool().max_memory() / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/mediflow-bench-reader"), help="where the folder is written (removed at the end)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (the best is kept: the page cache is warm for all)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    started = time.perf_counter()
    build(args.folder, args.records)
    size = sum(p.stat().st_size for p in (args.folder / "data").glob("*.parquet"))
    print(f"folder: {args.records:,} records in {len(list((args.folder / 'data').glob('*.parquet')))} shards, {size / 2**20:,.0f} MiB on disk (built in {time.perf_counter() - started:.0f}s)")
    try:
        results = {}
        for mode in ("baseline", "footers", "checked"):
            runs = [json.loads(subprocess.run([sys.executable, __file__, "--child", mode, str(args.folder)], check=True, capture_output=True, text=True).stdout) for _ in range(args.repeat)]
            results[mode] = min(runs, key=lambda r: r["seconds"]) | {"mib": max(r["mib"] for r in runs), "arrow_mib": max(r["arrow_mib"] for r in runs)}
            result = results[mode]
            print(f"{mode:>9}: {result['seconds']:7.2f} s, Arrow peak {result['arrow_mib']:6.0f} MiB, RSS peak +{result['mib']:6.0f} MiB ({result['rows']:,} rows)")
        base, checked, footers = results["baseline"], results["checked"], results["footers"]
        print(
            f"the check pass costs {checked['seconds'] - footers['seconds']:.2f} s = {(checked['seconds'] - footers['seconds']) / base['seconds']:.2f}x one streaming read "
            f"of the input ({(checked['seconds'] - footers['seconds']) / args.records * 1e6:.2f} us per record); Arrow peak {checked['arrow_mib']:.0f} MiB "
            f"against {base['arrow_mib']:.0f} MiB for the read"
        )
    finally:
        shutil.rmtree(args.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
