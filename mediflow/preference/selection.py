"""Which records become the chosen side of injected pairs: the best-judged ones.

The reference set took about 135k of its best-scored records (of 2.5M) for DPO. A record's score is
the mean of the judge criteria that rate the answer (``quality``, ``alignment``, ``coherence``,
``realism``; ``difficulty`` rates the task, not the answer, so it is left out). Records are kept
when their score is at least ``min_score`` and they rank in the top ``top_fraction``. Unjudged
input (no judge columns, or all null) cannot be ranked: every record is taken and a warning says so
(the pair judge still has to confirm each pair, so no unchecked pair reaches the output).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from mediflow.errors import MediflowError

#: The judge columns that rate the answer itself.
ANSWER_SCORE_COLUMNS: tuple[str, ...] = ("quality", "alignment", "coherence", "realism")


@dataclass(frozen=True)
class Selection:
    """The selected records and how many were considered and left out, for the manifest."""

    records: pa.Table
    considered: int
    below_threshold: int
    judged: bool


def answer_scores(records: pa.Table, columns: Sequence[str] = ANSWER_SCORE_COLUMNS) -> pa.ChunkedArray | None:
    """The mean of the answer-rating judge columns per record (nulls ignored); None when unjudged."""
    present = [c for c in columns if c in records.column_names and records.column(c).null_count < records.num_rows]
    if not present:
        return None
    values = [pc.cast(records.column(c), pa.float64()) for c in present]
    total = values[0].fill_null(0.0)
    count = pc.cast(pc.is_valid(values[0]), pa.float64())
    for value in values[1:]:
        total = pc.add(total, value.fill_null(0.0))
        count = pc.add(count, pc.cast(pc.is_valid(value), pa.float64()))
    return pc.if_else(pc.equal(count, 0.0), pa.scalar(None, pa.float64()), pc.divide(total, count))


def select_best(records: pa.Table, *, min_score: float | None, top_fraction: float) -> Selection:
    """Records scoring >= ``min_score`` and in the top ``top_fraction`` by mean answer score."""
    if not 0.0 < top_fraction <= 1.0:
        raise MediflowError(f"top_fraction must be in (0, 1], got {top_fraction}")
    scores = answer_scores(records)
    if scores is None:
        warnings.warn(
            "the input has no judge scores: taking every record as a chosen candidate (run `mediflow curate` or `mediflow judge` first to pair only the best-judged records)",
            stacklevel=2,
        )
        return Selection(records, records.num_rows, 0, judged=False)
    keep = pc.is_valid(scores)
    if min_score is not None:
        keep = pc.and_(keep, pc.greater_equal(scores, min_score).fill_null(False))
    eligible = records.filter(keep).append_column("_score", scores.filter(keep))
    quota = math.ceil(top_fraction * records.num_rows)
    order = pc.sort_indices(eligible, sort_keys=[("_score", "descending"), ("id", "ascending")])
    chosen = eligible.take(order[:quota]).drop_columns(["_score"])
    return Selection(chosen, records.num_rows, records.num_rows - chosen.num_rows, judged=True)
