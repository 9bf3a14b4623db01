"""The judge stage against the real test teacher server over loopback.

The server answers the judge's JSON schema with a deterministic, schema-valid instance whose
integers are drawn from a hash of the request, so every (record, sample) gets pseudo-random scores
in 1..5: enough to check aggregation, thresholds, the spread, failures, the cache and resume, not
the clinical quality of the judge.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import TEST_TEACHER as TEACHER
from fixtures import unjudged, write_output_folder

from mediflow.cli import main
from mediflow.errors import ConfigError, MediflowError
from mediflow.quality import JudgeConfig, run_judge
from mediflow.quality.judge import FAILED_RULE, aggregate
from mediflow.records import JUDGE_SCORE_COLUMNS
from mediflow.testing import TeacherServerURL
from mediflow.testing.server_process import free_port

JUDGE_COLUMNS = [*JUDGE_SCORE_COLUMNS, "judge_spread", "judge_rationale"]


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    return write_output_folder(tmp_path / "in", unjudged())


def config(server: str, **changes) -> JudgeConfig:
    return JudgeConfig.load(None, teacher=TEACHER, base_url=server, progress=False, **changes)


def read(out: Path) -> tuple[pa.Table, pa.Table, dict]:
    kept = pq.read_table(sorted((out / "data").glob("*.parquet")))
    return kept, pq.read_table(out / "rejects.parquet"), json.loads((out / "manifest.json").read_text())


def test_aggregate_mean_median_spread_and_the_typical_rationale() -> None:
    answers = [
        {"rationale": "low", "quality": 1, "realism": 4},
        {"rationale": "typical", "quality": 3, "realism": 4},
        {"rationale": "high", "quality": 5, "realism": 4},
    ]
    mean = aggregate(answers, ["quality", "realism"], "mean")
    assert mean.scores == {"quality": 3.0, "realism": 4.0} and mean.samples == 3
    assert mean.spread == pytest.approx(np.std([1, 3, 5])) and mean.rationale == "typical"
    median = aggregate(answers[:2] + [{"rationale": "x", "quality": 2, "realism": 1}], ["quality", "realism"], "median")
    assert median.scores == {"quality": 2.0, "realism": 4.0}


def test_scores_spread_thresholds_and_an_idempotent_rerun(teacher_server: TeacherServerURL, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "judged"
    records = pq.read_table(sorted((source / "data").glob("*.parquet"))).num_rows
    report = run_judge(source, out, config(teacher_server, samples=3, thresholds={"quality": 3.0, "realism": 2.0}))
    kept, rejects, manifest = read(out)
    assert teacher_server.stats()["requests"] == 3 * records  # one request per (record, sample), no corrections
    assert report.records_in == records and report.kept + report.dropped == records
    assert kept.num_rows == report.kept and rejects.num_rows == report.dropped and 0 < report.kept < records

    for table in (kept, rejects):
        assert set(JUDGE_COLUMNS) <= set(table.column_names)
        for name in JUDGE_SCORE_COLUMNS:
            assert table.schema.field(name).type == pa.float64()
            values = np.array(table.column(name).to_pylist())
            assert ((values >= 1) & (values <= 5)).all()
            assert np.allclose(values * 3, np.round(values * 3))  # the mean of three integer samples
        assert all(0 <= s <= 2 for s in table.column("judge_spread").to_pylist())
        assert all(r for r in table.column("judge_rationale").to_pylist())
    assert any(s > 0 for s in kept.column("judge_spread").to_pylist() + rejects.column("judge_spread").to_pylist())

    assert all(q >= 3.0 and r >= 2.0 for q, r in zip(kept["quality"].to_pylist(), kept["realism"].to_pylist()))
    for reject in rejects.to_pylist():
        criterion = reject["rule"].removeprefix("min_")
        assert reject["stage"] == "judge" and reject["rule"] in ("min_quality", "min_realism")
        assert reject["score"] == reject[criterion] < {"quality": 3.0, "realism": 2.0}[criterion]
        assert reject["reason"].startswith(f"{criterion} {reject[criterion]:.2f} < ") and "spread" in reject["reason"]
    assert manifest["report"]["dropped_by_rule"] == dict(sorted(report.by_rule.items()))
    details = manifest["report"]["details"]
    assert details["judged"] == records and details["samples"] == 3 and details["failed"] == 0
    assert manifest["config"]["rubric_version"] == details["rubric_version"] and "api_key" not in manifest["config"]
    assert (out / "cache.sqlite").is_file()

    served = teacher_server.stats()["requests"]
    again = run_judge(source, out, config(teacher_server, samples=3, thresholds={"quality": 3.0, "realism": 2.0}))
    assert teacher_server.stats()["requests"] == served  # everything from the cache
    assert again.details["usage"]["cache_hits"] == 3 * records
    kept_again, rejects_again, _ = read(out)
    assert kept_again.equals(kept) and rejects_again.equals(rejects)


def test_records_already_judged_keep_their_scores_unless_rejudged(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    records = unjudged()
    for record in records[::2]:
        record.update(quality=4.0, alignment=4.0, coherence=4.0, realism=4.0, difficulty=2.0, judge_rationale="judged before")
    source = write_output_folder(tmp_path / "in", records)
    report = run_judge(source, tmp_path / "out", config(teacher_server, samples=2, thresholds={}))
    kept, rejects, _ = read(tmp_path / "out")
    fresh = len(records) - len(records[::2])
    assert teacher_server.stats()["requests"] == 2 * fresh
    assert report.details["already_judged"] == len(records[::2]) and report.details["judged"] == fresh
    assert rejects.num_rows == 0 and kept.num_rows == len(records)
    before = {r["id"]: r for r in kept.to_pylist() if r["judge_rationale"] == "judged before"}
    assert len(before) == len(records[::2]) and all(r["quality"] == 4.0 and r["difficulty"] == 2.0 for r in before.values())

    rejudged = run_judge(source, tmp_path / "again", config(teacher_server, samples=2, thresholds={}, rejudge=True))
    assert rejudged.details["judged"] == len(records) and rejudged.details["already_judged"] == 0
    assert "judged before" not in read(tmp_path / "again")[0]["judge_rationale"].to_pylist()


def test_garbage_answers_get_corrections_then_on_failure(teacher_server: TeacherServerURL, source: Path, tmp_path: Path) -> None:
    records = pq.read_table(sorted((source / "data").glob("*.parquet"))).num_rows
    teacher_server.control(garbage=1)  # the first answer of each conversation is not JSON
    report = run_judge(source, tmp_path / "corrected", config(teacher_server, samples=1, thresholds={}))
    assert report.kept == records and report.details["correction_turns"] == records and report.details["failed"] == 0

    teacher_server.reset()
    teacher_server.control(garbage=10)  # never valid: every record fails after its correction turns
    dropped = run_judge(source, tmp_path / "dropped", config(teacher_server, samples=2, max_corrections=1))
    _, rejects, _ = read(tmp_path / "dropped")
    assert dropped.kept == 0 and dropped.by_rule == {FAILED_RULE: records}
    assert all(np.isnan(r["score"]) for r in rejects.to_pylist())
    assert all(r["reason"].startswith("judge: all 2 judge samples failed") and "after 1 correction turn" in r["reason"] for r in rejects.to_pylist())
    assert teacher_server.stats()["requests"] == records * 2 * 2  # each sample: the answer and one correction

    kept = run_judge(source, tmp_path / "kept", config(teacher_server, samples=2, max_corrections=1, on_failure="keep"))
    table = read(tmp_path / "kept")[0]
    assert kept.kept == records and kept.details["failed"] == records
    assert table["quality"].null_count == records and table["judge_spread"].null_count == records


def test_a_teacher_that_is_down_is_one_error_and_leaves_the_output_alone(teacher_server: TeacherServerURL, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_judge(source, out, config(teacher_server, samples=1, thresholds={}))
    published = {path: path.read_bytes() for path in [*(out / "data").glob("*.parquet"), out / "rejects.parquet", out / "manifest.json"]}

    down = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(MediflowError, match="^cannot connect to the teacher at http://127.0.0.1:") as error:
        run_judge(source, out, config(down, samples=1, rejudge=True, **{"limits.max_retries": 0}, cache=str(tmp_path / "empty.sqlite")), overwrite=True)
    assert "\n" not in str(error.value)
    assert {path: path.read_bytes() for path in published} == published
    assert not list(out.glob(".tmp-*"))

    fresh = tmp_path / "never"
    code = main(["judge", str(source), str(fresh), "--teacher", TEACHER, "--base-url", down, "--no-progress"])
    assert code == 2 and not list(fresh.glob("data/*.parquet"))
    failed = json.loads((fresh / "manifest.json").read_text())
    assert failed["status"] == "failed" and "teacher at" in failed["reason"]  # the folder says why it holds nothing


def test_bad_input_is_a_one_line_error(teacher_server: TeacherServerURL, source: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="judge.thresholds: safety not among the rubric's criteria"):
        run_judge(source, tmp_path / "a", config(teacher_server, thresholds={"safety": 3.0}))
    with pytest.raises(ConfigError, match="judge: no teacher"):
        run_judge(source, tmp_path / "b", JudgeConfig())
    with pytest.raises(ConfigError, match="^samples: 0 is less than the minimum of 1"):
        JudgeConfig(samples=0)
    with pytest.raises(ConfigError, match="^judge.samples: 0 is less than the minimum of 1"):
        JudgeConfig.load({"judge": {"samples": 0}}, section="judge")
    assert main(["judge", str(tmp_path / "missing"), str(tmp_path / "c"), "--teacher", TEACHER, "--base-url", teacher_server]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "missing: no such file or folder" in error and "\n" not in error
    assert teacher_server.stats()["requests"] == 0


def test_a_user_rubric_adds_a_criterion_column(teacher_server: TeacherServerURL, source: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    rubric = (Path(__file__).parents[1] / "prompts" / "judge.yaml").read_text()
    safety = "  - name: safety\n    question: Is the answer safe to act on?\n    anchors:\n" + "".join(f"      {point}: level {point}\n" for point in range(1, 6))
    (prompts / "judge.yaml").write_text(rubric.replace("system: |", safety + "system: |", 1))
    report = run_judge(source, tmp_path / "out", config(teacher_server, samples=1, rubric=str(prompts), thresholds={"safety": 2.0}))
    kept, rejects, _ = read(tmp_path / "out")
    assert report.details["criteria"][-1] == "safety" and "safety" in kept.column_names
    assert set(report.by_rule) <= {"min_safety"} and all(s < 2.0 for s in rejects["safety"].to_pylist())

    (prompts / "judge.yaml").write_text(rubric.replace("      5: correct, complete, precise and directly usable by a clinician\n", ""))
    with pytest.raises(MediflowError, match="criterion 'quality': 'anchors' must give one text for each point 1..5"):
        run_judge(source, tmp_path / "bad", config(teacher_server, rubric=str(prompts)))


def test_sigkill_then_rerun_requests_only_what_was_in_flight(start_teacher_server, tmp_path: Path) -> None:
    server = start_teacher_server("--latency", "0.05")
    source = write_output_folder(tmp_path / "in", unjudged(documents=30))
    records = pq.read_table(sorted((source / "data").glob("*.parquet"))).num_rows
    curate_yaml = tmp_path / "judge.yaml"
    curate_yaml.write_text(json.dumps({"judge": {"samples": 2, "limits": {"concurrency": 4}, "batch_records": 8}}))
    command = [sys.executable, "-m", "mediflow", "judge", str(source), str(tmp_path / "out"), "--config", str(curate_yaml), "--teacher", TEACHER, "--base-url", server, "--no-progress"]
    env = {**os.environ, "OPENAI_API_KEY": "unused"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while server.stats()["served"] < 30 and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert server.stats()["served"] < 2 * records
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "running"  # killed: never "finished"
    assert not list((tmp_path / "out" / "data").glob("*.parquet"))

    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert finished.returncode == 0, finished.stderr
    repeated = sum(count - 1 for count in server.stats()["by_key"].values())
    assert repeated <= 4  # at most the requests in flight at the kill (concurrency 4)
    assert len(server.stats()["by_key"]) == 2 * records
    assert read(tmp_path / "out")[2]["report"]["in"] == records
