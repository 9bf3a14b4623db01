"""The whole data chain in one notebook kernel: generate -> curate with the judge -> pairs -> audit.

Jupyter runs cells inside a running event loop, where ``asyncio.run`` raises. Every sync entry
point goes through :func:`mediflow.sync.run_sync`, so each cell below calls the plain function
exactly as a notebook user would, against the test teacher, and the last cell checks what each
step left behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from fixtures import TEST_TEACHER, pin_kernel, small_run_config
from nbclient import NotebookClient

from mediflow.testing import TeacherServerURL

KERNEL_NAME = "mediflow-chain-test"


def _cells(run_config: dict, root: Path, server: str) -> list[str]:
    judge = {"teacher": {"spec": TEST_TEACHER, "base_url": server}, "samples": 2, "thresholds": {"quality": 1.0}, "progress": False}
    return [
        "import asyncio, json\nfrom pathlib import Path\nasyncio.get_running_loop()  # a notebook: a loop is running",
        f"from mediflow import generate\nrecords = generate({run_config!r})\nlen(records)",
        "from mediflow.quality import CurateConfig, curate\n"
        f"curated = curate({str(root / 'run')!r}, {str(root / 'curated')!r}, CurateConfig.load({{'judge': {judge!r}}}))\n"
        "curated['kept']",
        "from mediflow.preference import PairsConfig, build_pairs\n"
        f"pairs = build_pairs({str(root / 'curated')!r}, {str(root / 'pairs')!r}, "
        f"PairsConfig.load(None, teacher={TEST_TEACHER!r}, base_url={server!r}, min_margin=1, progress=False))\n"
        "pairs.tried",
        "from mediflow.audit import run_audit, write_html\n"
        f"report = run_audit({str(root / 'curated')!r})\nwrite_html(report, {str(root / 'audit.html')!r})",
        "summary = {'records': len(records), 'curated_in': curated['in'], 'curated_kept': curated['kept'],\n"
        "           'stages': [s['stage'] for s in curated['funnel']], 'pairs_tried': pairs.tried, 'pairs_kept': pairs.kept}\n"
        f"Path({str(root / 'summary.json')!r}).write_text(json.dumps(summary))",
    ]


def test_generate_curate_pairs_audit_in_one_notebook_kernel(teacher_server: TeacherServerURL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_kernel(KERNEL_NAME, tmp_path, monkeypatch)
    run_config = small_run_config(teacher_server, tmp_path / "run")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in _cells(run_config, tmp_path, str(teacher_server))])
    NotebookClient(notebook, timeout=300, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(tmp_path)}}).execute()

    errors = [output for cell in notebook.cells for output in cell.outputs if output.output_type == "error"]
    assert not errors
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["records"] > 0 and summary["curated_in"] == summary["records"]
    assert summary["stages"] == ["filter", "judge", "dedup"]
    assert summary["pairs_tried"] == summary["curated_kept"] > 0
    assert (tmp_path / "pairs" / "manifest.json").is_file() and "<h2>" in (tmp_path / "audit.html").read_text()
    assert teacher_server.stats()["requests"] > summary["records"]  # the judge and the pair teacher were asked too
