"""``mediflow pairs`` end to end against the test teacher server, and every output row through TRL.

The server answers every JSON request with a deterministic schema-valid instance, so the injected
"errors" are random words and the judge's scores pseudo-random integers on the 1-10 scale: enough
to check the bookkeeping (kept + dropped == tried, the margin on every kept pair, ties counted)
and the format, not the clinical quality of the pairs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fixtures import make_records, write_output_folder

from mediflow.cli import main
from mediflow.preference import CandidateSource, PairsConfig, build_pairs
from mediflow.preference.error_kinds import load_error_kinds
from mediflow.taxonomy import load_taxonomy
from mediflow.teachers.factory import TeacherConfig
from mediflow.testing import TeacherServerURL, teacher_server

TEACHER = "openai:mediflow-test-teacher"


@pytest.fixture(scope="module")
def server() -> Iterator[TeacherServerURL]:
    with teacher_server() as url:
        yield url


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plain-text and JSON records, some with ICD-10-CM codes, judged."""
    taxonomy = load_taxonomy()
    records = make_records(documents=8)
    for index, record in enumerate(records):
        if index % 3 == 0:
            record["output_format"] = "json"
            record["output"] = json.dumps(taxonomy.task(record["task_type"]).example_output)
        elif record["task_type"] == "icd10cm_coding":
            record["output"] = "Principal diagnosis E11.9 (type 2 diabetes); secondary I10."
        record["coherence"] = float(index % 5)
    return write_output_folder(tmp_path_factory.mktemp("pairs-in") / "run", records)


