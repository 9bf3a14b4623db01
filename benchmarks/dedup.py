"""Near-dedup benchmark: precision, recall and distinct records lost on templated clinical notes, at 100k / 1M / 2.5M.

The set (``benchmarks/dedup_set.py``) has eight note types, same-template siblings at graded
overlap down to differing in one age, sex, side, dose, negation, value, drug, organ, code or
finding, and planted copies of six kinds (typos, whitespace/case, reordered sentences, synonyms and
abbreviations, a few words changed, mixed), with ground truth.

For each size a child process generates the set (kept under ``--data`` and reused), and a fresh
child runs the whole ``dedup`` stage on it (read Parquet, cluster, write kept + rejects): its wall
time, its peak RSS, pairwise precision and recall of its clusters against the true ones, distinct
records lost (true clusters with no record kept), and per kind: copies found, siblings merged and
lost. ``--curve`` measures, on one size, every confirmation measure (rapidfuzz scorers, exact
shingle Jaccard, each with and without the clinical-token check) over a range of thresholds on
the same LSH candidates. A naive all-pairs rapidfuzz baseline (``cdist`` + components) runs on
small sizes, each in its own child.

    flock /tmp/mediflow-heavy.lock python benchmarks/dedup.py --sizes 100000 1000000 2500000 --baseline 1000 2000
    flock /tmp/mediflow-heavy.lock python benchmarks/dedup.py --sizes --baseline --curve 100000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dedup_noise import NOISES
from dedup_set import COPY_KINDS, KINDS, synthetic


def pair_scores(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Pairwise precision and recall of predicted clusters against true ones."""

    def pairs(sizes: np.ndarray) -> int:
        return int((sizes * (sizes - 1) // 2).sum())

    _, truth_sizes = np.unique(truth, return_counts=True)
    _, predicted_sizes = np.unique(predicted, return_counts=True)
    joint = truth.astype(np.int64) * (int(predicted.max()) + 1) + predicted
    _, joint_sizes = np.unique(joint, return_counts=True)
    together, planted, found = pairs(joint_sizes), pairs(truth_sizes), pairs(predicted_sizes)
    return (together / found if found else 1.0), (together / planted if planted else 1.0)


def scores(truth: np.ndarray, kinds: np.ndarray, keeper: np.ndarray) -> dict:
    """Overall and per-kind figures for one clustering (``keeper[i]``: the record kept for ``i``'s cluster)."""
    precision, recall = pair_scores(truth, keeper)
    kept = keeper == np.arange(len(keeper))
    true_clusters = len(np.unique(truth))
    clusters_kept = len(np.unique(truth[kept]))
    is_copy = np.isin(kinds, [KINDS.index(k) for k in COPY_KINDS])
    original = np.empty(int(truth.max()) + 1, np.int64)
    original[truth[~is_copy]] = np.flatnonzero(~is_copy)
    # an original is merged when its predicted cluster holds another true cluster's original
    originals = np.flatnonzero(~is_copy)
    _, cluster_of, originals_per_cluster = np.unique(keeper[originals], return_inverse=True, return_counts=True)
    merged = np.zeros(len(keeper), bool)
    merged[originals] = originals_per_cluster[cluster_of] > 1
    lost_cluster = np.ones(int(truth.max()) + 1, bool)
    lost_cluster[truth[kept]] = False
    # a copy is merged with another case when its predicted cluster holds another true cluster's original
    foreign = np.zeros(len(keeper), bool)
    copies = np.flatnonzero(is_copy)
    order = np.lexsort((truth[originals], keeper[originals]))
    clusters_of_keeper = {}
    for kept_at, true_cluster in zip(keeper[originals][order].tolist(), truth[originals][order].tolist()):
        clusters_of_keeper.setdefault(kept_at, set()).add(true_cluster)
    for member in copies.tolist():
        foreign[member] = bool(clusters_of_keeper.get(int(keeper[member]), set()) - {int(truth[member])})
    per_kind = {}
    for index, kind in enumerate(KINDS):
        members = np.flatnonzero(kinds == index)
        if not len(members):
            continue
        if kind in COPY_KINDS:
            found = keeper[members] == keeper[original[truth[members]]]
            per_kind[kind] = {"records": len(members), "found": round(float(found.mean()), 4), "missed": int((~found).sum()), "merged": int(foreign[members].sum())}
        else:
            per_kind[kind] = {"records": len(members), "merged": int(merged[members].sum()), "lost": int(lost_cluster[truth[members]].sum())}
    return {"precision": round(precision, 4), "recall": round(recall, 4), "distinct_lost": true_clusters - clusters_kept, "distinct_lost_share": round((true_clusters - clusters_kept) / true_clusters, 5), "per_kind": per_kind}


def _peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)


class _TreeMemory(threading.Thread):
    """The peak memory of this process and every process it forked (the stage's workers), sampled every 0.2 s.

    ``ru_maxrss`` sees one process; a forked worker's RSS also counts the pages it shares with its
    parent. PSS counts a shared page once, split between its sharers, so the sum of PSS over the
    process tree is the memory the stage takes from the machine.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.2):
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(pid) for pid in _tree(os.getpid())))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return round(self.peak_kb / 1024**2, 2)


def _tree(pid: int) -> list[int]:
    found = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [grandchild for child in children.read_text().split() for grandchild in _tree(int(child))]
        except OSError:
            continue
    return found


def _pss_kb(pid: int) -> int:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0  # it ended between the two reads
    return next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)


def _id_numbers(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``r00001234`` -> 1234 (the set's ids number the records before shuffling)."""
    return pc.cast(pc.utf8_slice_codeunits(ids, 1), pa.int64()).to_numpy()


def generate_child(data: Path, size: int, duplicate_share: float, seed: int, noise: str) -> None:
    """In a fresh process (so its memory is given back): write the records, their true clusters and kinds."""
    start = time.perf_counter()
    stats: dict[str, int] = {}
    table, clusters, kinds = synthetic(size, duplicate_share, seed, noise=noise, stats=stats)
    pq.write_table(table, data / "records.parquet")
    np.save(data / "clusters.npy", clusters)
    np.save(data / "kinds.npy", kinds)
    (data / "complete").write_text(json.dumps({"seconds": round(time.perf_counter() - start), **stats}) + "\n")


def measure_child(data: Path, config_json: str) -> None:
    """In a fresh process: run the dedup stage on the Parquet, then score its clusters against the true ones."""
    from mediflow.quality.config import DedupConfig
    from mediflow.quality.dedup_stage import run_dedup

    out = data / "dedup-out"
    memory = _TreeMemory() if Path("/proc/self/smaps_rollup").exists() else None
    if memory:
        memory.start()
    start = time.perf_counter()
    report = run_dedup(data / "records.parquet", out, DedupConfig(**json.loads(config_json)), overwrite=True)  # its own scratch folder
    total_s = time.perf_counter() - start
    peak = _peak_rss_gb()  # before scoring, which is not part of the stage
    tree_peak = memory.stop() if memory else None
    rejects = pq.read_table(out / "rejects.parquet", columns=["id", "match"])
    ids = pq.read_table(data / "records.parquet", columns=["id"]).column("id")
    row_of = np.empty(len(ids), np.int64)
    row_of[_id_numbers(ids)] = np.arange(len(ids))
    keeper = np.arange(len(ids))
    keeper[row_of[_id_numbers(rejects.column("id"))]] = row_of[_id_numbers(rejects.column("match"))]
    figures = scores(np.load(data / "clusters.npy"), np.load(data / "kinds.npy"), keeper)
    print(json.dumps({"records": len(ids), "total_s": round(total_s, 1), "peak_rss_gb": peak, "peak_pss_with_workers_gb": tree_peak, "dropped": report.dropped, **figures, **{k: v for k, v in report.details.items() if isinstance(v, dict)}}))


def curve_child(data: Path, config_json: str, thresholds: list[float]) -> None:
    """Every confirmation measure over ``thresholds`` on one set of LSH candidates (the stage's own)."""
    from rapidfuzz import fuzz, process

    from mediflow.quality.clinical import Lexicon, same_cases
    from mediflow.quality.components import component_labels
    from mediflow.quality.config import DedupConfig
    from mediflow.quality.dedup import concatenate_fields, key_candidates, key_text, scope_salt
    from mediflow.quality.text import canonical_tokens

    config = DedupConfig(**json.loads(config_json))
    lexicon = Lexicon.load(config.clinical_tokens)
    table = pq.read_table(data / "records.parquet")
    truth, kinds = np.load(data / "clusters.npy"), np.load(data / "kinds.npy")
    id_number = _id_numbers(table.column("id"))
    start = time.perf_counter()
    # the candidates without the clinical check's value salt: a superset, so "clinical: no" rows are text similarity alone
    found = key_candidates(table, "pair", scope_salt(table, config), dataclasses.replace(config, clinical=False))
    pairs = found.pairs
    members = np.flatnonzero(found.representative != np.arange(len(truth)))
    exact_edges = np.stack([found.representative[members], members], axis=1)
    rows, local = np.unique(pairs, return_inverse=True)
    local = local.reshape(pairs.shape)
    fields = {name: canonical_tokens(key_text(table.select([name]).take(pa.array(rows)), name), lexicon.forms) for name in ("instruction", "input")}
    texts = {}
    for name, canonical in fields.items():
        written = canonical.texts().to_pylist()
        texts[name] = [[written[row] for row in local[:, side].tolist()] for side in (0, 1)]
    measures: dict[str, np.ndarray] = {}
    for scorer in ("token_sort_ratio", "ratio", "token_set_ratio"):
        measures[scorer] = np.minimum(*(process.cpdist(*texts[f], scorer=getattr(fuzz, scorer), workers=-1) / 100 for f in texts))
    measures["shingle_jaccard"] = np.minimum(*(np.fromiter((_jaccard(a, b) for a, b in zip(*texts[f])), float, len(pairs)) for f in texts))
    agree = same_cases(concatenate_fields(fields["instruction"], fields["input"]), local, lexicon, lenient_values=config.values == "lenient")
    print(json.dumps({"records": len(truth), "candidates": len(pairs), "clinical_disagree": int((~agree).sum()), "prepare_s": round(time.perf_counter() - start, 1)}), flush=True)
    rows = []
    for name, similarity in measures.items():
        for clinical in (False, True):
            for threshold in thresholds:
                keep = (similarity >= threshold) & (agree | (not clinical))
                labels = component_labels(len(truth), np.concatenate([exact_edges, pairs[keep]]))
                keeper = _smallest_id_keeper(labels, id_number)
                figures = scores(truth, kinds, keeper)
                rows.append({"measure": name, "clinical": clinical, "threshold": threshold, **{k: figures[k] for k in ("precision", "recall", "distinct_lost")}})
    print(json.dumps({"curve": rows}))


def _jaccard(a: str, b: str, n: int = 3) -> float:
    """Exact word ``n``-gram Jaccard of two normalised texts."""

    def grams(text: str) -> set[tuple[str, ...]]:
        words = text.split()
        return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}

    left, right = grams(a), grams(b)
    return len(left & right) / len(left | right) if left or right else 1.0


