"""Pairs, export and audit on what ``mediflow generate`` really writes, from the CLI and from Python.

The other tests of these stages feed them hand-made folders; this one runs ``generate`` against the
test teacher and then every downstream stage on its output (and on ``mediflow curate``'s output of
it), so a change in what generate or curate writes cannot silently break pairs, export or audit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fixtures import TEST_TEACHER as TEACHER
from fixtures import small_run_config

from mediflow import generate
from mediflow.audit import run_audit
from mediflow.cli import main
from mediflow.export import ExportConfig, export_dataset
from mediflow.export.card import parse_card
from mediflow.export.splits import document_key
from mediflow.preference import PairsConfig, build_pairs
from mediflow.testing import TeacherServerURL


@pytest.fixture()
def generated(teacher_server: TeacherServerURL, tmp_path: Path) -> Path:
    """A finished ``generate`` run: 3 tasks x 3 shared document types x 2 records, half JSON."""
    out = tmp_path / "run"
    tasks = ["icd10cm_coding", "medication_qa", "problem_list_summarization"]
    generate(small_run_config(teacher_server, out, tasks=tasks, document_types=3, difficulty_levels=["routine"], limits={"concurrency": 8}))
    return out


def _record_count(folder: Path) -> int:
    return sum(pq.read_metadata(path).num_rows for path in (folder / "data").glob("*.parquet"))


def _pairs(out: Path) -> list[dict]:
    return [row for path in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def test_pairs_from_the_cli_and_python_agree_on_a_generate_output(generated: Path, teacher_server: TeacherServerURL, tmp_path: Path, capsys) -> None:
    argv = ["pairs", str(generated), str(tmp_path / "cli"), "--teacher", TEACHER, "--base-url", str(teacher_server), "--min-margin", "1", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "note: the input has no judge scores" in printed  # generate does not judge: every record is tried
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())["pairs"]
    assert manifest["tried"] == manifest["records_in"] == _record_count(generated) > 0
    assert f"pairs: {manifest['kept']} kept of {manifest['tried']} records tried" in printed
    assert manifest["kept"] + sum(manifest["dropped"].values()) == manifest["tried"]

    with pytest.warns(UserWarning, match="no judge scores"):
        result = build_pairs(generated, tmp_path / "py", PairsConfig.load(None, teacher=TEACHER, base_url=str(teacher_server), min_margin=1, progress=False))
    assert (result.tried, result.kept, result.dropped) == (manifest["tried"], manifest["kept"], manifest["dropped"])
    assert _pairs(tmp_path / "py") == _pairs(tmp_path / "cli")  # same seed, same pairs, whichever way it ran


def test_export_and_audit_of_a_generate_output_and_of_its_curated_output(generated: Path, teacher_server: TeacherServerURL, tmp_path: Path, capsys) -> None:
    import datasets

    pairs = tmp_path / "pairs"
    assert main(["pairs", str(generated), str(pairs), "--teacher", TEACHER, "--base-url", str(teacher_server), "--min-margin", "1", "--no-progress"]) == 0
    curated = tmp_path / "curated"
    assert main(["curate", str(generated), str(curated)]) == 0  # default curate: filters and dedup, no teacher
    records, kept = _record_count(generated), _record_count(curated)
    pair_count = len(_pairs(pairs))

    from_generate = export_dataset(generated, tmp_path / "export-gen", ExportConfig.load(None, pairs=str(pairs), split={"train": 0.6, "validation": 0.2, "test": 0.2}))
    assert sum(from_generate.rows["sft"].values()) == records and sum(from_generate.rows["dpo"].values()) == pair_count
    assert main(["export", str(curated), "--pairs", str(pairs), "--local-dir", str(tmp_path / "export-cur"), "--split-train", "0.6", "--split-validation", "0.2", "--split-test", "0.2"]) == 0
    card_text = (tmp_path / "export-cur" / "README.md").read_text()
    card = parse_card(card_text)
    assert "`filter`: " in card_text and "`dedup`: " in card_text  # the curate funnel reaches the card
    splits_of_document: dict[str, set[str]] = {}
    for entry in card["configs"]:
        loaded = datasets.load_dataset(str(tmp_path / "export-cur"), name=entry["config_name"])
        assert set(loaded) == {f["split"] for f in entry["data_files"]}
        for split, rows in loaded.items():
            for row in rows.select_columns(["document_id", "input"]):
                splits_of_document.setdefault(document_key(row["document_id"], row["input"]), set()).add(split)
    assert sum(datasets.load_dataset(str(tmp_path / "export-cur"), name="sft", split=s).num_rows for s in ("train", "validation", "test")) == kept
    assert all(len(splits) == 1 for splits in splits_of_document.values())

    report_path = tmp_path / "audit.html"
    assert main(["audit", str(curated), "--html", str(report_path)]) == 0
    assert f"{kept} records" in capsys.readouterr().out
    report = run_audit(curated)
    coverage = report.section("coverage")
    assert "source" in coverage.numbers["plan_source"] and str(generated) in coverage.numbers["plan_source"]
    assert coverage.numbers["planned_cells"] == 9 and coverage.numbers["unplanned_cells"] == 0
    stages = report.section("funnel").numbers["stages"]
    assert [s["stage"] for s in stages] == ["filter", "dedup"] and stages[0]["in"] == records and stages[-1]["kept"] == kept
    assert report_path.read_text().count("<section id=") == len(report.sections)
