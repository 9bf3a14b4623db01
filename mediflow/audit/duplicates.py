"""Exact and near-duplicate texts: how much of the set says the same thing.

Exact duplicates are counted over every record (a 64-bit hash per text, streamed). Near
duplicates are a *spot check* on a bounded sample of distinct texts: all pairs of the sample
compared with ``rapidfuzz`` and grouped into clusters (connected components, as the dedup stage
does); the full-scale MinHash dedup is :mod:`mediflow.quality`'s job, not the audit's. Instructions
are reused over several documents by design, so for them the interesting numbers are the
distinct-text count and the near-duplicate clusters among distinct instructions.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from rapidfuzz import fuzz, process

from mediflow.audit.folder import TEXT_COLUMNS, OutputFolder
from mediflow.audit.plots import new_figure
from mediflow.audit.result import CheckResult
from mediflow.quality.components import component_labels

TITLE = "Exact and near-duplicate texts"
#: Clusters listed in the report (largest first).
MAX_CLUSTERS = 30
_SPACE = re.compile(r"\s+")


def near_duplicates(folder: OutputFolder, *, sample_size: int = 600, threshold: float = 90.0) -> CheckResult:
    """Exact-duplicate counts over all records, and near-duplicate clusters among ``sample_size`` distinct texts per field.

    ``threshold`` is rapidfuzz's normalised Indel similarity (``fuzz.ratio``, 0-100) on lower-cased,
    whitespace-collapsed text.
    """
    exact = _exact_duplicates(folder)
    sample = folder.sample(["task_type", *TEXT_COLUMNS], sample_size * 4)
    rows, clusters = [], []
    for field in TEXT_COLUMNS:
        distinct = sample.dropna(subset=[field]).drop_duplicates(subset=[field]).head(sample_size)
        texts = [_SPACE.sub(" ", t.lower()).strip() for t in distinct[field]]
        labels = _cluster(texts, threshold)
        sizes = pd.Series(labels).value_counts()
        multi = sizes[sizes > 1]
        rows.append(
            {
                "field": field,
                "texts_compared": len(texts),
                "near_duplicate_clusters": int(len(multi)),
                "texts_in_clusters": int(multi.sum()),
                "share_in_clusters": float(multi.sum() / len(texts)) if texts else 0.0,
            }
        )
        for label, size in multi.items():
            members = distinct.iloc[np.flatnonzero(labels == label)]
            clusters.append(
                {
                    "field": field,
                    "size": int(size),
                    "tasks": ", ".join(sorted(set(members["task_type"].dropna()))),
                    "example": str(members[field].iloc[0])[:160],
                }
            )
    near = pd.DataFrame(rows)
    cluster_table = pd.DataFrame(clusters, columns=["field", "size", "tasks", "example"])
    cluster_table = cluster_table.sort_values("size", ascending=False, kind="stable").head(MAX_CLUSTERS)
    summary = "exact duplicates: " + ", ".join(
        f"{r.field} {r.duplicate_records}" for r in exact.itertuples()
    ) + "; near-duplicate share in sample: " + ", ".join(f"{r.field} {r.share_in_clusters:.1%}" for r in near.itertuples())
    return CheckResult(
        key="duplicates",
        title=TITLE,
        summary=summary,
        numbers={
            "exact": {r.field: int(r.duplicate_records) for r in exact.itertuples()},
            "near": {r.field: int(r.texts_in_clusters) for r in near.itertuples()},
            "threshold": threshold,
        },
        tables={
            "Exact duplicates (all records)": exact,
            f"Near duplicates (sample, ratio >= {threshold:g})": near,
            "Largest near-duplicate clusters": cluster_table.reset_index(drop=True),
        },
        figure=_plot(exact, near),
    )


def _exact_duplicates(folder: OutputFolder) -> pd.DataFrame:
    """Per field (and per instruction+input pair): records, distinct texts, records repeating an earlier text."""
    fields = {**{f: [f] for f in TEXT_COLUMNS}, "instruction+input": ["instruction", "input"]}
    hashes: dict[str, list[np.ndarray]] = {name: [] for name in fields}
    for batch in folder.iter_batches(list(TEXT_COLUMNS)):
        batch = batch.fillna("")
        for name, columns in fields.items():
            hashes[name].append(pd.util.hash_pandas_object(batch[columns], index=False).to_numpy())
    rows = []
    for name, parts in hashes.items():
        values = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
        distinct = int(len(np.unique(values)))
        rows.append({"field": name, "records": int(len(values)), "distinct": distinct, "duplicate_records": int(len(values) - distinct)})
    return pd.DataFrame(rows)


def _cluster(texts: list[str], threshold: float) -> np.ndarray:
    """A cluster label per text: connected components of the pairs scoring >= ``threshold``."""
    if len(texts) < 2:
        return np.arange(len(texts))
    scores = process.cdist(texts, texts, scorer=fuzz.ratio, score_cutoff=threshold, dtype=np.uint8)
    left, right = np.nonzero(np.triu(scores >= threshold, k=1))
    return component_labels(len(texts), np.stack([left, right], axis=1))


def _plot(exact: pd.DataFrame, near: pd.DataFrame):
    figure = new_figure(11, 3.5)
    left = figure.add_subplot(1, 2, 1)
    left.barh(list(exact["field"]), exact["records"], color="#cccccc", label="records")
    left.barh(list(exact["field"]), exact["distinct"], color="#2b7bba", label="distinct texts")
    left.invert_yaxis()
    left.set_title("exact: records vs distinct texts")
    left.legend(fontsize=7)
    right = figure.add_subplot(1, 2, 2)
    right.barh(list(near["field"]), near["share_in_clusters"] * 100, color="#c0392b")
    right.invert_yaxis()
    right.set_xlabel("% of sampled distinct texts in a near-duplicate cluster")
    right.set_title("near duplicates (sample)")
    return figure