def _smallest_id_keeper(labels: np.ndarray, id_number: np.ndarray) -> np.ndarray:
    order = np.lexsort((id_number, labels))
    first = np.concatenate([[True], labels[order][1:] != labels[order][:-1]])
    keeper_of_label = np.empty(len(labels), np.int64)
    keeper_of_label[labels[order][first]] = order[first]
    return keeper_of_label[labels]


def baseline_child(size: int, threshold: float, seed: int, noise: str) -> None:
    """All-pairs rapidfuzz (``cdist`` on all cores) + components: no LSH, no clinical check, quadratic."""
    from rapidfuzz import fuzz, process

    from mediflow.quality.components import component_labels
    from mediflow.quality.dedup import key_text
    from mediflow.quality.text import normalize_column

    table, truth, kinds = synthetic(size, 0.1, seed, noise=noise)
    start = time.perf_counter()
    texts = normalize_column(key_text(table, "pair")).to_pylist()
    matrix = process.cdist(texts, texts, scorer=fuzz.token_sort_ratio, score_cutoff=threshold * 100, dtype=np.uint8, workers=-1)
    left, right = np.nonzero(np.triu(matrix, 1))
    labels = component_labels(size, np.stack([left, right], axis=1))
    elapsed = time.perf_counter() - start
    figures = scores(truth, kinds, _smallest_id_keeper(labels, _id_numbers(table.column("id"))))
    print(json.dumps({"records": size, "total_s": round(elapsed, 1), "peak_rss_gb": _peak_rss_gb(), **figures}))


