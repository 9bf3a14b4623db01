"""``mediflow generate --dry-run``: the plan, sample cases, requests, tokens, cost and time; nothing sent or written."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from fixtures import small_run_config

from mediflow.cli import main
from mediflow.config import load_config
from mediflow.pipeline.plan import build_plan
from mediflow.taxonomy import load_taxonomy
from mediflow.testing import TeacherServerURL


def _config(teacher_server: TeacherServerURL, tmp_path: Path) -> tuple[Path, dict]:
    config = small_run_config(teacher_server, tmp_path / "out", document_types=3)
    config["limits"] = {"rpm": 600}
    config["prices"] = {"input_per_1k": 0.001, "output_per_1k": 0.002}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    return path, config


def test_dry_run_sends_nothing_and_writes_nothing(teacher_server: TeacherServerURL, tmp_path: Path, capsys) -> None:
    path, config = _config(teacher_server, tmp_path)
    assert main(["generate", "--config", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert teacher_server.stats()["requests"] == 0
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]

    items = len(build_plan(load_config(config), load_taxonomy()))
    assert f"plan: {items:,} items" in printed and "by task:" in printed and "sample of cases" in printed
    assert f"requests: {3 * items:,}" in printed  # one document, instruction and response per item (no reuse)
    assert "expected tokens:" in printed and "at the configured prices" in printed
    assert "at the configured rpm (600)" in printed and "nothing was sent and nothing was written" in printed


def test_plan_out_writes_every_item_with_its_case(teacher_server: TeacherServerURL, tmp_path: Path, capsys) -> None:
    path, config = _config(teacher_server, tmp_path)
    plan_file = tmp_path / "plan.parquet"
    assert main(["generate", "--config", str(path), "--dry-run", "--plan-out", str(plan_file)]) == 0
    assert teacher_server.stats()["requests"] == 0 and not (tmp_path / "out").exists()
    table = pq.read_table(plan_file)
    plan = list(build_plan(load_config(config), load_taxonomy()).items())
    assert table.num_rows == len(plan) and table["position"].to_pylist() == list(range(len(plan)))
    assert table["input_data"].to_pylist() == [item.document_type for item in plan]
    cases = table["case"].to_pylist()
    assert all(case["conditions"][0]["role"] == "primary" and case["age"] >= 0 for case in cases)
    assert f"wrote the plan ({len(plan):,} items with their cases)" in capsys.readouterr().out


def test_dry_run_of_a_share_counts_and_writes_that_share_only(teacher_server: TeacherServerURL, tmp_path: Path, capsys) -> None:
    path, config = _config(teacher_server, tmp_path)
    plan_items = len(build_plan(load_config(config), load_taxonomy()))
    positions: list[int] = []
    counted = 0
    for share in ("1/2", "2/2"):
        plan_file = tmp_path / f"plan-{share[0]}.parquet"
        assert main(["generate", "--config", str(path), "--shard", share, "--dry-run", "--plan-out", str(plan_file)]) == 0
        printed = capsys.readouterr().out
        rows = pq.read_table(plan_file)
        assert f"plan: {rows.num_rows:,} items" in printed and f"(share {share} of a plan of {plan_items:,} items)" in printed
        assert 0 < rows.num_rows < plan_items
        positions += rows["position"].to_pylist()
        counted += rows.num_rows
    assert counted == plan_items and sorted(positions) == list(range(plan_items))  # disjoint shares that cover the plan
    assert teacher_server.stats()["requests"] == 0 and not (tmp_path / "out").exists()


def test_plan_out_into_a_missing_folder_creates_it(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    """Every single-file output creates its missing parent folders, once every guard has passed (as every output folder does)."""
    path, _ = _config(teacher_server, tmp_path)
    assert main(["generate", "--config", str(path), "--plan-out", str(tmp_path / "nowhere" / "plan.parquet")]) == 0
    assert pq.read_metadata(tmp_path / "nowhere" / "plan.parquet").num_rows > 0
    assert teacher_server.stats()["requests"] == 0


def test_a_broken_case_profile_stops_generate_before_anything_is_sent(teacher_server: TeacherServerURL, tmp_path: Path, capsys) -> None:
    from mediflow.resources import taxonomies_dir

    (tmp_path / "taxonomy" / "cases").mkdir(parents=True)
    text = (taxonomies_dir() / "cases" / "profiles.yaml").read_text(encoding="utf-8")
    (tmp_path / "taxonomy" / "cases" / "profiles.yaml").write_text(text.replace("      I50: 7     # heart failure", "      I5O: 7"), encoding="utf-8")
    config = small_run_config(teacher_server, tmp_path / "out", taxonomy=str(tmp_path / "taxonomy"))
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    for extra in (["--dry-run"], []):
        assert main(["generate", "--config", str(path), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "'I5O' is not an ICD-10-CM" in err and "did you mean 'I50'?" in err and err.count("\n") == 1
    assert teacher_server.stats()["requests"] == 0 and not (tmp_path / "out" / "data").exists()
