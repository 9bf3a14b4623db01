"""Plan bookkeeping at 2.5M items: the lazy plan against the same plan materialised, in one run.

The lazy plan (:mod:`mediflow.pipeline.plan`) keeps only the per-cell counts and enumerates items as
a stream. This script takes the plan of the full taxonomy at the ``per_cell`` that gives about
``--items`` items and measures, each in a fresh child process, the wall time and the peak memory
(``ru_maxrss``) above what the child held once the taxonomy was loaded:

- ``build``: building the plan (what ``generate`` holds for the whole run),
- ``stream``: enumerating every item and dropping it (what the plan costs while a run streams it),
- ``prefix``: ``max_records=10`` on the same plan (what a tiny prefix of a huge plan costs),
- ``baseline``: the same items kept in a list (what a materialised plan holds).

    flock /tmp/mediflow-heavy.lock python benchmarks/plan.py --items 2500000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time


def _child(mode: str, per_cell: int, chunk: int) -> None:
    from mediflow.config import load_config
    from mediflow.pipeline.plan import build_plan
    from mediflow.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    config = load_config({"per_cell": per_cell, "documents_per_instruction": chunk})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if mode == "build":
        count = len(build_plan(config, taxonomy))
    elif mode == "stream":
        count = sum(1 for _ in build_plan(config, taxonomy).items())
    elif mode == "prefix":
        count = len(list(build_plan(dataclasses.replace(config, max_records=10), taxonomy).items()))
    else:
        kept = list(build_plan(config, taxonomy).items())
        count = len(kept)
    seconds = time.perf_counter() - started
    extra_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"items": count, "seconds": seconds, "mib": extra_kib / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2_500_000, help="about how many plan items")
    parser.add_argument("--documents-per-instruction", type=int, default=4)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), int(args.child[2]))
        return

    from mediflow.config import load_config
    from mediflow.pipeline.plan import build_plan
    from mediflow.taxonomy import load_taxonomy

    per_item = len(build_plan(load_config({"per_cell": 1000}), load_taxonomy())) / 1000
    per_cell = max(1, round(args.items / per_item))
    results = {}
    for mode in ("build", "stream", "prefix", "baseline"):
        command = [sys.executable, __file__, "--child", mode, str(per_cell), str(args.documents_per_instruction)]
        results[mode] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        r = results[mode]
        print(f"{mode:9s} {r['seconds']:8.2f} s  +{r['mib']:8.1f} MiB peak  ({r['items']:,} items)", flush=True)
    print(f"per_cell={per_cell}, documents_per_instruction={args.documents_per_instruction}")
    stream, baseline = results["stream"], results["baseline"]
    print(
        f"the lazy plan streams {stream['items']:,} items with +{stream['mib']:.1f} MiB against +{baseline['mib']:.1f} MiB "
        f"for the materialised list ({stream['mib'] / max(baseline['mib'], 0.1):.3f}x); max_records=10 takes "
        f"{results['prefix']['seconds']:.2f} s"
    )


if __name__ == "__main__":
    main()
