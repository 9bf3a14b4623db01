"""User taxonomy folders: extending, overriding, replacing, and one-line errors for broken ones."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mediflow.cli import main
from mediflow.errors import TaxonomyError
from mediflow.taxonomy import load_taxonomy

BUILTIN = load_taxonomy()

NEW_DOC_TYPE = """\
document_types:
  - name: veterinary_zoonosis_report
    category: {category}
    description: A public-health report of a zoonotic exposure.
    sections: [Exposure, Animal, Assessment]
    typical_length: {{min_words: 100, max_words: 300}}
    specialties: [public health]
    settings: [health department]
"""

NEW_TASK = """\
name: {name}
description: Classify the exposure risk.
instruction_guidance: Ask for the exposure risk category.
answer_guidance: Give the category and one sentence of justification.
applies_to:
  {applies_to}
output_schema:
  type: object
  additionalProperties: false
  required: [risk]
  properties:
    risk: {{type: string, enum: [low, high]}}
example_output: {{risk: low}}
"""


def write(folder: Path, files: dict[str, str]) -> Path:
    for relative, content in files.items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(content))
    return folder


def test_a_user_folder_adds_categories_document_types_and_tasks(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "categories.yaml": "categories:\n  - {name: public_health, description: Public-health documents.}\n",
            "document_types/public_health.yaml": NEW_DOC_TYPE.format(category="public_health"),
            "tasks/exposure_risk.yaml": NEW_TASK.format(name="exposure_risk", applies_to="categories: [public_health]"),
        },
    )
    taxonomy = load_taxonomy(tmp_path)
    assert len(taxonomy.tasks) == 15 and len(taxonomy.document_types) == 99
    assert taxonomy.document_types_for("exposure_risk") == ["veterinary_zoonosis_report"]
    assert taxonomy.version != BUILTIN.version


def test_an_entry_with_a_builtin_name_overrides_it(tmp_path: Path) -> None:
    override = NEW_TASK.format(name="keyword_extraction", applies_to="document_types: [discharge_summary]")
    write(tmp_path, {"tasks/keyword_extraction.yaml": override})
    taxonomy = load_taxonomy(tmp_path)
    assert len(taxonomy.tasks) == 14
    assert taxonomy.task("keyword_extraction").description == "Classify the exposure risk."
    assert taxonomy.document_types_for("keyword_extraction") == ["discharge_summary"]


def test_replace_sections_drops_those_builtin_sections(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "taxonomy.yaml": "replace: [tasks]\n",
            "tasks/exposure_risk.yaml": NEW_TASK.format(name="exposure_risk", applies_to="categories: [radiology]"),
        },
    )
    taxonomy = load_taxonomy(tmp_path)
    assert list(taxonomy.tasks) == ["exposure_risk"]
    assert len(taxonomy.document_types) == 98


def test_replace_true_ignores_the_builtin_taxonomy(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "taxonomy.yaml": "replace: true\n",
            "categories.yaml": "categories:\n  - {name: public_health, description: Public-health documents.}\n",
            "document_types.yaml": NEW_DOC_TYPE.format(category="public_health"),
            "tasks.yaml": yaml.safe_dump({"tasks": [yaml.safe_load(NEW_TASK.format(name="exposure_risk", applies_to="categories: [public_health]"))]}),
            "difficulty_levels.yaml": "difficulty_levels:\n  - {name: easy, rank: 1, description: d, harder_by: h}\n",
            "output_formats.yaml": "output_formats:\n  - {name: json, description: JSON only.}\n",
        },
    )
    taxonomy = load_taxonomy(tmp_path)
    assert (len(taxonomy.tasks), len(taxonomy.document_types), taxonomy.output_formats) == (1, 1, ("json",))
    assert taxonomy.cells() == [("exposure_risk", "veterinary_zoonosis_report")]


BROKEN = {
    "unknown_category": (
        {"document_types/extra.yaml": NEW_DOC_TYPE.format(category="veterinary")},
        ["extra.yaml", "document type 'veterinary_zoonosis_report'", "unknown category 'veterinary'"],
    ),
    "duplicate_name": (
        {
            "document_types/a.yaml": NEW_DOC_TYPE.format(category="radiology"),
            "document_types/b.yaml": NEW_DOC_TYPE.format(category="radiology"),
        },
        ["b.yaml", "'veterinary_zoonosis_report'", "duplicate name", "a.yaml"],
    ),
    "invalid_json_schema": (
        {"tasks/exposure_risk.yaml": NEW_TASK.format(name="exposure_risk", applies_to="categories: [radiology]").replace("required: [risk]", "required: risk")},
        ["exposure_risk.yaml", "task 'exposure_risk'", "invalid output_schema", "required"],
    ),
    "applies_to_nothing": (
        {
            "tasks/exposure_risk.yaml": NEW_TASK.format(
                name="exposure_risk",
                applies_to="document_types: [ct_head_report]\n  exclude_document_types: [ct_head_report]",
            )
        },
        ["exposure_risk.yaml", "task 'exposure_risk'", "applies to no document type"],
    ),
    "unknown_document_type_reference": (
        {"tasks/exposure_risk.yaml": NEW_TASK.format(name="exposure_risk", applies_to="document_types: [x_ray]")},
        ["exposure_risk.yaml", "task 'exposure_risk'", "unknown 'x_ray'"],
    ),
    "missing_field": (
        {"tasks/exposure_risk.yaml": NEW_TASK.format(name="exposure_risk", applies_to="categories: [radiology]").replace("answer_guidance: Give the category and one sentence of justification.\n", "")},
        ["exposure_risk.yaml", "task 'exposure_risk'", "'answer_guidance' is a required property"],
    ),
    "misspelt_field": (
        {"tasks/exposure_risk.yaml": NEW_TASK.format(name="exposure_risk", applies_to="categories: [radiology]") + "exmaple: 1\n"},
        ["exposure_risk.yaml", "task 'exposure_risk'", "'exmaple' was unexpected"],
    ),
    "example_breaks_schema": (
        {"tasks/exposure_risk.yaml": NEW_TASK.format(name="exposure_risk", applies_to="categories: [radiology]").replace("{risk: low}", "{risk: medium}")},
        ["exposure_risk.yaml", "task 'exposure_risk'", "example_output does not match", "'medium'"],
    ),
    "yaml_syntax_error": (
        {"categories.yaml": "categories:\n  - {name: broken, description: [unclosed\n"},
        ["categories.yaml", "YAML syntax error at line"],
    ),
    "difficulty_rank_gap": (
        {"difficulty_levels.yaml": "difficulty_levels:\n  - {name: routine, rank: 8, description: d, harder_by: h}\n"},
        ["difficulty_levels.yaml", "difficulty level 'routine'", "rank 8", "ranks must be 1..6"],
    ),
    "bad_replace_setting": (
        {"taxonomy.yaml": "replace: [everything]\n"},
        ["taxonomy.yaml", "'replace' must be"],
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_folders_give_one_line_naming_file_entry_and_problem(tmp_path: Path, case: str) -> None:
    files, expected = BROKEN[case]
    write(tmp_path, files)
    with pytest.raises(TaxonomyError) as caught:
        load_taxonomy(tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(TaxonomyError, match="taxonomy folder not found"):
        load_taxonomy(tmp_path / "nope")


def test_cli_lists_the_taxonomy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["taxonomy"]) == 0
    out = capsys.readouterr().out
    cells = len(BUILTIN.cells())
    assert f"14 tasks x 98 document types: {cells} compatible cells" in out
    assert f"= {cells * 12} strata" in out
    assert "icd10cm_coding" in out and "json: {codes: [{code, description, role, evidence}]}" in out
    assert "  radiology (9)" in out


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["taxonomy", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["tasks"]) == 14 and len(data["document_types"]) == 98
    assert data["cells"] == len(BUILTIN.cells())
    assert {"name", "description", "document_types", "output_schema"} <= set(data["tasks"][0])
    assert {"name", "category"} <= set(data["document_types"][0])
    assert [level["rank"] for level in data["difficulty_levels"]] == [1, 2, 3, 4, 5, 6]
    assert [fmt["name"] for fmt in data["output_formats"]] == ["plain_text", "json"]


def test_cli_reports_a_broken_folder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, {"document_types/extra.yaml": NEW_DOC_TYPE.format(category="veterinary")})
    assert main(["taxonomy", "--path", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unknown category 'veterinary'" in lines[0]


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    write(tmp_path, {"tasks/exposure_risk.yaml": NEW_TASK.format(name="exposure_risk", applies_to="document_types: [x_ray]")})
    result = subprocess.run(
        [sys.executable, "-m", "mediflow", "taxonomy", "--path", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "exposure_risk.yaml" in result.stderr
