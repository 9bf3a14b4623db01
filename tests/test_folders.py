"""The output-folder contract and the input reader (mediflow.folders), unit by unit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mediflow.cli import main
from mediflow.errors import MediflowError
from mediflow.folders import (
    InputRef,
    OutputFolder,
    StagedWriter,
    check_no_overlap,
    lock_holder,
    open_input,
    read_manifest,
    write_json,
)
from mediflow.redact import redact_text, redact_url

RECORDS = pa.table({"id": ["a", "b"], "instruction": ["i1", "i2"], "input": ["d1", "d2"], "output": ["o1", "o2"]})


def records_file(path: Path, table: pa.Table = RECORDS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def finished_folder(root: Path, kind: str = "filter", config: dict | None = None, inputs: list[InputRef] | None = None) -> OutputFolder:
    folder = OutputFolder.open(root, kind=kind, config=config or {"a": 1}, inputs=inputs or [])
    writer = StagedWriter(folder)
    writer.keep(RECORDS)
    writer.publish(RECORDS.schema, {"kept": 2})
    return folder


def test_overlap_is_refused_both_ways_and_through_symlinks(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "a"
    shard = records_file(run / "data" / "part-00000.parquet")
    with pytest.raises(MediflowError, match="contains the input"):
        check_no_overlap(run, [shard])  # `filter runs/a/data/part-00000.parquet runs/a`
    with pytest.raises(MediflowError, match="inside the input"):
        check_no_overlap(run / "out", [run])
    with pytest.raises(MediflowError, match="is the input"):
        check_no_overlap(run, [run])
    link = tmp_path / "link"
    link.symlink_to(run)
    with pytest.raises(MediflowError, match="contains the input"):
        check_no_overlap(link, [shard])
    check_no_overlap(tmp_path / "runs" / "b", [run])  # siblings are fine


def test_a_finished_run_has_the_layout_and_a_typed_manifest(tmp_path: Path) -> None:
    source = open_input(records_file(tmp_path / "in.parquet"))
    folder = finished_folder(tmp_path / "out", inputs=[source.ref()])
    assert sorted(p.name for p in folder.root.iterdir()) == [".lock", "data", "manifest.json", "rejects.parquet"]
    assert [p.name for p in folder.shards()] == ["part-00000.parquet"]
    manifest = read_manifest(folder.root)
    assert manifest is not None and (manifest.kind, manifest.status, manifest.counts) == ("filter", "finished", {"kept": 2})
    assert manifest.inputs == [source.ref()] and len(manifest.inputs[0].fingerprint) == 16


def test_another_kind_or_config_or_input_is_refused_unless_overwrite(tmp_path: Path) -> None:
    first = open_input(records_file(tmp_path / "in.parquet"))
    finished_folder(tmp_path / "out", inputs=[first.ref()])
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    with pytest.raises(MediflowError, match="holds a 'filter' folder, not a 'dedup' one"):
        OutputFolder.open(tmp_path / "out", kind="dedup", config={"a": 1}, inputs=[first.ref()])
    with pytest.raises(MediflowError, match="another config"):
        OutputFolder.open(tmp_path / "out", kind="filter", config={"a": 2}, inputs=[first.ref()])
    other = open_input(records_file(tmp_path / "other.parquet", RECORDS.slice(0, 1)))
    with pytest.raises(MediflowError, match="other input data"):
        OutputFolder.open(tmp_path / "out", kind="filter", config={"a": 1}, inputs=[other.ref()])
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
    OutputFolder.open(tmp_path / "out", kind="dedup", config={"a": 1}, inputs=[first.ref()], overwrite=True).close()


def test_the_same_run_resumes_and_runtime_settings_do_not_change_the_run(tmp_path: Path) -> None:
    finished_folder(tmp_path / "out", config={"a": 1, "concurrency": 4, "teacher": {"base_url": "http://x/v1"}})
    again = OutputFolder.open(tmp_path / "out", kind="filter", config={"a": 1, "concurrency": 64, "teacher": {"base_url": "http://y/v1"}})
    assert again.resumed and read_manifest(again.root).status == "finished"  # a staged rerun leaves the output until it publishes
    again.close()


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(MediflowError, match="not a MediFlow filter output"):
        OutputFolder.open(tmp_path / "out", kind="filter", config={})
    with pytest.raises(MediflowError, match="is a file"):
        OutputFolder.open(tmp_path / "out" / "notes.txt", kind="filter", config={})


def test_a_killed_runs_leftovers_are_removed_and_a_failure_is_recorded(tmp_path: Path) -> None:
    folder = OutputFolder.open(tmp_path / "out", kind="filter", config={})
    writer = StagedWriter(folder)
    writer.keep(RECORDS)
    (tmp_path / "out" / "data").mkdir()
    (tmp_path / "out" / "data" / ".tmp-99-part-00000.parquet").write_bytes(b"half")
    folder.close()  # as if killed: staging and temp files stay behind
    assert list((tmp_path / "out").glob(".tmp-staging-*"))
    with OutputFolder.open(tmp_path / "out", kind="filter", config={}) as again:
        assert not list((tmp_path / "out").glob(".tmp-*")) and not list((tmp_path / "out" / "data").glob(".tmp-*"))
        with pytest.raises(RuntimeError):
            with again:
                raise RuntimeError("disk on fire")
    manifest = read_manifest(tmp_path / "out")
    assert manifest is not None and (manifest.status, manifest.reason) == ("failed", "disk on fire")


def test_the_lock_names_its_holder_and_is_released_by_a_killed_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from mediflow.folders import OutputFolder
            OutputFolder.open({str(tmp_path / "out")!r}, kind='generate', config={{}}, staged=False)
            print('locked', flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        with pytest.raises(MediflowError, match=f"in use by another process \\(pid {holder.pid}"):
            OutputFolder.open(tmp_path / "out", kind="generate", config={}, staged=False)
        assert lock_holder(tmp_path / "out") is not None
        with pytest.raises(MediflowError, match="being written by another process"):
            open_input(tmp_path / "out")
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(tmp_path / "out") is None
    OutputFolder.open(tmp_path / "out", kind="generate", config={}, staged=False).close()


def test_credentials_never_reach_the_manifest_or_an_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert redact_url("https://user:secret@host:8000/v1?api-key=k&x=1") == "https://***@host:8000/v1?api-key=***&x=1"
    assert redact_text("teacher at https://user:secret@host/v1?sig=abc failed") == "teacher at https://***@host/v1?sig=*** failed"
    monkeypatch.setenv("MEDIFLOW_TEST_UNUSED_KEY", "unused")
    code = main(["generate", "--teacher", "openai:m", "--base-url", "http://user:secret@127.0.0.1:9/v1", "--api-key-env", "MEDIFLOW_TEST_UNUSED_KEY", "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "secret" not in err and "***@127.0.0.1:9" in err
    config = {"teacher": {"base_url": "https://user:secret@host/v1?sig=abc"}}
    OutputFolder.open(tmp_path / "out", kind="generate", config=config, staged=False).close()
    text = (tmp_path / "out" / "manifest.json").read_text()
    assert "secret" not in text and "abc" not in text and "host/v1" in text


def test_reader_reads_only_the_kept_records_of_a_folder(tmp_path: Path) -> None:
    finished_folder(tmp_path / "out")
    records_file(tmp_path / "out" / "stray.parquet")  # unrelated Parquet beside the layout
    data = open_input(tmp_path / "out")
    assert data.files == (tmp_path / "out" / "data" / "part-00000.parquet",) and data.num_rows == 2
    assert data.read().column("id").to_pylist() == ["a", "b"]


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(b"PAR1 not really"), "not a readable Parquet file"),
        (lambda p: (pq.write_table(RECORDS, p), p.write_bytes(p.read_bytes()[:-20])), "not a readable Parquet file"),
        (lambda p: pq.write_table(RECORDS.drop_columns(["input"]), p), "missing column 'input'"),
        (lambda p: pq.write_table(RECORDS.set_column(3, "output", pa.array([1, 2])), p), "column 'output' is int64, expected string"),
        (lambda p: pq.write_table(RECORDS.slice(0, 0), p), "no records"),
    ],
)
def test_reader_checks_tables_before_any_work(tmp_path: Path, write, message: str) -> None:
    path = tmp_path / "in.parquet"
    write(path)
    with pytest.raises(MediflowError, match=message) as error:
        open_input(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_reader_refuses_another_kind_and_an_unfinished_run(tmp_path: Path) -> None:
    finished_folder(tmp_path / "records")
    with pytest.raises(MediflowError, match="holds records, not pairs"):
        open_input(tmp_path / "records", "pairs")
    OutputFolder.open(tmp_path / "killed", kind="generate", config={}, staged=False).close()
    with pytest.raises(MediflowError, match="did not finish \\(status running\\)"):
        open_input(tmp_path / "killed")


def test_a_manifest_that_is_not_json_is_one_line(tmp_path: Path) -> None:
    finished_folder(tmp_path / "out")
    (tmp_path / "out" / "manifest.json").write_text("{broken")
    with pytest.raises(MediflowError, match="manifest.json: not valid JSON"):
        open_input(tmp_path / "out")
    write_json(tmp_path / "out" / "manifest.json", {"kind": "filter"})
    with pytest.raises(MediflowError, match="not a MediFlow folder manifest"):
        open_input(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == {"kind": "filter"}


def test_a_folder_says_what_it_holds_so_any_kind_of_stage_is_read(tmp_path: Path) -> None:
    """The contract is open: a new stage's folder (kind ``summary``) is read by what its manifest says it
    holds, not by a fixed map of kinds; a folder that holds nothing to read says so in one line."""
    finished_folder(tmp_path / "summary", kind="summary")
    manifest = read_manifest(tmp_path / "summary")
    assert manifest is not None and manifest.holds == "records"
    assert open_input(tmp_path / "summary").read().column("id").to_pylist() == ["a", "b"]
    folder = OutputFolder.open(tmp_path / "report", kind="summary", holds=None, config={"a": 1}, inputs=[])
    writer = StagedWriter(folder)
    writer.keep(RECORDS)
    writer.publish(RECORDS.schema, {"kept": 2})
    with pytest.raises(MediflowError, match="a 'summary' folder holds nothing to read"):
        open_input(tmp_path / "report")


@pytest.mark.parametrize(("kind", "family", "holds"), [("generate", "records", "records"), ("curate", "records", "records"), ("pairs", "pairs", "pairs")])
def test_a_manifest_written_before_holds_existed_is_read_by_its_kind(tmp_path: Path, kind: str, family: str, holds: str) -> None:
    """Folders the first release wrote have no ``holds`` key: what they hold comes from their kind, so existing runs are not refused."""
    finished_folder(tmp_path / "old", kind=kind)
    path = tmp_path / "old" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["holds"]
    path.write_text(json.dumps(manifest))
    old = read_manifest(tmp_path / "old")
    assert old is not None and old.holds == holds
    if family == "records":
        assert open_input(tmp_path / "old").num_rows == 2
    with pytest.raises(MediflowError, match=f"holds {holds}, not {'pairs' if family == 'records' else 'records'}"):
        open_input(tmp_path / "old", "pairs" if family == "records" else "records")
