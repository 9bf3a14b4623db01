"""datatrove's MinHash deduplication on a benchmark set: the peer the dedup stage is compared with.

Run by ``benchmarks/dedup.py --datatrove PYTHON`` under the interpreter of a virtual environment
that has datatrove (``pip install 'datatrove[processing]==0.10.1'``; it is not a dependency of
mediflow, and it does not need mediflow). It reads the set's ``records.parquet``, compares the
instruction and the document joined (the ``pair`` key), and runs datatrove's four MinHash stages
with their defaults (5-gram shingles, 14 buckets of 8 hashes) on one local worker: signatures,
buckets, clusters, filter. It writes ``clusters.parquet``: each record's id, its datatrove cluster
(``-1``: none) and whether datatrove kept it, and prints the wall time of the four stages as JSON.

    /tmp/dt/bin/python benchmarks/dedup_datatrove.py RECORDS.parquet WORKDIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def main(records: Path, work: Path) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader, ParquetReader
    from datatrove.pipeline.writers import JsonlWriter

    table = pq.read_table(records, columns=["id", "instruction", "input"])
    text = pc.binary_join_element_wise(pc.fill_null(table.column("instruction"), ""), pc.fill_null(table.column("input"), ""), "\n")
    (work / "input").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": table.column("id"), "text": text}), work / "input" / "records.parquet")
    config = MinhashConfig()
    logs = str(work / "logs")
    start = time.perf_counter()
    LocalPipelineExecutor([ParquetReader(str(work / "input")), MinhashDedupSignature(str(work / "signatures"), config=config)], tasks=1, workers=1, logging_dir=f"{logs}/signatures").run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=config)], tasks=config.num_buckets, workers=1, logging_dir=f"{logs}/buckets").run()
    LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config, save_cluster_id=True)], tasks=1, workers=1, logging_dir=f"{logs}/clusters").run()
    LocalPipelineExecutor(
        [ParquetReader(str(work / "input")), MinhashDedupFilter(str(work / "remove"), exclusion_writer=JsonlWriter(str(work / "removed")), load_cluster_ids=True), JsonlWriter(str(work / "kept"))],
        tasks=1,
        workers=1,
        logging_dir=f"{logs}/filter",
    ).run()
    seconds = time.perf_counter() - start
    ids, clusters, kept = [], [], []
    for folder, is_kept in (("kept", True), ("removed", False)):
        if not (work / folder).exists():
            continue
        for document in JsonlReader(str(work / folder)).run():
            ids.append(document.id)
            clusters.append(int(document.metadata.get("minhash_cluster_id", -1)))
            kept.append(is_kept)
    pq.write_table(pa.table({"id": ids, "cluster": clusters, "kept": kept}), work / "clusters.parquet")
    print(json.dumps({"datatrove_s": round(seconds, 1), "records": len(ids)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
