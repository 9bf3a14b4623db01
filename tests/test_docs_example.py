"""The worked example of docs/architecture.md ("Adding an LLM stage") runs as written, under 60 lines."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

from mediflow.testing import TeacherServerURL

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _blocks(section: str) -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    body = text[text.index(section) :]
    return {language: code for language, code in re.findall(r"```(\w+)\n(.*?)```", body, re.S)[:2]}


def test_the_new_stage_example_runs_against_the_test_teacher(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    blocks = _blocks("### Adding an LLM stage")
    code = blocks["python"]
    assert len(code.strip().splitlines()) < 60
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "summary.yaml").write_text(blocks["yaml"], encoding="utf-8")
    module = types.ModuleType("summary_stage")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, str(DOC), "exec"), module.__dict__)
        config = module.SummaryConfig.load(
            {"prompts": str(prompts), "max_words": 200}, teacher="openai:mediflow-test-teacher", base_url=str(teacher_server)
        )
        records = [{"input": f"Progress note {i}: stable, afebrile, tolerating diet."} for i in range(5)]
        results = module.summarise(records, tmp_path / "cache.sqlite", config)
        again = module.summarise(records, tmp_path / "cache.sqlite", config)
    finally:
        del sys.modules[module.__name__]
    assert len(results) == 5 and all(result.ok and result.value for result in results)
    assert [r.value for r in again] == [r.value for r in results]
    assert teacher_server.stats()["requests"] == 5  # the rerun came from the cache
