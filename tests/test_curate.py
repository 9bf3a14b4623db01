"""``curate`` end to end on a folder written by ``generate``: Python and CLI, the funnel, reruns, bad configs.

The input is a real ``mediflow generate`` output (test teacher) plus two planted problems: a copy
of one record (different output, same instruction and document: dedup's ``pair`` key) and one
record whose document is an evaluation item (decontamination). The judge runs against the same
test teacher with a threshold that drops some of the other records.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from fixtures import TEST_TEACHER as TEACHER
from fixtures import small_run_config

from mediflow import generate
from mediflow.audit import AuditFolder, funnel
from mediflow.cli import main
from mediflow.errors import ConfigError
from mediflow.quality import CurateConfig, curate
from mediflow.records import FULL_SCHEMA, JUDGE_SCORE_COLUMNS, record_id, rows_to_table
from mediflow.testing import TeacherServerURL


@pytest.fixture()
def generated(teacher_server: TeacherServerURL, tmp_path: Path) -> Path:
    """A ``generate`` output (12 records) plus a planted near-copy of a plain-text record, as one judged-in-part folder.

    The first plain-text record, its copy and record 3 already carry top judge scores, so the judge keeps them without asking
    and the later stages surely see them: dedup must drop one of the two, decontamination
    record 3 (its document is the eval item).
    """
    run = tmp_path / "run"
    generate(small_run_config(teacher_server, run, document_types=3))
    rows = pq.read_table(sorted((run / "data").glob("*.parquet"))).to_pylist()
    original = next(row for row in rows if row["output_format"] == "plain_text")  # an appended sentence keeps it valid
    copy = {**original, "output": original["output"] + " Follow up in two weeks."}
    copy["id"] = record_id(copy["instruction"], copy["input"], copy["output"], copy["task_type"], copy["output_format"])
    rows.append(copy)
    for row in (original, rows[3], copy):
        row.update({name: 5.0 for name in JUDGE_SCORE_COLUMNS}, judge_rationale="judged before")
    out = tmp_path / "generated"
    (out / "data").mkdir(parents=True)
    pq.write_table(rows_to_table(rows, FULL_SCHEMA), out / "data" / "part-00000.parquet")
    (out / "manifest.json").write_text((run / "manifest.json").read_text())
    teacher_server.reset()
    return out


def curate_config(tmp_path: Path, server: str, generated: Path) -> Path:
    """All four stages; the eval set holds record 3's document, so that record is contaminated."""
    records = pq.read_table(sorted((generated / "data").glob("*.parquet")))
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text(json.dumps({"id": "q1", "text": records["input"][3].as_py()}) + "\n")
    config = {
        "filters": {"length": {"output": {"min_tokens": 1, "max_tokens": 4096}}},
        "judge": {"teacher": {"spec": TEACHER, "base_url": str(server)}, "samples": 2, "thresholds": {"quality": 3.0}, "progress": False},
        "dedup": {"keys": ["pair"]},
        "decontaminate": {"eval": [{"path": str(eval_set), "fields": ["text"], "id_field": "id"}]},
    }
    path = tmp_path / "curate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def published(out: Path) -> tuple[pa.Table, pa.Table]:
    return pq.read_table(sorted((out / "data").glob("*.parquet"))), pq.read_table(out / "rejects.parquet")


def test_curate_runs_the_stages_in_order_and_the_funnel_adds_up(teacher_server: TeacherServerURL, generated: Path, tmp_path: Path) -> None:
    config = curate_config(tmp_path, teacher_server, generated)
    records = pq.read_table(sorted((generated / "data").glob("*.parquet"))).num_rows
    out = tmp_path / "curated"
    manifest = curate(generated, out, config)

    stages = [entry["stage"] for entry in manifest["funnel"]]
    assert stages == ["filter", "judge", "dedup", "decontaminate"]
    assert [entry["folder"] for entry in manifest["funnel"]] == ["stages/1-filter", "stages/2-judge", "stages/3-dedup", "stages/4-decontaminate"]
    assert manifest["funnel"][0]["in"] == manifest["in"] == records
    for before, after in zip(manifest["funnel"], manifest["funnel"][1:]):
        assert before["kept"] == after["in"]
    for entry in manifest["funnel"]:
        assert entry["in"] == entry["kept"] + entry["dropped"]
        assert (out / entry["folder"] / "manifest.json").is_file()
    kept, rejects = published(out)
    assert kept.num_rows == manifest["kept"] == manifest["funnel"][-1]["kept"]
    assert rejects.num_rows == manifest["dropped"] == records - kept.num_rows
    assert Counter(rejects["stage"].to_pylist()) == Counter({e["stage"]: e["dropped"] for e in manifest["funnel"] if e["dropped"]})
    assert Counter(f"{s}/{r}" for s, r in zip(rejects["stage"].to_pylist(), rejects["rule"].to_pylist())) == manifest["dropped_by_rule"]
    assert all(rejects["reason"].to_pylist()) and all(rejects["rule"].to_pylist())

    # the planted problems were caught, and the judge both kept and dropped
    by_stage = {entry["stage"]: entry["dropped"] for entry in manifest["funnel"]}
    assert by_stage["dedup"] == 1 and by_stage["decontaminate"] >= 1 and 0 < by_stage["judge"] < records
    assert rejects.filter(pc.equal(rejects["stage"], "decontaminate"))["match"].to_pylist()[0].endswith("eval.jsonl#q1")
    assert {"quality", "judge_spread", "judge_rationale"} <= set(kept.column_names)
    assert all(q >= 3.0 for q in kept["quality"].to_pylist())

    tasks = manifest["by_task"]
    assert sum(t["in"] for t in tasks.values()) == records and sum(t["kept"] for t in tasks.values()) == kept.num_rows
    assert Counter(kept["task_type"].to_pylist()) == Counter({name: t["kept"] for name, t in tasks.items() if t["kept"]})
    assert [s["stage"] for s in manifest["stages"]] == stages and manifest["config"]["judge"]["samples"] == 2

    audit = funnel(AuditFolder.open(out))  # the audit reads the same funnel
    assert audit.numbers["stages"] == [{"stage": e["stage"], "in": e["in"], "kept": e["kept"]} for e in manifest["funnel"]]
    assert sum(audit.numbers["drops_per_rule"].values()) == manifest["dropped"]


