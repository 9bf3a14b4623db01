"""``examples/audit.ipynb`` runs top to bottom, headless, on a small generated output folder.

The kernel is pinned to this interpreter through a throw-away kernelspec (put first on
``JUPYTER_PATH``), so the test never picks up some other Python's ``python3`` kernel on a CI machine;
Jupyter's and IPython's runtime folders go to the temp dir so a read-only home does not matter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from audit_fixtures import demo_folder

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "audit.ipynb"
KERNEL_NAME = "mediflow-audit-test"


def _pin_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL_NAME, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "Agg")


def test_audit_notebook_runs_headless_on_a_generated_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "run"
    demo_folder(output)
    report = tmp_path / "notebook-report.html"
    _pin_kernel(tmp_path, monkeypatch)
    monkeypatch.setenv("MEDIFLOW_AUDIT_DIR", str(output))
    monkeypatch.setenv("MEDIFLOW_AUDIT_HTML", str(report))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html_outputs = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert html_outputs.count('src="data:image/png;base64,') >= 8  # every plotted section shows its figure
    assert "JSON validity per task" in html_outputs and "Planned cells with no record" in html_outputs
    text = report.read_text(encoding="utf-8")
    assert text.count("<h2>") == 10  # contents + 9 sections
