"""The folder contract in real runs: what training reads from a curate folder, two generates on one
folder, and plain-text answers cut at max_tokens."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from fixtures import record, small_run_config, words

from mediflow import generate
from mediflow.folders import OutputFolder, StagedWriter, lock_holder, open_input
from mediflow.quality import curate
from mediflow.records import FULL_SCHEMA, rows_to_table
from mediflow.train.data import load_messages


def test_train_sft_on_a_curate_folder_reads_exactly_the_kept_rows(tmp_path: Path) -> None:
    rng = random.Random(3)
    rows = [record("question_summarization", "discharge_summary", words(rng, 30), "plain_text", rng, input=words(rng, 60)) for _ in range(10)]
    rows += [dict(rows[0]), dict(rows[1])]  # exact duplicates: dedup drops them
    rows[5]["output"] = "I'm sorry, but as an AI language model I cannot help with that."  # a refusal: the filter drops it
    source = OutputFolder.open(tmp_path / "generated", kind="generate", config={}, staged=False)
    writer = StagedWriter(source)
    writer.keep(rows_to_table(rows, FULL_SCHEMA))
    writer.publish(FULL_SCHEMA, {"records": len(rows)})

    manifest = curate(tmp_path / "generated", tmp_path / "curated")
    kept = manifest["kept"]
    assert 0 < kept < len(rows) and (tmp_path / "curated" / "stages").is_dir()
    assert pq.read_table(tmp_path / "curated" / "rejects.parquet").num_rows == len(rows) - kept
    # every stage folder, the rejects and the cache hold more Parquet rows than the kept set: none of them is read
    on_disk = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "curated").rglob("*.parquet"))
    assert on_disk > kept
    trained_on = load_messages(tmp_path / "curated")
    assert len(trained_on) == kept
    assert {m["messages"][-1]["content"] for m in trained_on} == set(open_input(tmp_path / "curated").read(["output"]).column("output").to_pylist())


def _start(config: Path, out: Path, seed: int | None = None) -> subprocess.Popen:
    extra = ["--seed", str(seed)] if seed is not None else []
    return subprocess.Popen(
        [sys.executable, "-m", "mediflow", "generate", "--config", str(config), "--out", str(out), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_two_generates_on_one_folder_run_once_and_never_mix(start_teacher_server, tmp_path: Path) -> None:
    server = start_teacher_server("--latency", "1.0")  # the first run lasts long enough for the others to start
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(small_run_config(server, tmp_path / "unused", per_cell=2, limits={"concurrency": 1})))
    out = tmp_path / "shared"
    first = _start(config, out)
    deadline = time.monotonic() + 60
    while lock_holder(out) is None and time.monotonic() < deadline:  # until the first holds the folder
        assert first.poll() is None, first.stderr.read().decode()
        time.sleep(0.05)
    same, other_seed = _start(config, out), _start(config, out, seed=7)
    for second in (same, other_seed):
        assert second.wait(timeout=120) == 2
        err = second.stderr.read().decode().strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {out}: in use by another process (pid {first.pid}")
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    assert max(server.stats()["by_key"].values()) == 1  # nothing was asked twice: the config was paid once

    manifest = json.loads((out / "manifest.json").read_text())
    planned, records = manifest["plan"]["items"], manifest["counts"]["records"]
    assert manifest["status"] == "finished" and records + manifest["counts"]["rejects"] == planned
    assert open_input(out).num_rows == records
    later = _start(config, out, seed=7)  # another config into the finished folder: refused, nothing mixed
    assert later.wait(timeout=120) == 2 and "another config" in later.stderr.read().decode()
    assert open_input(out).num_rows == records


def test_plain_text_cut_at_max_tokens_is_retried_once_then_rejected_as_truncated(teacher_server, tmp_path: Path) -> None:
    def run(out: Path, retry: int) -> dict:
        sampling = {"response": {"max_tokens": 8, "retry_max_tokens": retry}}
        generate(small_run_config(teacher_server, out, json_share=0.0, per_cell=1, sampling=sampling))
        return json.loads((out / "manifest.json").read_text())

    # The test teacher cuts an answer longer than 4 x max_tokens characters (finish_reason "length").
    rescued = run(tmp_path / "rescued", retry=4000)
    assert rescued["counts"]["records"] == rescued["plan"]["items"] and rescued["counts"]["truncated"] == 0
    texts = open_input(tmp_path / "rescued").read(["output"]).column("output").to_pylist()
    assert all(len(text) > 4 * 8 for text in texts)  # the retry's whole answer, not the cut one

    cut = run(tmp_path / "cut", retry=9)
    assert cut["counts"]["records"] == 0 and cut["counts"]["truncated"] == cut["plan"]["items"]
    rejects = pq.read_table(tmp_path / "cut" / "rejects.parquet").to_pylist()
    assert {r["stage"] for r in rejects} == {"response"}
    assert all(r["reason"].startswith("truncated: the answer stopped at max_tokens=8, and at 9 on its retry") for r in rejects)
