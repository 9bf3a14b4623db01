"""The wheel ships the data the library reads: every file of prompts/ and taxonomies/ (as mediflow/_data/), no data left inside code folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _data_files(folder: str) -> set[str]:
    return {str(path.relative_to(ROOT)) for path in (ROOT / folder).rglob("*") if path.is_file() and "__pycache__" not in path.parts}


def test_the_wheel_holds_every_prompt_and_taxonomy_file(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="the build backend (torch's dependency in the dev install) builds the wheel without the network")
    source = tmp_path / "src"  # a copy, so that the build's build/ and egg-info folders stay out of the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("mediflow", "prompts", "taxonomies"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source), "-w", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("mediflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"mediflow/_data/{name}" for name in _data_files("prompts") | _data_files("taxonomies")}
    assert expected - names == set()
    assert "mediflow/_data/taxonomies/cases/context.yaml" in names  # the mention filter's language rules are data like the rest
    assert not [name for name in names if name.startswith("mediflow/cases/") and not name.endswith(".py")]  # no data among the code
