"""Batch mode (``--batch``): provider batch APIs for every teacher stage, against the test teacher's emulation.

The test teacher answers a batch line exactly as it answers the same body online, so a batch run
and an online run get the same answers: their records must be the same. Everything here goes
through the real ``openai`` SDK, a real loopback HTTP server and real files.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pyarrow.parquet as pq
import pytest
import yaml
from fixtures import TEST_TEACHER, make_records, small_run_config, write_output_folder

from mediflow.batch.config import BatchConfig
from mediflow.batch.files import RoundWriter, read_results
from mediflow.batch.providers import run_batch_command
from mediflow.batch.state import load_state
from mediflow.cli import main
from mediflow.config import load_config
from mediflow.configuration import Config, option
from mediflow.engine import LimitsConfig
from mediflow.errors import MediflowError
from mediflow.pipeline.dry_run import dry_run
from mediflow.pipeline.run import run
from mediflow.preference import PairsConfig, build_pairs
from mediflow.quality import run_judge
from mediflow.quality.config import JudgeConfig
from mediflow.steps import Answer, LLMStep, Reject, run_llm_stage
from mediflow.teachers.base import ChatRequest
from mediflow.teachers.factory import TeacherConfig
from mediflow.testing import TeacherServerURL

ROOT = Path(__file__).resolve().parents[1]
FAST = {"poll_interval": 0.02}


def generate_config(server: str, out: Path, *, mode: str = "online", **extra: Any) -> dict[str, Any]:
    config = small_run_config(server, out, mode=mode, **{"batch": FAST, **extra})
    config["limits"] = {"backoff_initial": 0.01, "backoff_max": 0.05}
    return config


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the column that says when a run happened, NaN as None (NaN != NaN)."""
    return [{name: None if value != value else value for name, value in row.items() if name != "created_at"} for row in rows]


def table(folder: Path) -> list[dict[str, Any]]:
    """A folder's kept rows (see :func:`_comparable`)."""
    return _comparable(pq.read_table(sorted((folder / "data").glob("*.parquet"))).to_pylist())


def rejects(folder: Path) -> list[dict[str, Any]]:
    path = folder / "rejects.parquet"
    return _comparable(pq.read_table(path).to_pylist() if path.is_file() else [])


# -- the test teacher's batch service --------------------------------------------------------------


