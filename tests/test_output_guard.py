"""Issue 23: one guard for every written path, no write through a link, and Parquet checked at the reader.

The bad-input table (tests/test_bad_inputs.py) holds the refusals, one command line each; this file holds
what the guard and the reader must *accept* (large and view string types, nulls where no text is needed,
a command's own files in its own folder) and the details a table row cannot show (which row is named,
the link targets left byte-identical, ids repeated across files).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import record, small_run_config, words

from mediflow.cli import main
from mediflow.errors import MediflowError
from mediflow.folders import FolderLock, OutputFolder, StagedWriter, check_output, open_input, read_batches, reading
from mediflow.records import FULL_SCHEMA, MESSAGE_TYPE, rows_to_table

TASKS = ("question_summarization", "clinical_coding")


def _records(count: int = 12, seed: int = 3) -> pa.Table:
    rng = random.Random(seed)
    rows = [record(TASKS[i % 2], "discharge_summary", words(rng, 12), "plain_text", rng, input=words(rng, 40), document_id=f"d{i}") for i in range(count)]
    return rows_to_table(rows, FULL_SCHEMA)


def _run(root: Path, kind: str = "filter", table: pa.Table | None = None) -> Path:
    table = _records() if table is None else table
    folder = OutputFolder.open(root, kind=kind, config={"made_by": "test_output_guard"})
    writer = StagedWriter(folder)
    writer.keep(table)
    writer.publish(table.schema, {"kept": table.num_rows})
    return root


def _with_type(table: pa.Table, kind: pa.DataType) -> pa.Table:
    """Every string column of ``table`` (top level) cast to ``kind`` (large_string, string_view)."""
    return pa.table([c.cast(kind) if pa.types.is_string(c.type) else c for c in table.columns], names=table.column_names)


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the guard


def test_a_file_output_is_checked_on_its_resolved_path(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    shard = run / "data" / "part-00000.parquet"
    with pytest.raises(MediflowError, match="is inside the input"):
        check_output(tmp_path / "x" / ".." / "run" / "manifest.json", [run], what="HTML report", file=True)
    (tmp_path / "alias.html").symlink_to(shard)
    with pytest.raises(MediflowError, match="is inside the input"):
        check_output(tmp_path / "alias.html", [run], what="HTML report", file=True)
    with pytest.raises(MediflowError, match="'filter' folder of another MediFlow run"):
        check_output(shard, [], what="HTML report", file=True)  # not an input here, but another run's file
    with pytest.raises(MediflowError, match="is a folder; name a file"):
        check_output(run, [], what="HTML report", file=True)
    config = tmp_path / "run.yaml"
    config.write_text("per_cell: 1\n")
    with reading(config), pytest.raises(MediflowError, match="is the config file"):
        check_output(config, [], what="plan file", file=True)
    check_output(tmp_path / "reports" / "new" / "a.html", [run], what="HTML report", file=True)  # a missing parent is fine: it is created
    assert not (tmp_path / "reports").exists()  # ... by the writer, after the guard: the guard writes nothing


def test_a_commands_own_folder_and_the_folders_this_process_holds_may_contain_its_files(tmp_path: Path) -> None:
    out = _run(tmp_path / "out", kind="judge")
    check_output(out / "cache.sqlite", [], what="judge cache", file=True, own=out)
    with pytest.raises(MediflowError, match="of another MediFlow run"):
        check_output(out / "cache.sqlite", [], what="judge cache", file=True)
    lock = FolderLock(out)  # curate holds its folder while each stage writes OUT/stages/<n>-<stage>
    lock.acquire()
    try:
        check_output(out / "stages" / "1-filter", [])
    finally:
        lock.release()
    with pytest.raises(MediflowError, match="of another MediFlow run"):
        check_output(out / "stages" / "1-filter", [])


def test_the_html_report_and_the_plan_create_their_missing_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path / "run")
    assert main(["audit", str(run), "--html", str(tmp_path / "reports" / "2025" / "a.html"), "--sample-size", "50"]) == 0
    assert (tmp_path / "reports" / "2025" / "a.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# ---------------------------------------------------------------- links inside an output


#: Each entry of an output folder planted as a link, and what it points at in another run's folder.
LINKS = {
    "data": "data",
    "data/part-00000.parquet": "data/part-00000.parquet",
    "manifest.json": "manifest.json",
    "rejects.parquet": "rejects.parquet",
    "cache.sqlite": "cache.sqlite",
    ".lock": "manifest.json",
    "batches": "data",
    ".parts": "data",
    "stages": "data",
}


@pytest.mark.parametrize("entry", list(LINKS))
def test_no_write_follows_a_link_inside_an_output_folder(tmp_path: Path, entry: str, capsys: pytest.CaptureFixture[str]) -> None:
    source = _run(tmp_path / "in")
    other = _run(tmp_path / "other")
    (other / "cache.sqlite").write_bytes(b"answers somebody paid for")
    out = tmp_path / "out"
    assert main(["filter", str(source), str(out)]) == 0
    target = other / LINKS[entry]
    before = {p: _hash(p) for p in other.rglob("*") if p.is_file()}
    link = out / entry
    if link.is_dir():
        import shutil

        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(target)
    for overwrite in ([], ["--overwrite"]):
        assert main(["filter", str(source), str(out), *overwrite]) == 2
        assert "is a symbolic link" in capsys.readouterr().err
    assert {p: _hash(p) for p in other.rglob("*") if p.is_file()} == before  # the link's target, byte for byte
    assert link.is_symlink()  # refused, not replaced: the user decides what the link was for


def test_the_output_folder_itself_may_be_a_link(tmp_path: Path) -> None:
    source = _run(tmp_path / "in")
    (tmp_path / "runs").mkdir()
    (tmp_path / "latest").symlink_to(tmp_path / "runs")
    assert main(["filter", str(source), str(tmp_path / "latest" / "a")]) == 0
    assert (tmp_path / "runs" / "a" / "manifest.json").is_file()


# ---------------------------------------------------------------- Parquet checked at the reader


@pytest.mark.parametrize("kind", [pa.large_string(), pa.string_view()], ids=["large_string", "string_view"])
def test_large_and_view_strings_are_text_in_every_command(tmp_path: Path, kind: pa.DataType, capsys: pytest.CaptureFixture[str]) -> None:
    """pandas, Polars and DuckDB write these types: every stage reads them as text (they crashed dedup, filter and audit)."""
    data = tmp_path / "in" / "records.parquet"
    data.parent.mkdir()
    pq.write_table(_with_type(_records(), kind), data)
    assert main(["filter", str(data), str(tmp_path / "f")]) == 0
    assert main(["dedup", str(data), str(tmp_path / "d")]) == 0
    assert main(["export", str(data), "--local-dir", str(tmp_path / "e")]) == 0
    assert main(["audit", str(data.parent), "--html", str(tmp_path / "a.html"), "--sample-size", "50"]) == 0
    assert pq.read_metadata(tmp_path / "f" / "data" / "part-00000.parquet").num_rows == 12
    assert pq.read_schema(tmp_path / "d" / "data" / "part-00000.parquet").field("output").type == pa.string()
    batch = next(read_batches(data))
    assert all(not (pa.types.is_large_string(f.type) or f.type == pa.string_view()) for f in batch.schema)


def test_nulls_where_no_text_is_needed_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A null task_type or document type is grouped as '(missing)' by the audit (it crashed on sorting), and read by every stage."""
    table = _records()
    table = table.set_column(table.column_names.index("task_type"), "task_type", pa.array([None] + table.column("task_type").to_pylist()[1:], pa.string()))
    table = table.set_column(table.column_names.index("input_data"), "input_data", pa.nulls(table.num_rows, pa.string()))
    run = _run(tmp_path / "run", table=table)
    assert main(["audit", str(run), "--html", str(tmp_path / "a.html"), "--sample-size", "50"]) == 0
    assert main(["dedup", str(run), str(tmp_path / "d")]) == 0
    assert main(["export", str(run), "--local-dir", str(tmp_path / "e"), "--no-task-configs"]) == 0


