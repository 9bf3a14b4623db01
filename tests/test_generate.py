"""`generate()` and `mediflow generate` end to end: the real openai client against the test teacher."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml
from fixtures import small_run_config

from mediflow import generate
from mediflow.cli import main
from mediflow.records import GENERATION_SCHEMA, record_id
from mediflow.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def taxonomy():
    return load_taxonomy()


def _config(base_url: str | None, out: Path, **extra) -> dict:
    return small_run_config(base_url, out, **{"limits": {"concurrency": 8, "max_retries": 2}, "output": {"dir": str(out), "shard_size": 3}, **extra})


def _records(out: Path):
    return pq.read_table(sorted(str(p) for p in (out / "data").glob("part-*.parquet")))


def test_generate_writes_valid_records_both_formats_and_reruns_from_cache(taxonomy, teacher_server, tmp_path) -> None:
    out = tmp_path / "run"
    dataset = generate(_config(teacher_server, out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert len(dataset) == manifest["counts"]["records"] == 8 and manifest["counts"]["rejects"] == 0
    assert dataset.column_names == GENERATION_SCHEMA.names
    assert pq.read_schema(next((out / "data").glob("*.parquet"))).remove_metadata().equals(GENERATION_SCHEMA)
    assert {row["output_format"] for row in dataset} == {"json", "plain_text"}
    for row in dataset:
        assert row["id"] == record_id(row["instruction"], row["input"], row["output"], row["task_type"], row["output_format"])
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][0]["content"] == row["instruction"] and row["messages"][1]["content"] == row["input"]
        assert row["usage"]["prompt_tokens"] > 0 and row["teacher"] == "openai:mediflow-test-teacher"
        if row["output_format"] == "json":
            jsonschema.validate(json.loads(row["output"]), taxonomy.tasks[row["task_type"]].output_schema)
    assert manifest["prompt_versions"].keys() >= {"document", "instruction", "response_json", "correction"}
    assert manifest["icd10cm_release"] and manifest["taxonomy_version"] == taxonomy.version
    assert sum(sum(c.values()) for c in manifest["counts"]["cells"].values()) == 8
    served = teacher_server.stats()["requests"]
    assert served == 3 * 8  # document, instruction, response per record; no retries, no corrections

    again = generate(_config(teacher_server, out))  # a rerun: nothing re-requested, same records
    assert teacher_server.stats()["requests"] == served
    assert again["id"] == dataset["id"]


def test_instruction_reuse_shares_instructions(taxonomy, teacher_server, tmp_path) -> None:
    out = tmp_path / "reuse"
    dataset = generate(_config(teacher_server, out, per_cell=4, documents_per_instruction=4))
    assert len(set(dataset["instruction_id"])) < len(dataset) / 2


def test_correction_turns_fix_invalid_json(taxonomy, teacher_server, tmp_path) -> None:
    teacher_server.control(garbage=1)  # the first answer of every conversation is invalid JSON
    out = tmp_path / "corrected"
    dataset = generate(_config(teacher_server, out, max_corrections=1))
    assert len(dataset) == 8
    for row in dataset.filter(lambda r: r["output_format"] == "json"):
        jsonschema.validate(json.loads(row["output"]), taxonomy.tasks[row["task_type"]].output_schema)


def test_json_still_invalid_after_corrections_goes_to_rejects_with_raw_text(taxonomy, teacher_server, tmp_path) -> None:
    teacher_server.control(garbage=5)
    out = tmp_path / "rejected"
    dataset = generate(_config(teacher_server, out, max_corrections=1))
    assert set(dataset["output_format"]) == {"plain_text"} and len(dataset) == 4
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert len(rejects) == 4
    for reject in rejects:
        assert reject["stage"] == "response" and reject["output_format"] == "json"
        assert reject["raw_text"] and "after 1 correction turn" in reject["reason"]
        assert reject["corrections"] == 1 and reject["instruction"] and reject["input"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rejects"] == 4 and manifest["failures"][0]["stage"] == "response"


def test_generate_inside_a_running_event_loop(taxonomy, teacher_server, tmp_path) -> None:
    async def notebook_cell():
        return generate(_config(teacher_server, tmp_path / "nb"), per_cell=1, json_share=0.0)

    dataset = asyncio.run(notebook_cell())
    assert len(dataset) == 4 and set(dataset["output_format"]) == {"plain_text"}


def test_teacher_down_stops_with_a_clear_error_and_keeps_what_was_done(taxonomy, teacher_server, tmp_path, capsys) -> None:
    out = tmp_path / "down"
    config_path = tmp_path / "run.yaml"
    config = _config(teacher_server, out, limits={"concurrency": 1, "max_retries": 0}, per_cell=1)
    config["output"]["shard_size"] = 1
    config_path.write_text(yaml.safe_dump(config))
    teacher_server.control(sequence=["ok"] * 6 + ["500"] * 50)  # two records, then the server fails
    assert main(["generate", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: teacher at http://127.0.0.1:")
    assert "rerun the same command to resume" in err[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["counts"]["records"] == 2
    assert len(_records(out)) == 2

    teacher_server.reset()
    assert main(["generate", "--config", str(config_path)]) == 0
    assert len(_records(out)) == 4
    assert max(teacher_server.stats()["by_key"].values()) == 1  # nothing answered before was asked again


def test_cli_errors_are_one_line(taxonomy, teacher_server, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("per_cel: 2\n")
    assert main(["generate", "--config", str(bad)]) == 2
    assert capsys.readouterr().err == "error: unknown config key 'per_cel'; did you mean 'per_cell'?\n"

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_config(teacher_server, tmp_path / "x")))
    assert main(["generate", "--config", str(good), "--tasks", "summarise_everything"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tasks: unknown name 'summarise_everything'") and "known:" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_help_lists_the_overrides(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    for flag in ("--config", "--out", "--teacher", "--base-url", "--tasks", "--document-types", "--per-cell", "--seed", "--concurrency", "--json-share", "--difficulty", "--no-progress", "--max-records"):
        assert flag in text


def _start(config: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mediflow", "generate", "--config", str(config), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_sigkill_then_rerun_gives_the_uninterrupted_records(taxonomy, start_teacher_server, tmp_path) -> None:
    server = start_teacher_server("--latency", "0.03")
    config = _config(server, tmp_path / "unused", per_cell=3, documents_per_instruction=2)
    config["limits"] = {"concurrency": 4}
    config["document_types"] = None  # every compatible type: ~100 records
    config["max_records"] = 90
    config["output"]["shard_size"] = 6
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))

    killed = tmp_path / "killed"
    process = _start(path, killed)
    deadline = time.monotonic() + 60
    while len(list((killed / "data").glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list((killed / "data").glob("part-*.parquet")))
    assert 3 <= done_before < 15  # killed mid-run
    resumed = _start(path, killed)
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read().decode()
    repeated = sum(count - 1 for count in server.stats()["by_key"].values())
    assert repeated <= 4  # at most the requests in flight at the kill (concurrency 4), none of a finished record

    server.reset()
    clean = tmp_path / "clean"
    uninterrupted = _start(path, clean)
    assert uninterrupted.wait(timeout=120) == 0, uninterrupted.stderr.read().decode()
    a, b = _records(killed).drop(["created_at"]), _records(clean).drop(["created_at"])
    assert a.num_rows == b.num_rows == 90
    assert a.equals(b)
    assert len(set(a["id"].to_pylist())) == 90


@pytest.mark.slow
def test_embedded_local_teacher_end_to_end(taxonomy, tmp_path) -> None:
    pytest.importorskip("llama_cpp")
    config = _config(None, tmp_path / "local", per_cell=1, json_share=0.5)
    config["teacher"] = {"spec": "local"}
    config["document_types"] = config["document_types"][:1]
    config["tasks"] = config["tasks"][:1]
    config["limits"] = {"concurrency": 1, "max_retries": 0, "error_rate_threshold": 1.0, "request_timeout": 600}
    config["max_corrections"] = 0
    config["sampling"] = {k: {"max_tokens": 48} for k in ("document", "instruction")}
    config["sampling"]["response"] = {"max_tokens": 96}
    dataset = generate(config)
    manifest = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["teacher"].startswith("local")
    assert len(dataset) + manifest["counts"]["rejects"] == manifest["plan"]["items"] >= 1
    for row in dataset:
        assert row["input"] and row["instruction"] and row["output"]


def test_every_transport_fault_is_survived_and_leaves_the_records_unchanged(taxonomy, teacher_server, tmp_path) -> None:
    """429 with Retry-After, 500, a hang, a malformed body and a cut body, each retried: same records as a clean run."""
    limits = {"concurrency": 4, "max_retries": 4, "request_timeout": 5.0}  # only the hang reaches it, however loaded the machine
    teacher_server.control(sequence=["429", "ok", "500", "ok", "hang", "ok", "malformed", "ok", "cut", "429"], retry_after=0.05)
    faulty = generate(_config(teacher_server, tmp_path / "faulty", limits=limits))
    stats = teacher_server.stats()
    assert stats["faults"] == {"429": 2, "500": 1, "hang": 1, "malformed": 1, "cut": 1}
    assert stats["max_in_flight"] <= limits["concurrency"]
    session = json.loads((tmp_path / "faulty" / "manifest.json").read_text())["session"]
    assert session["errors"] == {"rate_limited": 2, "server_error": 1, "timeout": 1, "malformed": 1, "connection": 1}

    teacher_server.reset()
    clean = generate(_config(teacher_server, tmp_path / "clean", limits=limits))
    assert len(faulty) == len(clean) == 8
    assert faulty.remove_columns("created_at").to_list() == clean.remove_columns("created_at").to_list()


def test_the_api_key_is_never_written_or_printed(taxonomy, teacher_server, tmp_path, capsys, caplog, monkeypatch) -> None:
    secret = "sk-mediflow-test-secret-4242"
    monkeypatch.setenv("MEDIFLOW_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "keyed"
    config = _config(teacher_server, out, progress=True)
    config["teacher"]["api_key_env"] = "MEDIFLOW_TEST_KEY"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    teacher_server.control(sequence=["500", "429"], retry_after=0.05)
    assert main(["generate", "--config", str(config_path)]) == 0
    captured = capsys.readouterr()
    files = [path for path in out.rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"cache.sqlite", "manifest.json", "rejects.parquet"}
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in captured.out + captured.err
    assert "MEDIFLOW_TEST_KEY" in (out / "manifest.json").read_text()  # named, never its value
    assert caplog.records and not [r for r in caplog.records if secret in r.getMessage()]
