"""Export: the Hub layout round-trips through ``datasets.load_dataset``, splits never share a document,
shards are bounded, the card's YAML parses, and a re-export leaves no stale shard behind."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fixtures import DOCUMENT_TYPES, TASKS, make_records, typed_manifest, write_output_folder

from mediflow.cli import main
from mediflow.export import ExportConfig, export_dataset
from mediflow.export.card import parse_card
from mediflow.export.shards import ShardLimits
from mediflow.export.splits import SplitFractions, assign_splits, document_key
from mediflow.preference.rows import PAIR_SCHEMA, pair_row
from mediflow.records import rows_to_table


def make_pairs(records: list[dict], every: int = 3) -> list[dict]:
    return [pair_row(r, chosen=r["output"], rejected=r["output"] + " wrong", chosen_score=8, rejected_score=3, chosen_source="teacher", rejected_source="inject", method="inject", error_type="factual_error") for r in records[::every]]


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path, list[dict], list[dict]]:
    records = make_records()
    records_dir = write_output_folder(
        tmp_path / "curated",
        records,
        manifest={"stages": [{"stage": "heuristics", "in": 130, "kept": len(records), "dropped": 130 - len(records), "dropped_by_rule": {"too_short": 7}}]},
    )
    pairs = make_pairs(records)
    pairs_dir = tmp_path / "pairs"
    (pairs_dir / "data").mkdir(parents=True)
    pq.write_table(rows_to_table(pairs, PAIR_SCHEMA), pairs_dir / "data" / "part-00000.parquet")
    (pairs_dir / "manifest.json").write_text(json.dumps(typed_manifest({"pairs": {"method": "inject", "tried": 50, "kept": len(pairs), "dropped": {"tie": 3}}})))
    return records_dir, pairs_dir, records, pairs


def test_local_export_round_trips_through_load_dataset(inputs, tmp_path: Path) -> None:
    import datasets

    records_dir, pairs_dir, records, pairs = inputs
    out = tmp_path / "export"
    summary = export_dataset(records_dir, out, ExportConfig.load(None, pairs=str(pairs_dir), split={"train": 0.6, "validation": 0.2, "test": 0.2}, seed=1, max_shard_rows=9))

    card = parse_card((out / "README.md").read_text())
    configs = {entry["config_name"]: entry for entry in card["configs"]}
    assert set(configs) == {"sft", "dpo", "records", *TASKS}
    assert sum(summary.rows["sft"].values()) == len(records)
    assert sum(summary.rows["dpo"].values()) == len(pairs)
    for task in TASKS:
        assert sum(summary.rows[task].values()) == sum(r["task_type"] == task for r in records)

    splits_of_document: dict[str, set[str]] = defaultdict(set)
    for name, entry in configs.items():
        assert {f["split"] for f in entry["data_files"]} == set(summary.rows[name])
        loaded = datasets.load_dataset(str(out), name=name)
        assert {split: ds.num_rows for split, ds in loaded.items()} == summary.rows[name]
        for split, ds in loaded.items():
            for row in ds.select_columns(["document_id", "input"]):
                splits_of_document[document_key(row["document_id"], row["input"])].add(split)
    assert all(len(splits) == 1 for splits in splits_of_document.values()), "a document is in two splits"
    assert set().union(*splits_of_document.values()) == {"train", "validation", "test"}

    sft = datasets.load_dataset(str(out), name="sft", split="train")
    first = sft[0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][2]["content"] == first["output"]
    dpo = datasets.load_dataset(str(out), name="dpo", split="train")
    assert {"prompt", "chosen", "rejected", "rejected_output", "error_type", "chosen_score", "rejected_score", "rejected_source"} <= set(dpo.column_names)


def test_shards_are_bounded_and_named_for_the_hub(inputs, tmp_path: Path) -> None:
    records_dir, _, records, _ = inputs
    out = tmp_path / "export"
    summary = export_dataset(records_dir, out, ExportConfig(max_shard_rows=10, task_configs=False))
    train = summary.files["sft"]["train"]
    assert len(train) == -(-summary.rows["sft"]["train"] // 10) > 1
    for index, path in enumerate(train):
        assert path == f"data/sft/train-{index:05d}-of-{len(train):05d}.parquet"
        assert pq.ParquetFile(out / path).metadata.num_rows <= 10
    assert sorted(p.name for p in (out / "data").iterdir()) == ["records", "sft"]

    # A byte bound tighter than the row bound wins.
    tiny = ShardLimits(max_rows=1000, max_bytes=1)
    assert tiny.rows_per_shard(bytes_per_row=500.0) == 1


def test_reexport_removes_stale_shards(inputs, tmp_path: Path) -> None:
    records_dir, _, _, _ = inputs
    out = tmp_path / "export"
    export_dataset(records_dir, out, ExportConfig(max_shard_rows=5))
    summary = export_dataset(records_dir, out, ExportConfig(max_shard_rows=1000, task_configs=False), overwrite=True)
    on_disk = sorted(str(p.relative_to(out)) for p in (out / "data").rglob("*.parquet"))
    assert on_disk == sorted(p for splits in summary.files.values() for paths in splits.values() for p in paths)
    assert not list(out.glob(".tmp-*"))


def test_a_reexport_into_the_same_folder_loads_its_own_rows(inputs, tmp_path: Path) -> None:
    """``datasets`` caches a local folder under a hash of its card: the card's ``dataset_info`` must change with the data."""
    import datasets

    records_dir, _, records, _ = inputs
    out = tmp_path / "export"
    first = export_dataset(records_dir, out, ExportConfig(task_configs=False))
    assert {s: d.num_rows for s, d in datasets.load_dataset(str(out), name="sft").items()} == first.rows["sft"]
    fewer = write_output_folder(tmp_path / "fewer", records[: len(records) // 2])
    second = export_dataset(fewer, out, ExportConfig(task_configs=False), overwrite=True)
    assert second.rows["sft"] != first.rows["sft"]
    assert {s: d.num_rows for s, d in datasets.load_dataset(str(out), name="sft").items()} == second.rows["sft"]


def test_card_states_counts_teacher_filters_and_synthetic_origin(inputs, tmp_path: Path) -> None:
    records_dir, pairs_dir, records, pairs = inputs
    out = tmp_path / "export"
    summary = export_dataset(records_dir, out, ExportConfig(pairs=str(pairs_dir), repo_id="someone/mediflow-demo"))
    text = (out / "README.md").read_text()
    meta = parse_card(text)
    info = {entry["config_name"]: entry for entry in meta["dataset_info"]}
    assert [entry["config_name"] for entry in meta["configs"]] == ["sft", "dpo", "records", *sorted(TASKS)] == list(info)
    for name, entry in info.items():
        assert {split["name"]: split["num_examples"] for split in entry["splits"]} == summary.rows[name]
        assert entry["download_size"] == sum((out / path).stat().st_size for paths in summary.files[name].values() for path in paths)
    assert meta["license"] == "cdla-permissive-2.0"
    assert meta["language"] == ["en"] and meta["size_categories"] == ["n<1K"]
    assert "text-generation" in meta["task_categories"] and "dpo" in meta["tags"]
    assert "no real protected health information" in text
    assert "`openai:gpt-4o`" in text
    assert "`heuristics`: 130 in" in text and "too_short: 7" in text
    assert f"{len(pairs)} kept of 50 records tried" in text
    for task in TASKS:
        assert f"| {task} | {sum(r['task_type'] == task for r in records)} |" in text


def test_split_assignment_is_stratified_seeded_and_order_independent() -> None:
    documents = [(f"d{i}", TASKS[i % 3], DOCUMENT_TYPES[i % 2]) for i in range(600)]
    fractions = SplitFractions(0.8, 0.1, 0.1)
    first = assign_splits(documents, fractions, seed=5)
    assert first == assign_splits(list(reversed(documents)), fractions, seed=5)
    assert first != assign_splits(documents, fractions, seed=6)
    for stratum in {(t, d) for _, t, d in documents}:
        keys = [k for k, t, d in documents if (t, d) == stratum]
        share = sum(first[k] == "train" for k in keys) / len(keys)
        assert 0.75 <= share <= 0.85


def test_cli_local_export(inputs, tmp_path: Path, capsys) -> None:
    records_dir, pairs_dir, _, _ = inputs
    assert main(["export", str(records_dir), "--local-dir", str(tmp_path / "cli"), "--pairs", str(pairs_dir), "--no-task-configs"]) == 0
    printed = capsys.readouterr().out
    assert "sft: train" in printed and "dpo: train" in printed
    assert main(["export", str(tmp_path / "missing"), "--local-dir", str(tmp_path / "x")]) == 2