def test_invalid_utf8_deep_inside_a_conversation_names_its_row(tmp_path: Path) -> None:
    table = _records()
    turns = [b"fine"] * table.num_rows
    turns[9] = b"caf\xe9"  # Latin-1
    content = pa.array(turns, pa.binary()).view(pa.string())
    messages = pa.ListArray.from_arrays(pa.array(range(table.num_rows + 1), pa.int32()), pa.StructArray.from_arrays([pa.array(["user"] * table.num_rows), content], fields=list(MESSAGE_TYPE)))
    path = tmp_path / "records.parquet"
    pq.write_table(table.set_column(table.column_names.index("messages"), "messages", messages), path)
    with pytest.raises(MediflowError, match=r"column 'messages' is not valid UTF-8 \(first bad row 9,"):
        open_input(path)


def test_a_bad_row_is_found_in_a_later_batch_of_a_big_file(tmp_path: Path) -> None:
    rows = 120_000  # more than one validation batch
    texts = [b"x"] * rows
    texts[100_123] = b"\xff"
    nulls: list[str | None] = ["y"] * rows
    nulls[110_001] = None
    base = {"id": [f"r{i}" for i in range(rows)], "instruction": ["i"] * rows, "input": ["d"] * rows}
    pq.write_table(pa.table({**base, "output": pa.array(texts, pa.binary()).view(pa.string())}), tmp_path / "utf8.parquet", row_group_size=30_000)
    pq.write_table(pa.table({**base, "output": pa.array(nulls, pa.string())}), tmp_path / "null.parquet", row_group_size=30_000)
    with pytest.raises(MediflowError, match=r"first bad row 100123,"):
        open_input(tmp_path / "utf8.parquet")
    with pytest.raises(MediflowError, match=r"column 'output' is null in row 110001 "):
        open_input(tmp_path / "null.parquet")


