"""Text diversity per task: distinct n-grams, compression ratio, near-duplicates within cells, stock openings.

Measured on an evenly spaced sample of records, per task, over the generated documents and the
outputs:

- distinct-1/2/3: distinct word n-grams over all n-grams (higher is more varied; the usual
  "distinct-n" of text-generation papers);
- compression ratio: raw bytes over zlib-compressed bytes of the texts joined (lower is more
  varied: repeated phrasing compresses well);
- near-duplicate rate within cells: the share of documents with another document of the same
  (task, document type) cell at rapidfuzz ``ratio`` >= :data:`NEAR_DUPLICATE` (the same
  case written twice with light edits);
- the most repeated instruction opening of the task and its share.
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from rapidfuzz import fuzz, process

from mediflow.audit.folder import AuditFolder
from mediflow.audit.plots import bounded, new_figure
from mediflow.audit.result import CheckResult
from mediflow.audit.text import instruction_opening, readable_output, words

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "Text diversity per task"
#: rapidfuzz ratio (0-100, normalised Indel similarity) at which two documents of one cell count as near-duplicates.
NEAR_DUPLICATE = 90.0
#: Documents compared per cell (all pairs), so a huge cell stays cheap.
CELL_SAMPLE = 200


def text_diversity(folder: AuditFolder, *, sample_size: int = 20_000) -> CheckResult:
    """Per task: distinct-1/2/3 and compression ratio of documents and outputs, near-duplicate rate within cells, top opening."""
    sample = folder.sample(["task_type", "input_data", "instruction", "input", "output", "output_format"], sample_size)
    if sample.empty:
        return CheckResult.not_available("diversity", TITLE, "no records")
    rows = []
    for task, records in sample.groupby("task_type", sort=True):
        documents = [text for text in records["input"].fillna("") if text]
        outputs = [readable_output(o, f) for o, f in zip(records["output"], records["output_format"])]
        openings = Counter(filter(None, (instruction_opening(text) for text in records["instruction"].fillna(""))))
        top_opening, top_count = openings.most_common(1)[0] if openings else ("", 0)
        row = {"task_type": task, "records": len(records)}
        for name, texts in (("document", documents), ("output", outputs)):
            distinct = _distinct_ngrams(texts)
            row.update({f"{name}_distinct_{n}": value for n, value in distinct.items()})
            row[f"{name}_compression"] = _compression_ratio(texts)
        row["near_duplicate_rate"] = _near_duplicate_rate(records)
        row["top_opening"] = top_opening
        row["top_opening_share"] = top_count / len(records)
        rows.append(row)
    table = pd.DataFrame(rows)
    weights = table["records"] / table["records"].sum()
    mean = {column: float((table[column] * weights).sum()) for column in ("document_distinct_3", "output_distinct_3", "document_compression", "near_duplicate_rate")}
    summary = (
        f"sample of {len(sample)} records: document distinct-3 {mean['document_distinct_3']:.2f}, output distinct-3 "
        f"{mean['output_distinct_3']:.2f}, document compression x{mean['document_compression']:.2f}, "
        f"{mean['near_duplicate_rate']:.1%} near-duplicate documents within cells"
    )
    return CheckResult(
        key="diversity",
        title=TITLE,
        summary=summary,
        numbers={"sampled": len(sample), **mean, "per_task": table.set_index("task_type").to_dict(orient="index")},
        tables={"Diversity per task": table.round(3)},
        figure=_plot(table),
    )


def _distinct_ngrams(texts: list[str]) -> dict[int, float]:
    """Distinct n-grams over all n-grams, n = 1, 2, 3, over ``texts`` (n-grams do not cross texts)."""
    result = {}
    tokenised = [words(text) for text in texts]
    for n in (1, 2, 3):
        grams = [tuple(tokens[i : i + n]) for tokens in tokenised for i in range(len(tokens) - n + 1)]
        result[n] = len(set(grams)) / len(grams) if grams else 0.0
    return result


def _compression_ratio(texts: list[str]) -> float:
    raw = "\n".join(texts).encode("utf-8")
    return len(raw) / len(zlib.compress(raw, 9)) if raw else 0.0


def _near_duplicate_rate(records: pd.DataFrame) -> float:
    """Share of documents with a near-duplicate in their own cell (all pairs of up to :data:`CELL_SAMPLE` a cell)."""
    cells: dict[str, list[str]] = defaultdict(list)
    for document_type, text in zip(records["input_data"], records["input"].fillna("")):
        if text and len(cells[document_type]) < CELL_SAMPLE:
            cells[document_type].append(text)
    flagged = total = 0
    for texts in cells.values():
        total += len(texts)
        if len(texts) < 2:
            continue
        scores = process.cdist(texts, texts, scorer=fuzz.ratio, score_cutoff=NEAR_DUPLICATE, workers=1)
        np.fill_diagonal(scores, 0)
        flagged += int((scores.max(axis=1) >= NEAR_DUPLICATE).sum())
    return flagged / total if total else 0.0


def _plot(table: pd.DataFrame) -> Figure:
    figure = new_figure(13, bounded(0.3 * len(table) + 2, 3, 10))
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    positions = np.arange(len(table))
    for offset, n, color in ((-0.25, 1, "#9ecae1"), (0, 2, "#4292c6"), (0.25, 3, "#08519c")):
        left.barh(positions + offset, table[f"document_distinct_{n}"], height=0.25, color=color, label=f"distinct-{n}")
    left.set_yticks(positions, list(table["task_type"]), fontsize=7)
    left.invert_yaxis()
    left.set_title("documents: distinct n-grams / n-grams")
    left.legend(fontsize=7)
    right.barh(positions - 0.2, table["document_compression"], height=0.4, color="#2b7bba", label="documents")
    right.barh(positions + 0.2, table["output_compression"], height=0.4, color="#d95f02", label="outputs")
    right.set_yticks(positions, list(table["task_type"]), fontsize=7)
    right.invert_yaxis()
    right.set_title("compression ratio (lower: more varied)")
    right.legend(fontsize=7)
    return figure