def _lines(count: int, start: int = 0) -> bytes:
    body = lambda i: {"model": "m", "messages": [{"role": "user", "content": f"note {i}"}], "max_tokens": 200}  # noqa: E731
    return "".join(json.dumps({"custom_id": f"k{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i)}) + "\n" for i in range(start, start + count)).encode()


def _wait(client: openai.OpenAI, batch_id: str) -> Any:
    seen = []
    for _ in range(500):
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch, seen
        time.sleep(0.01)
    raise AssertionError(f"batch {batch_id} did not finish: {seen}")


def test_the_test_teacher_emulates_the_batch_api_through_the_sdk(teacher_server: TeacherServerURL) -> None:
    teacher_server.control(batch_step=0.05, batch_line_errors=1)
    client = openai.OpenAI(base_url=teacher_server, api_key="unused", max_retries=0)
    uploaded = client.files.create(file=("in.jsonl", _lines(4)), purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"mediflow_run": "r"})
    batch, seen = _wait(client, created.id)
    assert seen[0] == "validating" and seen[-1] == "completed" and "in_progress" in seen
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (4, 3, 1)
    assert batch.metadata == {"mediflow_run": "r"}
    output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    errors = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert [line["response"]["status_code"] for line in output] == [200, 200, 200]
    assert errors[0]["response"]["status_code"] == 500 and errors[0]["custom_id"] == "k0"
    online = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "note 1"}], max_tokens=200)
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == online.choices[0].message.content  # a line is answered as online

    teacher_server.control(batch_expire=1)
    expired, _ = _wait(client, client.batches.create(input_file_id=client.files.create(file=("e.jsonl", _lines(4, 10)), purpose="batch").id, endpoint="/v1/chat/completions", completion_window="24h").id)
    assert expired.status == "expired" and expired.request_counts.completed == 2
    assert {json.loads(line)["error"]["code"] for line in client.files.content(expired.error_file_id).text.splitlines()} == {"batch_expired"}

    teacher_server.control(batch_max_lines=3, batch_step=0.5)
    failed, _ = _wait(client, client.batches.create(input_file_id=client.files.create(file=("f.jsonl", _lines(4, 20)), purpose="batch").id, endpoint="/v1/chat/completions", completion_window="24h").id)
    assert failed.status == "failed" and "over the limit of 3" in failed.errors.data[0].message
    running = client.batches.create(input_file_id=client.files.create(file=("c.jsonl", _lines(2, 30)), purpose="batch").id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.cancel(running.id).status == "cancelling"
    assert _wait(client, running.id)[0].status == "cancelled"
    assert [batch.id for batch in client.batches.list(limit=2).data] == [running.id, failed.id]  # newest first
    assert len(list(client.batches.list(limit=2))) == 4  # the SDK pages through all of them
    assert teacher_server.stats()["batches_created"] == 4

    teacher_server.control(batch_api=False)
    with pytest.raises(openai.NotFoundError):
        client.batches.list()


# -- batch files -----------------------------------------------------------------------------------


def _request(index: int, words: int = 5) -> ChatRequest:
    return ChatRequest(messages=(("user", f"request {index} " + "word " * words),), max_tokens=10)


def _line(key: str, request: ChatRequest) -> dict[str, Any]:
    return {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": {"messages": request.message_dicts()}}


def test_a_round_is_split_at_the_line_and_byte_limits_and_a_key_is_one_line(tmp_path: Path) -> None:
    writer = RoundWriter(tmp_path, "round-001-teacher", _line, max_lines=3, max_bytes=10_000)
    for index in [*range(7), 2, 5]:  # two keys deferred twice: one line each
        writer.defer(f"k{index}", _request(index))
    files = writer.close()
    assert [file.lines for file in files] == [3, 3, 1]
    assert [json.loads(line)["custom_id"] for file in files for line in file.path.read_text().splitlines()] == [f"k{i}" for i in range(7)]
    assert not list(tmp_path.glob("*.part"))

    one_line = len(json.dumps(_line("k0", _request(0, words=40)), separators=(",", ":"))) + 1
    by_bytes = RoundWriter(tmp_path, "round-002-teacher", _line, max_lines=100, max_bytes=int(one_line * 2.5))
    for index in range(5):
        by_bytes.defer(f"k{index}", _request(index, words=40))
    assert [file.lines for file in by_bytes.close()] == [2, 2, 1]
    assert all(file.size <= one_line * 2.5 for file in by_bytes.files)
    with pytest.raises(MediflowError, match="does not fit a batch file"):
        RoundWriter(tmp_path, "round-003-teacher", _line, max_lines=10, max_bytes=one_line - 1).defer("big", _request(0, words=40))


def test_a_result_file_that_is_not_batch_results_is_one_error(tmp_path: Path) -> None:
    good = {"id": "r", "custom_id": "k", "response": {"status_code": 200, "body": {"choices": []}}, "error": None}
    (tmp_path / "out.jsonl").write_text(json.dumps(good) + "\n" + '{"custom_id": "k2", "response": {"body": {}}\n')
    with pytest.raises(MediflowError, match=r"batch b: its output file f is not a batch result file \(line 2"):
        list(read_results(tmp_path / "out.jsonl", "batch b: its output file f"))


# -- generate -> judge -> pairs, batch vs online ---------------------------------------------------


def _chain(server: TeacherServerURL, out: Path, mode: str) -> dict[str, Path]:
    server.reset()
    server.control(garbage=1, batch_step=0.01)  # every JSON answer's first try is invalid: a correction round
    generate_dir, judged, pairs = out / "generate", out / "judged", out / "pairs"
    config = generate_config(server, generate_dir, mode=mode)
    config["sampling"] = {"response": {"max_tokens": 90}}  # some plain answers are cut: a retry round
    run(load_config(config))
    server.control(garbage=0)
    teacher = TeacherConfig(TEST_TEACHER, str(server))
    run_judge(generate_dir, judged, JudgeConfig(teacher=teacher, samples=2, progress=False, mode=mode, batch=BatchConfig(**FAST), thresholds={}))
    build_pairs(judged, pairs, PairsConfig(teacher=teacher, max_records=6, progress=False, mode=mode, batch=BatchConfig(**FAST)))
    if mode == "batch":
        assert server.stats()["requests"] == 0  # not one online request: every answer came in a batch
    return {"generate": generate_dir, "judge": judged, "pairs": pairs}


def test_batch_generate_judge_pairs_give_the_online_records(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    batch = _chain(teacher_server, tmp_path / "batch", "batch")
    batch_answers = Counter(teacher_server.stats()["batch_lines"])
    online = _chain(teacher_server, tmp_path / "online", "online")
    # the same distinct requests (online also retries a JSON answer cut at max_tokens; a batch takes it as it is)
    assert len(teacher_server.stats()["by_key"]) == len(batch_answers) and set(batch_answers.values()) == {1}
    for stage in ("generate", "judge", "pairs"):
        assert table(batch[stage]) == table(online[stage]), stage
        assert rejects(batch[stage]) == rejects(online[stage]), stage
        assert table(batch[stage]), stage
    manifest = json.loads((batch["generate"] / "manifest.json").read_text())
    assert manifest["counts"] == json.loads((online["generate"] / "manifest.json").read_text())["counts"]
    rounds = manifest["batch"]["lines_per_round"]
    assert len(rounds) >= 4  # documents, instructions, responses, then corrections and retries
    assert manifest["session"]["mode"] == "batch" and manifest["session"]["batch"]["requests"] == manifest["batch"]["answered"]
    assert any(row["output_format"] == "json" for row in table(batch["generate"]))
    judge_details = json.loads((batch["judge"] / "manifest.json").read_text())["report"]["details"]
    assert judge_details["batch"]["rounds"] >= 1 and judge_details["usage"]["mode"] == "batch"
    pairs_manifest = json.loads((batch["pairs"] / "manifest.json").read_text())
    assert pairs_manifest["batch"]["rounds"] >= 2  # the rewrite, then the pair judge on it


def test_train_qa_in_batch_mode_gives_the_online_rows(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    documents = tmp_path / "docs.jsonl"
    documents.write_text("".join(json.dumps({"id": f"n{i}", "text": f"Discharge summary {i}. Treated with amoxicillin."}) + "\n" for i in range(3)))
    outputs = {}
    for mode in ("batch", "online"):
        teacher_server.reset()
        config = tmp_path / f"{mode}.yaml"
        config.write_text(yaml.safe_dump({"qa": {"teacher": {"spec": TEST_TEACHER, "base_url": str(teacher_server)}, "qa_pairs": 2, "batch": FAST}, "data": {"documents": str(documents)}, "output": {"dir": str(tmp_path / mode)}}))
        assert main(["train", "qa", "--config", str(config), *(["--batch"] if mode == "batch" else [])]) == 0
        outputs[mode] = table(tmp_path / mode)
        if mode == "batch":
            assert teacher_server.stats()["requests"] == 0 and teacher_server.stats()["batches_created"] >= 1
    assert outputs["batch"] == outputs["online"] and len(outputs["batch"]) > 3


@dataclass
class _SummaryConfig(Config):
    teacher: TeacherConfig = option(TeacherConfig(), "who writes the summaries")
    limits: LimitsConfig = option(LimitsConfig(concurrency=4), "how hard to push it")


class _SummaryStep(LLMStep[dict[str, Any], str]):
    reject_truncated = True

    def request(self, row: dict[str, Any]) -> ChatRequest:
        return ChatRequest(messages=(("user", f"Summarise this note in a few words: {row['input']}"),), max_tokens=100, seed=3)

    def parse(self, row: dict[str, Any], answer: Answer) -> str | Reject:
        return answer.text.strip() or Reject("empty")


def test_run_llm_stage_in_batch_mode_gives_the_online_folder(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    source = write_output_folder(tmp_path / "records", make_records(documents=6))
    config = _SummaryConfig(teacher=TeacherConfig(TEST_TEACHER, str(teacher_server)))
    outputs = {}
    for mode in ("batch", "online"):
        teacher_server.reset()
        teacher_server.control(batch_step=0.01)
        result = run_llm_stage(source, tmp_path / mode, _SummaryStep(), config, kind="summary", column="summary", mode=mode, batch=BatchConfig(**FAST))  # type: ignore[arg-type]
        outputs[mode] = (table(tmp_path / mode), rejects(tmp_path / mode), result.kept)
        if mode == "batch":
            assert teacher_server.stats()["requests"] == 0 and teacher_server.stats()["batches_created"] >= 2  # a round for the cut answers' retries
            assert json.loads((tmp_path / mode / "manifest.json").read_text())["batch"]["rounds"] >= 2
    assert outputs["batch"] == outputs["online"] and outputs["batch"][2] > 0


# -- resume and faults -----------------------------------------------------------------------------


def _start(config: Path, *flags: str) -> subprocess.Popen[bytes]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-m", "mediflow", "generate", "--config", str(config), *flags], stderr=subprocess.PIPE, env=env)


def _submitted(out: Path) -> int:
    try:
        state = load_state(out)
    except MediflowError:  # caught mid-write? the writer is atomic: never
        raise
    return 0 if state is None else sum(record.id is not None for record in state.records)


def test_a_kill_between_submit_and_download_then_a_rerun_submits_nothing_twice(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(batch_step=1.5)  # a batch takes seconds: the kill lands while it runs
    out = tmp_path / "killed"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(generate_config(teacher_server, out, batch={"poll_interval": 0.05, "max_lines": 3})))
    process = _start(config, "--batch")
    deadline = time.monotonic() + 120
    while _submitted(out) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.stderr is not None:
        process.stderr.close()
    assert teacher_server.stats()["batch_lines"] == {}  # killed before any batch was answered
    recorded = load_state(out)
    assert recorded is not None and any(record.id is not None and record.outstanding for record in recorded.records)

    assert main(["batches", str(out)]) == 0  # lists the killed run's batches as recorded
    teacher_server.control(batch_step=0.01)
    assert main(["generate", "--config", str(config), "--batch"]) == 0
    submitted = teacher_server.stats()["batch_submitted"]
    assert submitted and set(submitted.values()) == {1}  # every request in exactly one batch: nothing submitted twice
    state = load_state(out)
    assert state is not None and state.run == recorded.run and not any(record.outstanding for record in state.records)
    assert teacher_server.stats()["batches_created"] == sum(record.id is not None for record in state.records)

    teacher_server.reset()
    online = tmp_path / "online"
    run(load_config(generate_config(teacher_server, online)))
    assert table(out) == table(online)


class _Killed(BaseException):
    """Stands for a SIGKILL at one exact point (a subprocess cannot be killed that precisely)."""


def test_a_kill_between_create_and_its_record_finds_the_batch_instead_of_creating_it_again(teacher_server: TeacherServerURL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state says ``uploaded`` (recorded before the create call), the provider already has the batch:
    the rerun finds it by its metadata and waits for it; nothing is created twice."""
    from mediflow.batch.providers import OpenAIBatchAPI

    teacher_server.control(batch_step=0.01)
    create = OpenAIBatchAPI.create
    calls = Counter[str]()

    async def create_then_die(self: OpenAIBatchAPI, input_file_id: str, metadata: Any, window: str) -> Any:
        info = await create(self, input_file_id, metadata, window)
        calls["created"] += 1
        if calls["created"] == 1:
            raise _Killed()  # the batch exists at the provider; the state still says "uploaded"
        return info

    monkeypatch.setattr(OpenAIBatchAPI, "create", create_then_die)
    out = tmp_path / "run"
    config = load_config(generate_config(teacher_server, out, mode="batch"))
    with pytest.raises(_Killed):
        run(config)
    recorded = load_state(out)
    assert recorded is not None and [record.status for record in recorded.records] == ["uploaded"]
    run(config)
    stats = teacher_server.stats()
    assert set(stats["batch_submitted"].values()) == {1}  # the first file's batch was found, not created again
    assert stats["batches_created"] == calls["created"] == len(load_state(out).records)  # type: ignore[union-attr]


def test_a_kill_before_the_upload_drops_the_file_and_asks_its_requests_again(teacher_server: TeacherServerURL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mediflow.batch.providers import OpenAIBatchAPI

    teacher_server.control(batch_step=0.01)
    upload = OpenAIBatchAPI.upload

    async def die(self: OpenAIBatchAPI, path: Path) -> str:
        raise _Killed()

    monkeypatch.setattr(OpenAIBatchAPI, "upload", die)
    out = tmp_path / "run"
    config = load_config(generate_config(teacher_server, out, mode="batch"))
    with pytest.raises(_Killed):
        run(config)
    state = load_state(out)
    assert state is not None and [record.status for record in state.records] == ["prepared"] and (out / "batches" / state.records[0].file).is_file()
    monkeypatch.setattr(OpenAIBatchAPI, "upload", upload)
    run(config)
    assert not (out / "batches" / state.records[0].file).exists()
    assert teacher_server.stats()["files_uploaded"] > 0 and set(teacher_server.stats()["batch_submitted"].values()) == {1}


def test_an_expired_batch_and_failed_lines_are_completed_by_resubmitting_only_those(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(batch_step=0.01, batch_expire=1, batch_line_errors=2)
    out = tmp_path / "batch"
    run(load_config(generate_config(teacher_server, out, mode="batch", documents_per_instruction=2)))
    stats = teacher_server.stats()
    twice = {key for key, count in stats["batch_submitted"].items() if count == 2}
    first = load_state(out).records[0]  # type: ignore[union-attr]
    # the first batch expired after answering half its lines, two of which failed (HTTP 500)
    assert first.status == "expired" and first.stored == first.lines // 2 - 2 and first.unanswered == first.lines - first.stored
    assert len(twice) == first.unanswered  # exactly the expired half and the two failed lines went again, nothing else
    assert set(stats["batch_submitted"].values()) == {1, 2}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["batch"]["asked_again"] == len(twice)

    teacher_server.reset()
    online = tmp_path / "online"
    run(load_config(generate_config(teacher_server, online, documents_per_instruction=2)))
    assert table(out) == table(online)


def test_a_line_that_keeps_failing_stops_the_run_and_a_rerun_finishes(teacher_server: TeacherServerURL, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher_server.control(batch_step=0.01, batch_line_errors=2)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(generate_config(teacher_server, tmp_path / "out", batch={**FAST, "line_attempts": 1})))
    assert main(["generate", "--config", str(config), "--batch"]) == 2
    error = _the_error_line(capsys.readouterr().err)
    assert "failed in 1 batches (batch.line_attempts)" in error and "HTTP 500" in error
    assert main(["generate", "--config", str(config), "--batch"]) == 0  # the failed lines go again; the rest came from the cache


def test_batch_mode_shares_joined_give_the_unsharded_online_records(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(batch_step=0.01)
    for share in (1, 2):
        run(load_config(generate_config(teacher_server, tmp_path / f"share{share}", mode="batch", shard=f"{share}/2")))
    assert main(["join", str(tmp_path / "joined"), str(tmp_path / "share1"), str(tmp_path / "share2")]) == 0
    assert teacher_server.stats()["requests"] == 0
    teacher_server.reset()
    run(load_config(generate_config(teacher_server, tmp_path / "online")))
    assert table(tmp_path / "joined") == table(tmp_path / "online")


def test_a_round_over_the_limits_is_split_and_a_provider_with_lower_limits_is_one_error(teacher_server: TeacherServerURL, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher_server.control(batch_step=0.01)
    out = tmp_path / "split"
    run(load_config(generate_config(teacher_server, out, mode="batch", batch={**FAST, "max_lines": 3, "in_flight": 2})))
    state = load_state(out)
    assert state is not None
    first_round = [record.lines for record in state.records if record.round == 1]
    assert first_round == [3, 3, 2] and all(record.lines <= 3 for record in state.records)

    teacher_server.control(batch_max_lines=2)  # the provider takes fewer lines than the config allows
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(generate_config(teacher_server, tmp_path / "over", batch={**FAST, "max_lines": 3})))
    assert main(["generate", "--config", str(config), "--batch"]) == 2
    error = _the_error_line(capsys.readouterr().err)
    assert "failed validation" in error and "over the limit of 2" in error and "batch.max_lines" in error


def test_an_azure_deployment_in_batch_mode_gives_the_online_records(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    """``azure:DEPLOYMENT``: the SDK's AzureOpenAI client, Azure's routes and its deployment-relative batch endpoint."""
    teacher = {"spec": "azure:mediflow-test-teacher", "base_url": teacher_server.root}
    outputs = {}
    for mode in ("batch", "online"):
        teacher_server.reset()
        teacher_server.control(batch_step=0.01)
        run(load_config(generate_config(teacher_server, tmp_path / mode, mode=mode, teacher=teacher)))
        stats = teacher_server.stats()
        if mode == "batch":
            assert stats["requests"] == 0 and stats["batches_created"] >= 3  # documents, instructions, responses
            azure = openai.AzureOpenAI(azure_endpoint=teacher_server.root, api_key="unused", api_version="2024-10-21")
            batches = list(azure.batches.list(limit=100))
            assert len(batches) == stats["batches_created"] and {batch.endpoint for batch in batches} == {"/chat/completions"}
            lines = [json.loads(line) for batch in batches for line in azure.files.content(batch.input_file_id).text.splitlines()]
            assert len(lines) == sum(stats["batch_lines"].values()) and {line["url"] for line in lines} == {"/chat/completions"}
            assert {line["body"]["model"] for line in lines} == {"mediflow-test-teacher"}
        else:
            assert stats["requests"] > 0 and stats["batches_created"] == 0
        outputs[mode] = (table(tmp_path / mode), rejects(tmp_path / mode))
    assert outputs["batch"] == outputs["online"] and outputs["batch"][0]


def test_a_provider_that_takes_another_upload_purpose_is_one_error_and_batch_file_purpose_reaches_it(teacher_server: TeacherServerURL, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Together takes batch input files with purpose ``batch-api``, not OpenAI's ``batch``: ``batch.file_purpose`` says so."""
    teacher_server.control(batch_step=0.01, batch_purpose="batch-api")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(generate_config(teacher_server, tmp_path / "default")))
    assert main(["generate", "--config", str(config), "--batch"]) == 2
    error = _the_error_line(capsys.readouterr().err)
    assert "uploading" in error and "batch-api" in error and "set batch.file_purpose" in error
    assert teacher_server.stats()["batches_created"] == 0

    out = tmp_path / "together"
    run(load_config(generate_config(teacher_server, out, mode="batch", batch={**FAST, "file_purpose": "batch-api"})))
    assert teacher_server.stats()["requests"] == 0 and teacher_server.stats()["batches_created"] >= 3
    assert json.loads((out / "manifest.json").read_text())["counts"]["records"] == 8


def test_a_refused_parameter_is_learned_from_the_error_file_and_asked_again(start_teacher_server: Any, tmp_path: Path) -> None:
    server = start_teacher_server("--refuse-parameter", "seed", "--batch-step", "0.01")
    out = tmp_path / "batch"
    run(load_config(generate_config(server, out, mode="batch")))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["teacher_capabilities"]["teacher"]["dropped_parameters"] == ["seed"]
    assert manifest["counts"]["records"] == 8
    assert server.stats()["refusals"] >= 1


def test_batches_lists_and_cancels_a_runs_batches(teacher_server: TeacherServerURL, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher_server.control(batch_step=30.0)  # the batch will not finish by itself
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(generate_config(teacher_server, out, batch={"poll_interval": 0.05})))
    process = _start(config, "--batch")
    deadline = time.monotonic() + 120
    while _submitted(out) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.stderr is not None:
        process.stderr.close()
    capsys.readouterr()
    assert main(["batches", str(out), "--refresh"]) == 0
    listing = capsys.readouterr().out
    assert "generate run" in listing and "validating" in listing and "1 in progress" in listing
    assert main(["batches", str(out), "--cancel"]) == 0
    assert "1 batch(es) cancelled" in capsys.readouterr().out
    teacher_server.control(batch_step=0.01)
    assert main(["generate", "--config", str(config), "--batch"]) == 0  # the cancelled batch's lines are asked again
    state = load_state(out)
    assert state is not None and state.records[0].status == "cancelled" and state.records[0].unanswered == state.records[0].lines
    assert max(teacher_server.stats()["batch_submitted"].values()) == 2
    assert main(["batches", str(out)]) == 0
    assert "0 in progress" in capsys.readouterr().out


# -- cost ------------------------------------------------------------------------------------------


def test_dry_run_shows_online_and_batch_cost_side_by_side() -> None:
    report = dry_run(load_config(small_run_config(None, Path("unused"), teacher={"spec": "openai:gpt-4o-mini"})))
    assert report.cost_usd is not None and report.batch_cost_usd == pytest.approx(report.cost_usd / 2)
    lines = "\n".join(report.lines())
    assert f"online: ${report.cost_usd:,.2f} <- this config (mode: online)" in lines and f"batch:  ${report.batch_cost_usd:,.2f}" in lines
    configured = dry_run(load_config(small_run_config(None, Path("unused"), mode="batch", prices={"input_per_1k": 1.0, "output_per_1k": 1.0, "batch_input_per_1k": 0.2, "batch_output_per_1k": 0.2})))
    assert configured.batch_cost_usd == pytest.approx(configured.cost_usd * 0.2)  # type: ignore[operator]
    assert "<- this config (mode: batch)" in "\n".join(configured.lines())


def test_the_manifest_records_what_a_batch_run_paid(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(batch_step=0.01)
    prices = {"input_per_1k": 0.002, "output_per_1k": 0.008, "batch_input_per_1k": 0.001, "batch_output_per_1k": 0.004}
    out = tmp_path / "batch"
    run(load_config(generate_config(teacher_server, out, mode="batch", prices=prices)))
    session = json.loads((out / "manifest.json").read_text())["session"]
    batch = session["batch"]
    expected = (batch["prompt_tokens"] * 0.001 + batch["completion_tokens"] * 0.004) / 1000
    assert batch["cost_usd"] == pytest.approx(expected) and batch["online_cost_usd"] == pytest.approx(2 * expected)
    assert session["cost_usd"] == pytest.approx(expected) and session["requests"] - session["cache_hits"] == batch["requests"]
    records = table(out)  # each record keeps the list (online) price of its answers, as online: the same bytes in both modes
    assert sum(row["usage"]["cost_usd"] for row in records) == pytest.approx(batch["online_cost_usd"])


# -- vLLM run_batch --------------------------------------------------------------------------------

RUN_BATCH = '''"""A stand-in for vLLM's run_batch (no GPU here): the OpenAI batch format in, the same format out."""
import argparse, json, sys
from mediflow.testing.teacher import Settings, TestTeacher

parser = argparse.ArgumentParser()
parser.add_argument("-i"); parser.add_argument("-o"); parser.add_argument("--model"); parser.add_argument("--tensor-parallel-size")
args = parser.parse_args()
with open(args.i.replace(".jsonl", ".argv"), "w") as record:
    json.dump(sys.argv[1:], record)
teacher = TestTeacher(Settings())
with open(args.i) as lines, open(args.o, "w") as out:
    for number, raw in enumerate(lines):
        line = json.loads(raw)
        assert line["body"]["model"] == args.model and line["url"] == "/v1/chat/completions"
        status, body = teacher.answer_body(line["body"])
        out.write(json.dumps({"id": f"vllm-{number}", "custom_id": line["custom_id"], "response": {"status_code": status, "request_id": str(number), "body": body}, "error": None}) + "\\n")
'''


def test_a_vllm_teacher_in_batch_mode_runs_the_jsonl_through_run_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_batch_command("/m", Path("in.jsonl"), Path("out.jsonl"), ["--tensor-parallel-size", "2"]) == [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.run_batch",
        "-i",
        "in.jsonl",
        "-o",
        "out.jsonl",
        "--model",
        "/m",
        "--tensor-parallel-size",
        "2",
    ]
    stand_in = tmp_path / "stand-in"
    package = stand_in / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (stand_in / "vllm", stand_in / "vllm" / "entrypoints", package):
        (folder / "__init__.py").write_text("")
    (package / "run_batch.py").write_text(RUN_BATCH)
    monkeypatch.syspath_prepend(str(stand_in))
    monkeypatch.setenv("PYTHONPATH", f"{stand_in}:{ROOT}")
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    out = tmp_path / "run"
    config = small_run_config(None, out, teacher={"spec": "vllm:/models/teacher"}, mode="batch", batch={**FAST, "vllm_args": ["--tensor-parallel-size", "2"]})
    summary = run(load_config(config))
    assert summary.records == 8 and summary.rejects == 0
    argv = [json.loads(path.read_text()) for path in sorted((out / "batches").glob("*.argv"))]
    assert len(argv) >= 3  # documents, instructions, responses: one run_batch each
    assert all(call[call.index("--model") + 1] == "/models/teacher" and call[-2:] == ["--tensor-parallel-size", "2"] for call in argv)
    assert not list((out / "batches").glob("*.jsonl"))  # inputs and outputs removed once their answers are cached
    records = table(out)
    assert {row["teacher"] for row in records} == {"vllm:/models/teacher"}


def test_batch_mode_flags_come_from_the_config_fields() -> None:
    from mediflow.cli import build_parser

    parser = build_parser()
    assert vars(parser.parse_args(["generate", "--batch"]))["config_key:mode"] == "batch"
    assert vars(parser.parse_args(["generate", "--mode", "online"]))["config_key:mode"] == "online"
    assert vars(parser.parse_args(["judge", "i", "o", "--batch"]))["config_key:mode"] == "batch"
    assert vars(parser.parse_args(["curate", "i", "o", "--judge-batch"]))["config_key:judge.mode"] == "batch"
    assert vars(parser.parse_args(["pairs", "i", "o", "--batch"]))["config_key:mode"] == "batch"
    assert vars(parser.parse_args(["train", "qa", "--config", "c", "--batch"]))["config_key:qa.mode"] == "batch"
    assert vars(parser.parse_args(["generate", "--batch-max-lines", "10"]))["config_key:batch.max_lines"] == 10


def _the_error_line(stderr: str) -> str:
    """The run's one error line: the last line on stderr, after the CLI's status lines (rounds, batches), no traceback."""
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in stderr, stderr
    return errors[0]