def test_one_id_for_two_records_is_refused_naming_both_places(tmp_path: Path) -> None:
    table = _records()
    (tmp_path / "in").mkdir()
    pq.write_table(table.slice(0, 6), tmp_path / "in" / "a.parquet")
    again = table.slice(2, 1)
    pq.write_table(pa.concat_tables([table.slice(6, 5), again]), tmp_path / "in" / "b.parquet")
    open_input(tmp_path / "in")  # the same record twice: an exact duplicate, which dedup removes
    other = again.set_column(again.column_names.index("output"), "output", pa.array(["another answer"]))
    pq.write_table(pa.concat_tables([table.slice(6, 5), other]), tmp_path / "in" / "b.parquet")
    repeated = table.column("id")[2].as_py()
    with pytest.raises(MediflowError, match=f"duplicate id '{repeated}' for two different records \\(a.parquet row 2 and b.parquet row 5, counting from 0\\)"):
        open_input(tmp_path / "in")


def test_records_without_ids_are_not_refused_for_repeating_content(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ids derived from content repeat exactly when records do: that is dedup's job, not a broken input."""
    table = _records().drop_columns(["id"])
    path = tmp_path / "released.parquet"
    pq.write_table(pa.concat_tables([table, table.slice(0, 3)]), path)
    assert open_input(path).num_rows == 15
    assert main(["dedup", str(path), str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["counts"]["kept"] == 12


def test_a_null_in_a_column_no_reader_needs_is_read(tmp_path: Path) -> None:
    table = _records()
    table = table.set_column(table.column_names.index("rejected_output"), "rejected_output", pa.nulls(table.num_rows, pa.string()))
    path = tmp_path / "r.parquet"
    pq.write_table(table, path)
    assert open_input(path).num_rows == 12
    assert open_input(path, "documents").num_rows == 12


def test_generate_on_a_folder_in_use_stops_before_it_builds_its_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan and its cases take a minute at scale: a second process on the same --out says so first."""
    import mediflow.pipeline.run as run

    def no_plan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the plan was built for a folder another process holds")

    monkeypatch.setattr(run, "build_plan", no_plan)
    out = tmp_path / "out"
    out.mkdir()
    lock = FolderLock(out)
    lock.acquire()
    try:
        with pytest.raises(MediflowError, match=r"in use by another process \(pid \d+"):
            run.generate(small_run_config(None, out))
    finally:
        lock.release()
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