def datatrove_row(folder: Path, python: str) -> dict:
    """datatrove's MinHash (``benchmarks/dedup_datatrove.py`` under ``python``, a venv with datatrove) scored like the stage."""
    with tempfile.TemporaryDirectory(prefix="mediflow-datatrove-") as work:
        wrapper = (
            "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stderr.write(done.stderr[-3000:] if done.returncode else ''); print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else '{}'); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)"
        )
        child = subprocess.run([python, "-c", wrapper, python, str(Path(__file__).with_name("dedup_datatrove.py")), str(folder / "records.parquet"), work], capture_output=True, text=True, check=False)
        if child.returncode:
            raise SystemExit(f"datatrove failed: {child.stderr}")
        timing, peak_kb = child.stdout.strip().splitlines()[-2:]
        found = pq.read_table(Path(work) / "clusters.parquet")
    ids = pq.read_table(folder / "records.parquet", columns=["id"]).column("id")
    row_of = np.empty(len(ids), np.int64)
    row_of[_id_numbers(ids)] = np.arange(len(ids))
    rows = row_of[_id_numbers(found.column("id"))]
    cluster, kept = found.column("cluster").to_numpy(), found.column("kept").to_numpy(zero_copy_only=False)
    keeper = np.arange(len(ids))
    kept_of_cluster = dict(zip(cluster[kept & (cluster >= 0)].tolist(), rows[kept & (cluster >= 0)].tolist()))
    for row, label, is_kept in zip(rows.tolist(), cluster.tolist(), kept.tolist()):
        if not is_kept:
            keeper[row] = kept_of_cluster.get(label, row)
    figures = scores(np.load(folder / "clusters.npy"), np.load(folder / "kinds.npy"), keeper)
    return {"records": len(ids), "total_s": json.loads(timing)["datatrove_s"], "peak_rss_gb": round(int(peak_kb) / 1024**2, 2), "dropped": int((keeper != np.arange(len(ids))).sum()), **figures}


