"""The worked example of docs/architecture.md ("Adding an LLM stage") runs as written, under 40 lines: the step plus one call."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pyarrow.parquet as pq

from mediflow.folders import open_input, read_manifest
from mediflow.testing import TeacherServerURL

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _blocks(section: str) -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    body = text[text.index(section) :]
    return {language: code for language, code in re.findall(r"```(\w+)\n(.*?)```", body, re.S)[:2]}


def test_the_new_stage_example_runs_against_the_test_teacher(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    blocks = _blocks("### Adding an LLM stage")
    code = blocks["python"]
    assert len(code.strip().splitlines()) < 40
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "summary.yaml").write_text(blocks["yaml"], encoding="utf-8")
    module = types.ModuleType("summary_stage")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, str(DOC), "exec"), module.__dict__)
        config = module.SummaryConfig.load({"prompts": str(prompts), "max_words": 60}, teacher="openai:mediflow-test-teacher", base_url=str(teacher_server))
        records = tmp_path / "records.jsonl"
        notes = [f"Progress note {i}: stable, afebrile, tolerating diet." for i in range(8)]
        records.write_text("".join(json.dumps({"instruction": "Summarise.", "input": note}) + "\n" for note in notes), encoding="utf-8")
        result = module.summarise(records, tmp_path / "summary", config)
        first = pq.read_table(tmp_path / "summary" / "data")
        again = module.summarise(records, tmp_path / "summary", config)
    finally:
        del sys.modules[module.__name__]
    # the test teacher writes 48-78 words: some summaries are kept, the longer ones rejected by parse, none lost
    assert result.records_in == 8 and result.kept + result.rejected == 8 and result.kept and result.rejected
    kept = open_input(tmp_path / "summary").read()
    rejected = pq.read_table(tmp_path / "summary" / "rejects.parquet").to_pylist()
    assert sorted(kept.column("input").to_pylist() + [r["input"] for r in rejected]) == sorted(notes)
    assert all(0 < len(summary.split()) <= 60 for summary in kept.column("summary").to_pylist())
    assert all(r["stage"] == "summary" and r["reason"].endswith("words, not 1-60") and len(r["raw_text"].split()) > 60 for r in rejected)
    assert (again.kept, again.rejected) == (result.kept, result.rejected) and pq.read_table(tmp_path / "summary" / "data").equals(first)
    assert teacher_server.stats()["requests"] == 8  # the rerun came from the cache
    manifest = read_manifest(tmp_path / "summary")
    assert manifest is not None and manifest.kind == "summary" and manifest.counts == {"in": 8, "kept": result.kept, "rejected": result.rejected}
