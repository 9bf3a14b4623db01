"""The whole data chain in one notebook kernel, from ``mediflow``'s top level, with a YAML file for every config.

Jupyter runs cells inside a running event loop, where ``asyncio.run`` raises. Every sync entry
point goes through :func:`mediflow.sync.run_sync`, so each cell below calls the plain function
exactly as a notebook user would (one cell awaits an ``_async`` twin instead), against the test
teacher: generate -> curate (with the judge) -> pairs -> export -> audit, each given the path of its
YAML config, plus a config of the wrong type. The last cell writes what each step left behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml
from fixtures import TEST_TEACHER, pin_kernel, small_run_config
from nbclient import NotebookClient

from mediflow.folders import open_input, read_manifest
from mediflow.testing import TeacherServerURL

KERNEL_NAME = "mediflow-chain-test"


def _configs(root: Path, server: str) -> None:
    """One YAML per stage, as a user would keep them beside the notebook."""
    teacher = {"spec": TEST_TEACHER, "base_url": server}
    configs = {
        "run.yaml": small_run_config(server, root / "unused"),  # the notebook names its output folder
        "curate.yaml": {"judge": {"teacher": teacher, "samples": 2, "thresholds": {"quality": 1.0}, "progress": False}},
        "pairs.yaml": {"teacher": teacher, "min_margin": 1, "progress": False},
        "export.yaml": {"split": {"train": 0.6, "validation": 0.2, "test": 0.2}, "task_configs": False, "license": "cc-by-4.0"},
        "audit.yaml": {"sample_size": 200, "duplicate_records": 200},
    }
    for name, config in configs.items():
        (root / name).write_text(yaml.safe_dump(config), encoding="utf-8")


CELLS = [
    "import asyncio, json\nfrom pathlib import Path\nasyncio.get_running_loop()  # a notebook: a loop is running",
    "from mediflow import generate, curate, build_pairs, export, audit, judge_async\nfrom mediflow.errors import ConfigError",
    'records = generate("run.yaml", "run")\nlen(records)',
    'curated = curate("run", "curated", "curate.yaml")\ncurated["kept"]',
    'judged = await judge_async("run", "judged", "curate.yaml", samples=1)  # the judge section of the curate YAML\njudged.kept',
    'pairs = build_pairs("curated", "pairs", "pairs.yaml")\npairs.tried',
    'exported = export("curated", "hub", "export.yaml", pairs="pairs")\nexported.summary.rows',
    'report = audit("curated", "audit.html", "audit.yaml")\nprint(report.summary())',
    "try:\n    build_pairs('curated', 'never', 42)\nexcept ConfigError as exc:\n    wrong_type = str(exc)",
    "summary = {'records': len(records), 'curated_in': curated['in'], 'curated_kept': curated['kept'],\n"
    "           'stages': [s['stage'] for s in curated['funnel']], 'judged_in': judged.records_in,\n"
    "           'pairs_tried': pairs.tried, 'pairs_kept': pairs.kept, 'exported': exported.summary.rows,\n"
    "           'sections': [s.title for s in report.sections], 'wrong_type': wrong_type}\n"
    "Path('summary.json').write_text(json.dumps(summary))",
]


def test_the_chain_from_the_top_level_with_yaml_configs_in_one_notebook_kernel(teacher_server: TeacherServerURL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_kernel(KERNEL_NAME, tmp_path, monkeypatch)
    _configs(tmp_path, str(teacher_server))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    NotebookClient(notebook, timeout=300, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(tmp_path)}}).execute()

    errors = [output for cell in notebook.cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["records"] > 0 and summary["curated_in"] == summary["records"] == summary["judged_in"]
    assert summary["stages"] == ["filter", "judge", "dedup"]  # the curate YAML switched the judge on
    assert summary["pairs_tried"] == summary["curated_kept"] > 0
    assert summary["exported"]["sft"]["train"] + summary["exported"]["sft"]["validation"] + summary["exported"]["sft"]["test"] == summary["curated_kept"]
    assert summary["exported"]["dpo"] and "cc-by-4.0" in (tmp_path / "hub" / "README.md").read_text()  # the export YAML's licence
    assert {"sft", "dpo", "records"} == {p.name for p in (tmp_path / "hub" / "data").iterdir()}  # task_configs: false
    assert "<h2>" in (tmp_path / "audit.html").read_text() and len(summary["sections"]) > 5
    assert summary["wrong_type"] == "config: expected a PairsConfig, a YAML/JSON file path or a dict, got int 42"
    judged = read_manifest(tmp_path / "judged")
    assert judged is not None and judged.config["samples"] == 1  # the override over the curate YAML's judge section
    assert open_input(tmp_path / "curated").num_rows == summary["curated_kept"]
    assert teacher_server.stats()["requests"] > summary["records"]  # the judge and the pair teacher were asked too