def _child(*args: str, release: Path | None = None) -> dict:
    """Run this script's ``--child`` in a fresh process; ``release``: a checkout of another mediflow it imports instead."""
    env = {**os.environ, "PYTHONPATH": str(release)} if release else None
    child = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False, env=env)
    if child.returncode:
        print(child.stderr, file=sys.stderr)
        raise SystemExit(child.returncode)
    return json.loads(child.stdout.strip().splitlines()[-1]) if child.stdout.strip() else {}


def _dataset(args: argparse.Namespace, size: int) -> Path:
    folder = args.data / f"n{size}-dup{args.duplicate_share}-seed{args.seed}-{args.noise}"
    if not (folder / "complete").exists():
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        _child("--child", "generate", "--folder", str(folder), "--size", str(size), "--duplicate-share", str(args.duplicate_share), "--seed", str(args.seed), "--noise", args.noise)
        print(f"generated {size} records in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def _print_kinds(row: dict) -> None:
    print("| kind | records | copies found (missed) / siblings merged with another case | copies merged with another case / distinct records lost |\n|---|---:|---:|---:|")
    for kind, figures in row["per_kind"].items():
        if "found" in figures:
            print(f"| copy: {kind} | {figures['records']:,} | {figures['found']:.4f} ({figures['missed']}) | {figures['merged']} |")
        else:
            print(f"| {'original' if kind == 'fresh' else 'sibling: ' + kind} | {figures['records']:,} | {figures['merged']} | {figures['lost']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000], help="record counts for mediflow's dedup stage")
    parser.add_argument("--baseline", type=int, nargs="*", default=[1_000, 2_000], help="record counts for the all-pairs baseline")
    parser.add_argument("--curve", type=int, help="a record count: measure every confirmation measure over thresholds")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98])
    parser.add_argument("--duplicate-share", type=float, default=0.1, help="share of records that are planted copies")
    parser.add_argument("--seed", type=int, default=7, help="the set's seed (7: the development split; the held-out split is another)")
    parser.add_argument("--noise", choices=["ours", *NOISES], default="ours", help="who makes the planted copies (benchmarks/dedup_noise.py)")
    parser.add_argument("--previous", type=Path, help="a checkout of the previous release, measured on the same sets in the same run")
    parser.add_argument("--datatrove", metavar="PYTHON", help="an interpreter with datatrove installed: its MinHash dedup on the same sets")
    parser.add_argument("--config", default="{}", help="DedupConfig overrides as JSON, e.g. '{\"threshold\": 0.85}'")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "mediflow-dedup-bench-noise", help="where generated record sets are kept (and reused) between runs")
    parser.add_argument("--child", choices=["generate", "measure", "baseline", "curve"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = {"scope": "across_tasks", **json.loads(args.config)}
    if args.child == "generate":
        return generate_child(args.folder, args.size, args.duplicate_share, args.seed, args.noise)
    if args.child == "measure":
        return measure_child(args.folder, json.dumps(config))
    if args.child == "curve":
        return curve_child(args.folder, json.dumps(config), args.thresholds)
    if args.child == "baseline":
        return baseline_child(args.size, config.get("threshold", _default_threshold()), args.seed, args.noise)

    rows = []
    for size in args.baseline:
        row = _child("--child", "baseline", "--size", str(size), "--seed", str(args.seed), "--noise", args.noise, "--config", json.dumps(config))
        print("baseline all-pairs rapidfuzz", json.dumps({k: v for k, v in row.items() if k != "per_kind"}), flush=True)
        rows.append(("all-pairs rapidfuzz (no clinical check)", row))
    for size in args.sizes:
        folder = _dataset(args, size)
        releases = [("previous release", args.previous)] if args.previous else []
        for label, release in [*releases, ("this tree", None)]:
            row = _child("--child", "measure", "--folder", str(folder), "--config", json.dumps(config), release=release)
            print(f"mediflow dedup ({label}, noise {args.noise}, seed {args.seed})", json.dumps(row), flush=True)
            _print_kinds(row)
            rows.append((f"mediflow dedup stage ({label})", row))
        if args.datatrove:
            row = datatrove_row(folder, args.datatrove)
            print(f"datatrove MinHash (noise {args.noise}, seed {args.seed})", json.dumps(row), flush=True)
            _print_kinds(row)
            rows.append(("datatrove MinHash (defaults)", row))
    if rows:
        print("\n| method | records | wall time (s) | peak RSS (GB) | peak PSS with its workers (GB) | precision | recall | distinct records lost |\n|---|---:|---:|---:|---:|---:|---:|---:|")
        for method, row in rows:
            print(
                f"| {method} | {row['records']:,} | {row['total_s']} | {row['peak_rss_gb']} | {row.get('peak_pss_with_workers_gb') or ''} | {row['precision']} | {row['recall']} | {row['distinct_lost']} ({row['distinct_lost_share']:.3%}) |"
            )
    if args.curve:
        result = (
            subprocess.run([sys.executable, __file__, "--child", "curve", "--folder", str(_dataset(args, args.curve)), "--config", json.dumps(config), "--thresholds", *map(str, args.thresholds)], capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()
        )
        print(result[0])
        print("\n| measure | clinical check | threshold | precision | recall | distinct records lost |\n|---|---|---:|---:|---:|---:|")
        for row in json.loads(result[-1])["curve"]:
            print(f"| {row['measure']} | {'yes' if row['clinical'] else 'no'} | {row['threshold']} | {row['precision']} | {row['recall']} | {row['distinct_lost']} |")


def _default_threshold() -> float:
    from mediflow.quality.config import DedupConfig

    return DedupConfig().threshold


if __name__ == "__main__":
    main()
