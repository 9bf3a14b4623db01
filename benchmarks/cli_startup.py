"""How long ``mediflow --help`` takes to start, against a named baseline commit measured in the same run.

The CLI imports every command's config for its flags, so its start-up is what a user pays before any
command (and what ``mediflow X --help`` costs). The baseline is another commit of this repository,
checked out into a temporary git worktree; the runs of both trees alternate, so machine load falls on
both alike. CPU time (user + sys of the child) is the figure to compare on a shared machine: wall time
also counts the wait for a core.

    python benchmarks/cli_startup.py --base e60e824 --runs 9

prints, per tree, the median CPU and wall seconds and the heavy packages ``--help`` loaded, then the ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Packages worth knowing about when they load at start-up (seconds of import, or an SDK).
WATCHED = ("pandas", "pyarrow", "numpy", "jsonschema", "rapidfuzz", "openai", "matplotlib", "torch", "ray", "datasets")
PROBE = "import sys, mediflow.cli; mediflow.cli.build_parser(); print(' '.join(m for m in {watched!r} if m in sys.modules))"


def _run_help(tree: Path) -> tuple[float, float]:
    """One ``python -m mediflow --help`` in ``tree``: (CPU seconds, wall seconds) of the child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mediflow", "--help"], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def _loaded(tree: Path) -> str:
    probe = PROBE.format(watched=WATCHED)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True, capture_output=True, text=True)
    return out.stdout.strip() or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="e60e824", help="the baseline commit (default: e60e824, before issue 21)")
    parser.add_argument("--runs", type=int, default=9, help="runs per tree (default 9)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mediflow-cli-startup-") as scratch:
        base = Path(scratch) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True, capture_output=True)
        try:
            trees = {f"base {args.base}": base, "this tree": ROOT}
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
            for _ in range(args.runs):
                for name, tree in trees.items():
                    times[name].append(_run_help(tree))
            medians = {}
            for name, tree in trees.items():
                cpu = statistics.median(t[0] for t in times[name])
                wall = statistics.median(t[1] for t in times[name])
                medians[name] = cpu
                print(f"{name:<16} cpu {cpu:.2f} s  wall {wall:.2f} s  (median of {args.runs})  loads: {_loaded(tree)}")
            print(f"this tree / base: {medians['this tree'] / medians[f'base {args.base}']:.2f} of the CPU time")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True, capture_output=True)


if __name__ == "__main__":
    main()
