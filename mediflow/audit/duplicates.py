"""Exact and near-duplicate texts: how much of the set says the same thing.

The audit measures duplicates the way the dedup stage removes them, so the two agree: texts are
written in the same canonical words (:func:`mediflow.quality.text.canonical_tokens`: case, whitespace,
punctuation spacing, abbreviations), and near-duplicate clusters come
from :func:`mediflow.quality.dedup.find_duplicates` (MinHash LSH candidates confirmed with
rapidfuzz and, as in the stage, by their clinically distinguishing tokens agreeing, connected
components), here with exact edges off so that a cluster groups *distinct* texts that say nearly
the same thing. Two notes on one template about two patients (another age, side, dose, value) are
not reported as duplicates; the table counts them as "siblings kept apart". Instructions are reused over several documents by design,
so their exact repeats are expected; near-duplicate instructions are not.

Exact duplicates are counted over every record (a 64-bit hash per text, streamed); the near
check runs on an evenly spaced sample of at most ``max_records`` records, since it holds its
texts in memory.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from mediflow.audit.folder import TEXT_COLUMNS, AuditFolder
from mediflow.audit.plots import new_figure
from mediflow.audit.result import CheckResult
from mediflow.quality.clinical import Lexicon
from mediflow.quality.config import DedupConfig, DedupKey
from mediflow.quality.dedup import find_duplicates, key_text
from mediflow.quality.text import CanonicalForms, canonical_tokens

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "Exact and near-duplicate texts"
#: What the dedup stage compares: the instruction, the document, and the two together.
NEAR_KEYS: tuple[DedupKey, ...] = ("instruction", "input", "pair")
#: Clusters listed in the report (largest first).
MAX_CLUSTERS = 30


def near_duplicates(folder: AuditFolder, *, max_records: int = 50_000, config: DedupConfig | None = None) -> CheckResult:
    """Exact-duplicate counts over all records, and near-duplicate clusters on a sample of ``max_records``.

    ``config`` is the dedup stage's (threshold, scorer, scope, MinHash settings); its default by default.
    """
    base = config or DedupConfig()
    exact = _exact_duplicates(folder, Lexicon.load(base.clinical_tokens).forms)
    table = _sample_table(folder, max_records)
    rows, clusters = [], []
    for key in NEAR_KEYS:
        result = find_duplicates(table, dataclasses.replace(base, keys=(key,), exact=False, near=True))
        in_cluster = result.cluster_size > 1
        distinct = int(result.details[key].get("signed_texts", table.num_rows))
        rows.append(
            {
                "key": key,
                "distinct_texts_compared": distinct,
                "near_duplicate_clusters": int(len(np.unique(result.keeper[in_cluster]))),
                "texts_in_clusters": int(in_cluster.sum()),
                "share_in_clusters": float(in_cluster.sum() / distinct) if distinct else 0.0,
                "siblings_kept_apart": int(result.details[key].get("clinical_conflicts", 0)),
            }
        )
        clusters += _clusters(table, key, result.keeper, in_cluster)
    near = pd.DataFrame(rows)
    cluster_table = pd.DataFrame(clusters, columns=["key", "size", "tasks", "example"])
    cluster_table = cluster_table.sort_values("size", ascending=False, kind="stable").head(MAX_CLUSTERS).reset_index(drop=True)
    summary = (
        "exact duplicates: " + ", ".join(f"{r.field} {r.duplicate_records}" for r in exact.itertuples()) + f"; near-duplicate share (sample of {table.num_rows}): " + ", ".join(f"{r.key} {r.share_in_clusters:.1%}" for r in near.itertuples())
    )
    return CheckResult(
        key="duplicates",
        title=TITLE,
        summary=summary,
        numbers={
            "exact": {str(k): int(v) for k, v in zip(exact["field"], exact["duplicate_records"])},
            "near": {str(k): int(v) for k, v in zip(near["key"], near["texts_in_clusters"])},
            "sampled": table.num_rows,
            "threshold": base.threshold,
            "scorer": base.scorer,
            "clinical": base.clinical,
            "siblings_kept_apart": {str(k): int(v) for k, v in zip(near["key"], near["siblings_kept_apart"])},
        },
        tables={
            "Exact duplicates (all records, normalised text)": exact,
            f"Near duplicates among distinct texts ({base.scorer} >= {base.threshold:g}{', clinical tokens agree' if base.clinical else ''}, {base.scope})": near,
            "Largest near-duplicate clusters": cluster_table,
        },
        figure=_plot(exact, near),
    )


def _exact_duplicates(folder: AuditFolder, forms: CanonicalForms) -> pd.DataFrame:
    """Per field (and the instruction + input pair): records, distinct normalised texts, repeats (as the dedup stage hashes them)."""
    fields = (*TEXT_COLUMNS, "pair")
    hashes: dict[str, list[np.ndarray]] = {name: [] for name in fields}
    for table in folder.iter_tables(list(TEXT_COLUMNS)):
        for name in fields:
            hashes[name].append(canonical_tokens(key_text(table, name), forms).record_hashes())
    rows = []
    for name, parts in hashes.items():
        values = np.concatenate(parts) if parts else np.empty(0, np.uint64)
        distinct = int(len(np.unique(values)))
        rows.append({"field": name, "records": int(len(values)), "distinct": distinct, "duplicate_records": int(len(values) - distinct)})
    return pd.DataFrame(rows)


def _sample_table(folder: AuditFolder, max_records: int) -> pa.Table:
    """The sample as the Arrow table ``find_duplicates`` reads (ids positional when records lack one)."""
    sample = folder.sample(["id", "task_type", "instruction", "input", "quality"], max_records)
    ids = [value if isinstance(value, str) else f"row-{index}" for index, value in enumerate(sample["id"])]
    columns = {"id": pa.array(ids, pa.string())}
    for name in ("task_type", "instruction", "input"):
        columns[name] = pa.array([v if isinstance(v, str) else None for v in sample[name]], pa.string())
    columns["quality"] = pa.array(pd.to_numeric(sample["quality"], errors="coerce"), pa.float64(), from_pandas=True)
    return pa.table(columns)


def _clusters(table: pa.Table, key: str, keeper: np.ndarray, in_cluster: np.ndarray) -> list[dict[str, object]]:
    tasks = table.column("task_type").to_pylist()
    texts = key_text(table, key).to_pylist()
    groups: dict[int, list[int]] = {}
    for index in np.flatnonzero(in_cluster).tolist():
        groups.setdefault(int(keeper[index]), []).append(index)
    return [
        {
            "key": key,
            "size": len(members),
            "tasks": ", ".join(sorted({tasks[i] for i in members if tasks[i]})),
            "example": (texts[kept] or "")[:160],
        }
        for kept, members in groups.items()
    ]


def _plot(exact: pd.DataFrame, near: pd.DataFrame) -> Figure:
    figure = new_figure(11, 3.5)
    left = figure.add_subplot(1, 2, 1)
    left.barh(list(exact["field"]), exact["records"], color="#cccccc", label="records")
    left.barh(list(exact["field"]), exact["distinct"], color="#2b7bba", label="distinct texts")
    left.invert_yaxis()
    left.set_title("exact: records vs distinct normalised texts")
    left.legend(fontsize=7)
    right = figure.add_subplot(1, 2, 2)
    right.barh(list(near["key"]), near["share_in_clusters"] * 100, color="#c0392b")
    right.invert_yaxis()
    right.set_xlabel("% of distinct texts in a near-duplicate cluster")
    right.set_title("near duplicates (sample)")
    return figure
