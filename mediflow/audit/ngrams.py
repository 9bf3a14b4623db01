"""Most frequent instruction openings and output n-grams: the teacher's stock phrases.

A teacher falls into templates ("You are a clinical coder. Assign ..."); a handful of openings
covering most instructions, or one n-gram in every output ("based on the provided"), tells the
data lead the set is less diverse than its size suggests.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import pandas as pd

from mediflow.audit.folder import AuditFolder
from mediflow.audit.plots import new_figure
from mediflow.audit.result import CheckResult
from mediflow.audit.text import instruction_opening, readable_output, words

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "Frequent instruction openings and output n-grams"


def ngrams(folder: AuditFolder, *, sample_size: int = 20_000, opening_words: int = 4, n: int = 3, top: int = 20) -> CheckResult:
    """Top ``top`` instruction openings (first ``opening_words`` words) and output ``n``-grams, on a sample."""
    sample = folder.sample(["task_type", "instruction", "output", "output_format"], sample_size)
    openings: Counter[str] = Counter()
    per_task: dict[str, Counter[str]] = {}
    output_grams: Counter[str] = Counter()
    outputs_with: Counter[str] = Counter()  # in how many outputs each n-gram occurs
    for record in sample.to_dict("records"):
        opening = instruction_opening(record["instruction"] or "", opening_words)
        if opening:
            openings[opening] += 1
            per_task.setdefault(record["task_type"], Counter())[opening] += 1
        tokens = words(readable_output(record["output"], record["output_format"]))
        grams = [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        output_grams.update(grams)
        outputs_with.update(set(grams))
    size = len(sample)
    opening_table = _top(openings, top, "opening", size, "share_of_records")
    gram_table = _top(output_grams, top, f"{n}-gram", size, "occurrences_per_record")
    gram_table["share_of_outputs"] = [outputs_with[g] / size if size else 0.0 for g in gram_table[f"{n}-gram"]]
    task_table = pd.DataFrame(
        [
            {
                "task_type": task,
                "records": sum(counts.values()),
                "distinct_openings": len(counts),
                "top_opening": counts.most_common(1)[0][0],
                "top_opening_share": counts.most_common(1)[0][1] / sum(counts.values()),
            }
            for task, counts in sorted(per_task.items())
        ]
    )
    top_share = opening_table["share_of_records"].iloc[0] if len(opening_table) else 0.0
    summary = f"sample of {size} records: {len(openings)} distinct {opening_words}-word openings"
    if len(opening_table):
        summary += f", the most frequent ('{opening_table['opening'].iloc[0]}') starts {top_share:.1%} of instructions"
    return CheckResult(
        key="ngrams",
        title=TITLE,
        summary=summary,
        numbers={
            "sampled": size,
            "distinct_openings": len(openings),
            "top_openings": dict(openings.most_common(top)),
            "top_output_ngrams": dict(output_grams.most_common(top)),
        },
        tables={
            "Instruction openings": opening_table,
            "Openings per task": task_table,
            f"Output {n}-grams": gram_table,
        },
        figure=_plot(opening_table, gram_table, n) if size else None,
    )


def _top(counts: Counter[str], top: int, label: str, size: int, share_name: str) -> pd.DataFrame:
    rows = [{label: text, "count": count, share_name: count / size} for text, count in counts.most_common(top)]
    return pd.DataFrame(rows, columns=[label, "count", share_name])


def _plot(openings: pd.DataFrame, grams: pd.DataFrame, n: int) -> Figure:
    figure = new_figure(13, 5.5)
    for position, (table, label, title) in enumerate(((openings, "opening", "instruction openings"), (grams, f"{n}-gram", f"output {n}-grams")), start=1):
        axes = figure.add_subplot(1, 2, position)
        axes.barh(list(table[label]), table["count"], color="#2b7bba")
        axes.invert_yaxis()
        axes.tick_params(axis="y", labelsize=7)
        axes.set_xlabel("count")
        axes.set_title(title)
    return figure