def read_output(out: Path) -> tuple[list[dict], list[dict], dict]:
    pairs = [row for path in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    return pairs, rejects, json.loads((out / "manifest.json").read_text())


def check_bookkeeping(pairs: list[dict], rejects: list[dict], manifest: dict, min_margin: float) -> None:
    summary = manifest["pairs"]
    assert summary["kept"] == len(pairs) and summary["kept"] + sum(summary["dropped"].values()) == summary["tried"]
    assert Counter(r["rule"] for r in rejects) == Counter(summary["dropped"])
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"] and pair["chosen"][0]["content"] == pair["output"]
        assert pair["rejected"][0]["content"] == pair["rejected_output"]
        assert pair["chosen_score"] - pair["rejected_score"] >= min_margin
        assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
        assert pair["prompt"][0]["content"] == pair["instruction"] and pair["prompt"][1]["content"] == pair["input"]
        assert pair["task_type"] and pair["input_data"] and pair["id"]


def test_error_injection_end_to_end(server: TeacherServerURL, records_dir: Path, tmp_path: Path) -> None:
    config = PairsConfig.load(None, teacher=TEACHER, base_url=server, min_margin=1, top_fraction=0.9, progress=False, seed=3)
    result = build_pairs(records_dir, tmp_path / "pairs", config)
    pairs, rejects, manifest = read_output(tmp_path / "pairs")
    check_bookkeeping(pairs, rejects, manifest, min_margin=1)
    assert manifest["pairs"]["not_selected"] > 0 and result.tried == manifest["pairs"]["selected"]
    assert 0 < result.kept < result.tried
    kinds = {kind.name for kind in load_error_kinds()}
    assert all(p["error_type"] in kinds and p["method"] == "inject" and p["error_description"] for p in pairs)
    # The test teacher's "rewrites" are random words: a JSON answer turned into them broke its syntax, which
    # fits no error kind (content kinds keep the schema, the structural kind keeps the syntax).
    assert all(p["output_format"] == "plain_text" or p["error_type"] == "wrong_icd10_code" for p in pairs)
    assert manifest["pairs"]["dropped"]["hard_checks_kind_mismatch"] > 0
    coded = [p for p in pairs if p["error_type"] == "wrong_icd10_code"]
    assert all(p["rejected_source"] == "icd10_sibling" and "E11.9" not in p["rejected_output"] for p in coded)
    assert manifest["prompt_versions"]["pair_judge"] and manifest["usage"]["teacher+judge"]["requests"] > 0

    # A rerun is answered from the cache and gives the same pairs.
    before = server.stats()["requests"]
    build_pairs(records_dir, tmp_path / "pairs", config)
    assert server.stats()["requests"] == before
    assert read_output(tmp_path / "pairs")[0] == pairs


def test_ties_are_dropped_and_counted(server: TeacherServerURL, records_dir: Path, tmp_path: Path) -> None:
    """A judge whose scale admits one score can only tie: every record is dropped as a tie, none paired."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    judge = (Path(__file__).parents[1] / "prompts" / "pair_judge.yaml").read_text()
    (prompts / "pair_judge.yaml").write_text(judge.replace("score: {type: integer, minimum: 1, maximum: 10}", "score: {type: integer, minimum: 5, maximum: 5}"))
    config = PairsConfig.load(None, method="candidates", teacher=TEACHER, base_url=server, hot_samples=2, prompts_path=prompts, progress=False, min_margin=0.5)
    result = build_pairs(records_dir, tmp_path / "pairs", config)
    pairs, rejects, manifest = read_output(tmp_path / "pairs")
    assert result.kept == 0 and pairs == []
    assert manifest["pairs"]["dropped"] == {"tie": result.tried} and len(rejects) == result.tried


def test_candidates_from_other_sources(server: TeacherServerURL, records_dir: Path, tmp_path: Path) -> None:
    config = PairsConfig.load(
        None,
        method="candidates",
        teacher=TEACHER,
        base_url=server,
        candidate_sources=(CandidateSource(TeacherConfig("openai:student-model", server), 0.9),),
        hot_samples=1,
        min_margin=3,
        progress=False,
    )
    result = build_pairs(records_dir, tmp_path / "pairs", config)
    pairs, rejects, manifest = read_output(tmp_path / "pairs")
    check_bookkeeping(pairs, rejects, manifest, min_margin=3)
    sources = {"openai:gpt-4o", "openai:student-model@t=0.9", f"{TEACHER}@t=1.2#0"}
    assert all(p["chosen_source"] in sources and p["rejected_source"] in sources and p["chosen_source"] != p["rejected_source"] for p in pairs)
    assert result.kept > 0 and set(manifest["usage"]) == {"teacher+judge", "candidate0"}


def test_cli_pairs_and_every_row_accepted_by_trl_dpo(server: TeacherServerURL, records_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pairs"
    argv = ["pairs", str(records_dir), str(out), "--teacher", TEACHER, "--base-url", server, "--min-margin", "1", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    pairs, _, manifest = read_output(out)
    assert f"pairs: {len(pairs)} kept of {manifest['pairs']['tried']} records tried" in printed
    assert main(["pairs", str(records_dir), str(tmp_path / "bad"), "--min-margin", "0"]) == 2

    from datasets import Dataset
    from tiny_models import build_tiny_phi3
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model = build_tiny_phi3(tmp_path / "tiny")
    dataset = Dataset.from_parquet([str(p) for p in sorted((out / "data").glob("*.parquet"))])
    assert dataset.num_rows == len(pairs) > 0
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), use_cpu=True, bf16=False, report_to=[], max_length=None, save_strategy="no")
    trainer = DPOTrainer(model=str(model), args=args, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(model))
    prepared = trainer.train_dataset
    assert prepared.num_rows == dataset.num_rows, "TRL dropped rows"
    for row in prepared:
        assert row["prompt_ids"] and row["chosen_ids"] and row["rejected_ids"]
        assert row["chosen_ids"] != row["rejected_ids"]
    batch = trainer.data_collator([prepared[i] for i in range(min(2, prepared.num_rows))])
    assert batch["input_ids"].shape[0] == 2 * min(2, prepared.num_rows)  # chosen and rejected halves
