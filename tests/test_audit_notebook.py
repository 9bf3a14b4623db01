"""``examples/audit.ipynb`` runs top to bottom, headless, on a small generated output folder.

The kernel is pinned to this interpreter (``fixtures.pin_kernel``).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from fixtures import demo_folder, pin_kernel, small_run_config
from nbclient import NotebookClient

from mediflow import generate

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "audit.ipynb"
KERNEL_NAME = "mediflow-audit-test"


def _execute(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Run the notebook on ``folder``; return its HTML outputs and the report it wrote."""
    report = tmp_path / "notebook-report.html"
    pin_kernel(KERNEL_NAME, tmp_path, monkeypatch)
    monkeypatch.setenv("MEDIFLOW_AUDIT_DIR", str(folder))
    monkeypatch.setenv("MEDIFLOW_AUDIT_HTML", str(report))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html_outputs = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    return html_outputs, report.read_text(encoding="utf-8")


def test_audit_notebook_runs_headless_on_a_folder_with_planted_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "run"
    demo_folder(output)
    html_outputs, text = _execute(output, tmp_path, monkeypatch)
    assert html_outputs.count('src="data:image/png;base64,') >= 8  # every plotted section shows its figure
    assert "JSON validity per task" in html_outputs and "Planned cells with no record" in html_outputs
    assert text.count("<h2>") == 16  # contents + 15 sections


def test_audit_notebook_runs_headless_on_a_generate_output(teacher_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a data lead runs it on: a real ``mediflow generate`` folder (test teacher, 2 tasks x 2 document types)."""
    output = tmp_path / "run"
    tasks = ["icd10cm_coding", "medication_qa"]
    generate(small_run_config(teacher_server, output, tasks=tasks, difficulty_levels=["routine"]))
    html_outputs, text = _execute(output, tmp_path, monkeypatch)
    assert "the run&#x27;s plan" in html_outputs or "the run's plan" in html_outputs  # coverage against the real plan
    assert text.count("<h2>") == 16 and "ICD-10-CM code validity" in text and "Case rule violations" in text