def test_cli_matches_python_and_a_rerun_is_idempotent(teacher_server: TeacherServerURL, generated: Path, tmp_path: Path, capsys) -> None:
    config = curate_config(tmp_path, teacher_server, generated)
    curate(generated, tmp_path / "python", CurateConfig.load(config))
    served = teacher_server.stats()["requests"]
    assert served > 0

    assert main(["curate", str(generated), str(tmp_path / "cli"), "--config", str(config)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["filter", "judge", "dedup", "decontaminate", "curate", "wrote " + str(tmp_path / "cli")]
    kept, rejects = published(tmp_path / "cli")
    assert lines[4] == f"curate: {kept.num_rows + rejects.num_rows} in -> {kept.num_rows} kept ({rejects.num_rows} dropped over 4 stages)"
    python_kept, python_rejects = published(tmp_path / "python")
    assert kept.equals(python_kept) and rejects.equals(python_rejects)
    cli_requests = teacher_server.stats()["requests"] - served  # its own judge cache: asked again once

    assert main(["curate", str(generated), str(tmp_path / "cli"), "--config", str(config)]) == 0
    assert teacher_server.stats()["requests"] == served + cli_requests  # the rerun: all from the cache
    again_kept, again_rejects = published(tmp_path / "cli")
    assert again_kept.equals(kept) and again_rejects.equals(rejects)
    assert not list((tmp_path / "cli").glob(".tmp-*"))


def test_stage_commands_read_their_section_of_the_curate_config(teacher_server: TeacherServerURL, generated: Path, tmp_path: Path, capsys) -> None:
    config = curate_config(tmp_path, teacher_server, generated)
    assert main(["filter", str(generated), str(tmp_path / "f"), "--config", str(config)]) == 0
    assert main(["judge", str(tmp_path / "f"), str(tmp_path / "j"), "--config", str(config), "--samples", "1"]) == 0
    assert main(["dedup", str(tmp_path / "j"), str(tmp_path / "d")]) == 0
    eval_set = tmp_path / "eval.jsonl"
    assert main(["decontaminate", str(tmp_path / "d"), str(tmp_path / "x"), "--eval", f"{eval_set}:text"]) == 0
    out = capsys.readouterr().out
    assert out.count("wrote ") == 4
    judge_manifest = json.loads((tmp_path / "j" / "manifest.json").read_text())
    assert judge_manifest["config"]["samples"] == 1 and judge_manifest["config"]["thresholds"] == {"quality": 3.0}
    decontaminated = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert decontaminated["report"]["dropped"] >= 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("filters: {lenght: {}}\n", "unknown config key 'filters.lenght'; did you mean 'filters.length'?"),
        ("judge: {teacher: {spec: openai:x}, samples: 0}\n", "judge.samples: 0 is less than the minimum of 1"),
        ("judge: {teacher: openai:x}\n", "judge.teacher: 'openai:x' is not of type 'object'"),
        ("filters: {language: {min_share: 2}}\n", "filters.language.min_share: 2 is greater than the maximum of 1"),
        ("dedup: {bands: 50}\n", "dedup.bands: 50 does not divide num_perm 192"),
        ("filters: false\ndedup: false\n", "every stage is switched off"),
        ("judge: [not, a, mapping]\n", "judge: ['not', 'a', 'mapping'] is not of type 'object'"),
        ("filters: {length: {output: {min_tokens: 1}}\n", "not valid YAML"),
        ("judge: {teacher: {spec: openai:x}, thresholds: {safety: 3}}\n", "judge.thresholds: safety not among the rubric's criteria"),
        ("decontaminate: {eval: [{path: missing.jsonl}]}\n", "decontaminate.eval: no such file or folder: missing.jsonl"),
    ],
)
def test_a_bad_config_is_one_line_error(generated: Path, tmp_path: Path, capsys, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["curate", str(generated), str(tmp_path / "out"), "--config", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and "\n" not in error
    assert not (tmp_path / "out").exists()  # nothing ran: late stages' problems are found before the first stage


def test_missing_config_and_missing_input(generated: Path, tmp_path: Path, capsys) -> None:
    assert main(["curate", str(generated), str(tmp_path / "out"), "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        curate(generated, tmp_path / "out", CurateConfig(filters=None, dedup=None))
    assert main(["decontaminate", str(generated), str(tmp_path / "out")]) == 2
    assert "no evaluation sets" in capsys.readouterr().err
