"""The ``dedup`` stage: cluster the whole input once, then stream it and drop all but each cluster's best.

Clustering needs every record at once (a duplicate may sit in the last shard of its original), but
only the columns it compares: ``id``, ``instruction``, ``input``, ``task_type`` and the judge's
``quality``. Those are gathered batch by batch, so the widest columns (``output``, ``messages``) are
never held for the whole input. The decision per record is then applied while :func:`run_stage`
streams the full records a second time, which keeps the output shape, rejects and manifest the same
as every other stage's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mediflow.configuration import to_plain
from mediflow.errors import MediflowError
from mediflow.folders import InputData
from mediflow.quality.config import DedupConfig
from mediflow.quality.dedup import DedupResult, find_duplicates
from mediflow.quality.report import StageReport
from mediflow.quality.stage import Drops, open_stage, run_stage

#: What ``find_duplicates`` reads: the compared texts, the scope, and the score that picks the keeper.
DEDUP_COLUMNS = ("id", "instruction", "input", "task_type", "quality")
#: What ``io.with_ids`` needs to derive a missing ``id`` from content; read per batch, then let go.
_ID_COLUMNS = ("instruction", "input", "output", "task_type", "output_format")


def read_dedup_columns(source: InputData) -> pa.Table:
    """The dedup columns of the whole input, in input order (the order :func:`run_stage` streams)."""
    batches = [batch.select([c for c in DEDUP_COLUMNS if c in batch.column_names]) for batch in source.iter_batches(sorted(set(DEDUP_COLUMNS) | set(_ID_COLUMNS)), batch_rows=200_000)]
    if not batches:
        return pa.table({name: pa.array([], pa.string()) for name in ("id", "instruction", "input")})
    return pa.concat_tables(batches, promote_options="default")  # combining the chunks would copy every text


def _drops(result: DedupResult, ids: list[str], offset: int, batch_ids: list[str]) -> Drops:
    """The rejects of rows ``[offset, offset + len(batch_ids))``, each pointing at its cluster's kept record."""
    if batch_ids != ids[offset : offset + len(batch_ids)]:
        raise MediflowError("dedup: the input changed while the stage was reading it (record ids differ between passes)")
    rows = np.arange(offset, offset + len(batch_ids))
    drops = Drops(mask=result.drop[rows].copy())
    for row in rows[drops.mask].tolist():
        keeper = ids[result.keeper[row]]
        similarity = float(result.similarity[row])
        kind, key = result.rule[row].split(":", 1)  # "exact:pair" / "near:input"
        drops.rule.append(f"{kind}_duplicate:{key}")
        drops.score.append(similarity)
        drops.reason.append(f"{kind} duplicate on {key} (similarity {similarity:.3f}) in a cluster of {int(result.cluster_size[row])}; kept {keeper}")
        drops.match.append(keeper)
    return drops


def run_dedup(source: Path | InputData, out: Path, config: DedupConfig | None = None, *, overwrite: bool = False) -> StageReport:
    """Remove exact and near-duplicates from ``source`` and write ``out`` (kept, rejects, manifest)."""
    config = config or DedupConfig()
    data, folder = open_stage(source, out, "dedup", to_plain(config), overwrite=overwrite)
    try:
        table = read_dedup_columns(data)
    except BaseException:
        folder.close()
        raise
    result = find_duplicates(table, config)
    ids = table.column("id").to_pylist()
    keeper_score = "quality, then smallest id" if "quality" in table.column_names else "smallest id"
    del table

    def decide(batch: pa.Table, offset: int) -> tuple[pa.Table, Drops]:
        return batch, _drops(result, ids, offset, batch.column("id").to_pylist())

    details: dict[str, Any] = {**result.details, "keeper": keeper_score}
    return run_stage(data, folder, decide, details=lambda: details)
