"""The bad-input table: every command x every class of bad input.

Each case runs one real command line and must end with exit status 2, exactly one ``error:`` line
on stderr, no traceback, and every input and every existing output byte-for-byte as before (the
trees are hashed before and after). Most cases run in-process (``mediflow.cli.main``); the ones
that need the operating system's help are honest about it: a full disk runs the CLI in a subprocess
under ``RLIMIT_FSIZE`` (every write past the limit fails with ``EFBIG``, as on a full disk), and a
read-only output sits in a folder nobody may write (``chmod 555``; as root, who ignores
permissions, the folder is made immutable with ``chattr +i``, which stops root too).

Add a row whenever a command or a flag is added.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import record, small_run_config, words
from tiny_models import build_tiny_phi3

from mediflow.batch.state import BatchRecord, BatchState
from mediflow.cli import main
from mediflow.folders import FolderLock, OutputFolder, StagedWriter
from mediflow.preference.rows import PAIR_SCHEMA, pair_row
from mediflow.records import FULL_SCHEMA, rows_to_table
from mediflow.taxonomy import load_taxonomy
from mediflow.testing import TeacherServerURL, teacher_server

DEAD_URL = "http://127.0.0.1:9/v1"  # nothing listens there: a case that reached the teacher would say so
KEY_ENV = "MEDIFLOW_BAD_INPUT_KEY"
TASKS = ("question_summarization", "clinical_coding")
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class World:
    """The inputs and existing outputs every case starts from (built once, copied per case)."""

    root: Path
    records: Path  # a finished generate folder
    pairs: Path  # a finished pairs folder
    big: Path  # a finished generate folder of ~1 MB (its outputs cannot fit a small disk)
    eval_set: Path
    model: Path  # a tiny model folder (the training and merge commands read its tokenizer and weights)
    expert: Path  # another tiny model of the same shape
    documents: Path  # documents and task data for pit and eval
    task_data: Path
    bad: dict[str, Path] = field(default_factory=dict)  # broken Parquet files by name
    batch_server: TeacherServerURL | None = None  # a test teacher with the Files + Batch API
    no_batch_server: TeacherServerURL | None = None  # one without (404), as many self-hosted servers


def _text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _records(count: int, rng: random.Random, words_per_output: int = 12) -> list[dict]:
    return [record(TASKS[i % 2], "discharge_summary", words(rng, words_per_output), "plain_text", rng, input=words(rng, 40), document_id=f"d{i}") for i in range(count)]


def _folder(root: Path, kind: str, table: pa.Table, holds: str = "records") -> Path:
    folder = OutputFolder.open(root, kind=kind, holds=holds, config={"made_by": "test_bad_inputs"}, staged=kind != "generate")
    writer = StagedWriter(folder)
    writer.keep(table)
    writer.publish(table.schema, {"kept": table.num_rows})
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("bad-inputs")
    rng = random.Random(5)
    rows = _records(12, rng)
    records = _folder(root / "records", "filter", rows_to_table(rows, FULL_SCHEMA))
    pairs = [pair_row(r, chosen=r["output"], rejected=r["output"] + " x", chosen_score=8, rejected_score=2, chosen_source="t", rejected_source="i", method="inject") for r in rows[:4]]
    pairs_dir = _folder(root / "pairs", "pairs", rows_to_table(pairs, PAIR_SCHEMA), holds="pairs")
    big = _folder(root / "big", "filter", rows_to_table(_records(400, rng, words_per_output=300), FULL_SCHEMA))
    eval_set = root / "eval.jsonl"
    eval_set.write_text(json.dumps({"id": "q", "text": "an unrelated question about the weather"}) + "\n")
    good = pq.read_table(records / "data" / "part-00000.parquet")
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.parquet").write_bytes(b"PAR1" + os.urandom(64) + b"PAR1")
    pq.write_table(good, bad / "truncated.parquet")
    (bad / "truncated.parquet").write_bytes((bad / "truncated.parquet").read_bytes()[:-40])
    pq.write_table(good.slice(0, 0), bad / "empty.parquet")
    pq.write_table(good.drop_columns(["input", "messages"]), bad / "missing_column.parquet")
    pq.write_table(good.set_column(good.column_names.index("output"), "output", pa.array(range(good.num_rows))), bad / "mistyped.parquet")
    unsafe = good.set_column(good.column_names.index("task_type"), "task_type", pa.array(["../../escaped"] * good.num_rows))
    pq.write_table(unsafe, bad / "unsafe_task.parquet")
    _hostile_tables(good, bad)
    model, expert = build_tiny_phi3(root / "model", seed=0), build_tiny_phi3(root / "expert", seed=1)
    documents = _text(root / "documents.jsonl", "".join(json.dumps({"text": words(rng, 30)}) + "\n" for _ in range(3)))
    task_data = _text(root / "task_data.jsonl", "".join(json.dumps({"prompt": "Q?", "completion": words(rng, 5)}) + "\n" for _ in range(3)))
    with teacher_server("--batch-step", "0.01") as batch_server, teacher_server("--no-batch-api") as no_batch_server:
        yield World(root, records, pairs_dir, big, eval_set, model, expert, documents, task_data, {p.stem: p for p in bad.iterdir()}, batch_server, no_batch_server)


def _hostile_tables(good: pa.Table, bad: Path) -> None:
    """Parquet files a user can make by accident that pyarrow reads without complaint (issue 23)."""
    output = good.column_names.index("output")
    texts = [text.encode() for text in good.column("output").to_pylist()]
    texts[3] = b"dose 5 mg \xff\xfe then stop"  # Latin-1 bytes pasted into a string column
    pq.write_table(good.set_column(output, "output", pa.array(texts, pa.binary()).view(pa.string())), bad / "bad_utf8.parquet")
    pq.write_table(pa.Table.from_arrays([*good.columns, good.column("output")], names=[*good.column_names, "output"]), bad / "duplicate_column.parquet")
    nulls = good.column("output").to_pylist()
    nulls[2] = None
    pq.write_table(good.set_column(output, "output", pa.array(nulls, pa.string())), bad / "null_output.parquet")
    ids = good.column("id").to_pylist()
    ids[7] = ids[1]
    pq.write_table(good.set_column(good.column_names.index("id"), "id", pa.array(ids, pa.string())), bad / "duplicate_id.parquet")


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (or ``path`` itself) with a hash of its bytes; {} when absent."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@dataclass
class Case:
    """One bad command line, what its error line must say, and what it must leave alone."""

    argv: list[str]
    says: str
    protect: list[Path]
    sandbox: str | None = None  # "full_disk": run in a subprocess under a file-size limit
    hold_lock: Path | None = None  # a folder another "process" holds while the command runs
    read_only: Path | None = None  # a folder nobody may write while the command runs
    unset: tuple[str, ...] = ()  # environment variables absent while the command runs


#: A data command's argv over (input, output folder, world).
COMMANDS: dict[str, Callable[[Path, Path, World], list[str]]] = {
    "filter": lambda i, o, w: ["filter", str(i), str(o)],
    "judge": lambda i, o, w: ["judge", str(i), str(o), "--teacher", "openai:m", "--base-url", DEAD_URL, "--api-key-env", KEY_ENV],
    "dedup": lambda i, o, w: ["dedup", str(i), str(o)],
    "decontaminate": lambda i, o, w: ["decontaminate", str(i), str(o), "--eval", str(w.eval_set)],
    "curate": lambda i, o, w: ["curate", str(i), str(o)],
    "pairs": lambda i, o, w: ["pairs", str(i), str(o), "--teacher", "openai:m", "--base-url", DEAD_URL, "--api-key-env", KEY_ENV],
    "export": lambda i, o, w: ["export", str(i), "--local-dir", str(o)],
}
READERS = [*COMMANDS, "audit", "train sft"]


def _train_config(tmp: Path, data: Path, out: Path) -> Path:
    """An SFT config whose model folder exists (the data is read, and refused, before a model loads)."""
    (tmp / "model").mkdir(exist_ok=True)
    (tmp / "model" / "config.json").write_text("{}")
    path = tmp / "sft.yaml"
    path.write_text(json.dumps({"model": {"name_or_path": str(tmp / "model")}, "data": {"train": str(data)}, "output": {"dir": str(out)}}))
    return path


def _reader_argv(command: str, data: Path, tmp: Path, world: World) -> list[str]:
    if command == "audit":  # the audit reads folders: the bad file as a folder's only shard
        if data.is_file():
            (tmp / "folder" / "data").mkdir(parents=True)
            data = Path(shutil.copy(data, tmp / "folder" / "data" / "part-00000.parquet")).parent.parent
        return ["audit", str(data), "--html", str(tmp / "report.html")]
    if command == "train sft":
        return ["train", "sft", "--config", str(_train_config(tmp, data, tmp / "model"))]
    return COMMANDS[command](data, tmp / "out", world)


BAD_TABLES = {
    "corrupt": "not a readable Parquet file",
    "truncated": "not a readable Parquet file",
    "empty": "no records",
    "missing_column": "missing column",
    "mistyped": "column 'output' is int64, expected string",
    "bad_utf8": "column 'output' is not valid UTF-8 (first bad row 3,",
    "duplicate_column": "column 'output' appears 2 times",
    "null_output": "column 'output' is null in row 2",
    "duplicate_id": "duplicate id",
}


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    (target / ".lock").unlink(missing_ok=True)
    return target


def build_cases() -> list[tuple[str, Callable[[Path, World], Case]]]:
    cases: list[tuple[str, Callable[[Path, World], Case]]] = []

    def add(name: str, make: Callable[[Path, World], Case]) -> None:
        cases.append((name, make))

    for command in READERS:
        for bad, says in BAD_TABLES.items():
            add(f"{command}: {bad} Parquet", lambda tmp, w, c=command, b=bad, s=says: Case(_reader_argv(c, w.bad[b], tmp, w), s, [w.bad[b].parent, tmp]))
        add(f"{command}: a missing input", lambda tmp, w, c=command: Case(_reader_argv(c, tmp / "nowhere", tmp, w), "no such file or folder", [tmp]))
    for command in ("filter", "judge", "dedup", "decontaminate", "curate", "pairs", "train sft"):
        wrong = {"pairs": "records", "train sft": "records"}.get(command)
        if wrong is None:
            add(f"{command}: a pairs folder as records", lambda tmp, w, c=command: Case(_reader_argv(c, w.pairs, tmp, w), "holds pairs, not records", [w.pairs, tmp]))
    add("export: --pairs names a records folder", lambda tmp, w: Case(["export", str(w.records), "--pairs", str(w.records), "--local-dir", str(tmp / "out")], "holds records, not pairs", [w.records, tmp]))
    add("export: a task name that is a path", lambda tmp, w: Case(["export", str(w.bad["unsafe_task"]), "--local-dir", str(tmp / "out")], "is not a safe name", [w.bad["unsafe_task"].parent, tmp]))

    for command in COMMANDS:
        # the output inside the input, and the input inside the output (a shard of the folder it would replace)
        add(f"{command}: output inside the input", lambda tmp, w, c=command: Case(COMMANDS[c](_copy(w.records, tmp / "run"), tmp / "run" / "out", w), "is inside the input", [tmp]))
        add(f"{command}: input inside the output", lambda tmp, w, c=command: Case(COMMANDS[c](_copy(w.records, tmp / "run") / "data" / "part-00000.parquet", tmp / "run", w), "contains the input", [tmp]))
        add(f"{command}: output is the input", lambda tmp, w, c=command: Case(COMMANDS[c](_copy(w.records, tmp / "run"), tmp / "run", w), "is the input", [tmp]))
        add(f"{command}: output through a symlink to the input", lambda tmp, w, c=command: Case(COMMANDS[c](_copy(w.records, tmp / "run"), _symlink(tmp / "alias", tmp / "run") / "out", w), "is inside the input", [tmp]))
        add(f"{command}: output holds another kind of folder", lambda tmp, w, c=command: Case(COMMANDS[c](w.records, _copy(w.pairs if c != "pairs" else w.records, tmp / "other"), w), "folder, not a", [w.records, tmp]))
        add(f"{command}: output holds foreign files", lambda tmp, w, c=command: Case(COMMANDS[c](w.records, _foreign(tmp / "mine"), w), "not a MediFlow", [w.records, tmp]))
        add(f"{command}: output is a file", lambda tmp, w, c=command: Case(COMMANDS[c](w.records, _file(tmp / "out"), w), "is a file", [w.records, tmp]))
        add(f"{command}: output locked by another process", lambda tmp, w, c=command: Case(COMMANDS[c](w.records, tmp / "busy", w), "in use by another process", [w.records, tmp], hold_lock=tmp / "busy"))
        add(f"{command}: read-only output", lambda tmp, w, c=command: _read_only_case(c, tmp, w))
    for command in ("filter", "dedup", "curate", "export"):  # the CPU stages: their outputs are written for real
        add(f"{command}: full disk", lambda tmp, w, c=command: Case(COMMANDS[c](w.big, tmp / "out", w), "File too large", [w.big], sandbox="full_disk"))

    # generate: its config, its flags, its output folder (a teacher nobody answers: no case may get that far)
    def generate(tmp: Path) -> list[str]:
        config = tmp / "run.json"
        config.write_text(json.dumps({**small_run_config(DEAD_URL, tmp / "unused", per_cell=1), "limits": {"max_retries": 0}}))
        return ["generate", "--config", str(config), "--api-key-env", KEY_ENV]

    add("generate: output holds a records folder", lambda tmp, w: Case([*generate(tmp), "--out", str(_copy(w.records, tmp / "other"))], "not a 'generate' one", [w.records, tmp]))
    add("generate: output holds foreign files", lambda tmp, w: Case([*generate(tmp), "--out", str(_foreign(tmp / "mine"))], "not a MediFlow", [tmp]))
    add("generate: output is a file", lambda tmp, w: Case([*generate(tmp), "--out", str(_file(tmp / "out"))], "is a file", [tmp]))
    add("generate: output locked by another process", lambda tmp, w: Case([*generate(tmp), "--out", str(tmp / "busy")], "in use by another process", [tmp], hold_lock=tmp / "busy"))
    add("generate: read-only output", lambda tmp, w: Case([*generate(tmp), "--out", str(_mkdir(tmp / "ro") / "out")], "read-only", [tmp], read_only=tmp / "ro"))
    add("generate: --per-cell 0", lambda tmp, w: Case([*generate(tmp), "--per-cell", "0", "--out", str(tmp / "o")], "per_cell", [tmp]))
    add("generate: --concurrency 0", lambda tmp, w: Case([*generate(tmp), "--concurrency", "0", "--out", str(tmp / "o")], "concurrency", [tmp]))
    add("generate: --json-share 2", lambda tmp, w: Case([*generate(tmp), "--json-share", "2", "--out", str(tmp / "o")], "json_share", [tmp]))
    add("generate: unknown --teacher local:x", lambda tmp, w: Case(["generate", "--teacher", "local:x", "--out", str(tmp / "o")], "local:x", [tmp]))
    add("generate: a teacher server nobody runs", lambda tmp, w: Case([*generate(tmp), "--out", str(tmp / "o")], f"cannot connect to the teacher at {DEAD_URL}", [tmp]))
    add(
        "generate: unset --api-key-env",
        lambda tmp, w: Case(["generate", "--teacher", "openai:m", "--api-key-env", "MEDIFLOW_NOT_SET", "--out", str(tmp / "o")], "(--api-key-env): the environment variable MEDIFLOW_NOT_SET is not set", [tmp]),
    )
    add("generate: no key at all", lambda tmp, w: Case(["generate", "--teacher", "openai:m", "--out", str(tmp / "o")], "with --api-key-env", [tmp], unset=("OPENAI_API_KEY",)))
    add("generate: --shard K above N", lambda tmp, w: Case([*generate(tmp), "--shard", "3/2", "--out", str(tmp / "o")], "needs 1 <= K <= N", [tmp]))
    add("generate: --dry-run with a --shard that is not K/N", lambda tmp, w: Case([*generate(tmp), "--shard", "abc", "--dry-run", "--plan-out", str(tmp / "plan.parquet")], "is not K/N", [tmp]))
    add("generate: --ray-resource-timeout 0", lambda tmp, w: Case([*generate(tmp), "--engine", "ray", "--ray-resource-timeout", "0", "--out", str(tmp / "o")], "ray.resource_timeout", [tmp]))
    add("generate: a Ray cluster address nothing answers on", lambda tmp, w: Case([*generate(tmp), "--engine", "ray", "--ray-address", "127.0.0.1:9", "--out", str(tmp / "o")], "nothing answers at 127.0.0.1:9", [tmp]))
    add("generate: --plan-out is a folder", lambda tmp, w: Case([*generate(tmp), "--dry-run", "--plan-out", str(_mkdir(tmp / "plans"))], "is a folder", [tmp]))
    add("generate: a case profile naming an unknown code", lambda tmp, w: Case([*generate(tmp), "--taxonomy", str(_broken_cases(tmp / "tax")), "--out", str(tmp / "o")], "'I5O' is not an ICD-10-CM", [tmp]))
    add(
        "filter: a taxonomy whose mention context rules are not YAML",
        lambda tmp, w: Case(["filter", str(w.records), str(tmp / "o"), "--taxonomy", str(_text_at(tmp / "tax" / "cases" / "context.yaml", "triggers: [unclosed\n"))], "context.yaml", [w.records, tmp]),
    )
    add("generate: a config that is not UTF-8", lambda tmp, w: Case(["generate", "--config", str(_latin1(tmp / "run.yaml")), "--out", str(tmp / "o")], "not UTF-8", [tmp]))
    add("generate: a taxonomy with an unsafe name", lambda tmp, w: Case([*generate(tmp), "--taxonomy", str(_taxonomy(tmp / "tax", name="../escape")), "--out", str(tmp / "o")], "'../escape'", [tmp]))
    add("generate: a taxonomy schema with a remote $ref", lambda tmp, w: Case([*generate(tmp), "--taxonomy", str(_taxonomy(tmp / "tax", ref="https://example.org/s.json")), "--out", str(tmp / "o")], "only local references", [tmp]))
    add("generate: a taxonomy file that is not UTF-8", lambda tmp, w: Case([*generate(tmp), "--taxonomy", str(_taxonomy(tmp / "tax", latin1=True)), "--out", str(tmp / "o")], "not UTF-8", [tmp]))

    # batch mode: a teacher without a batch API, a recorded batch of another run, a provider's corrupt output file
    def batch_generate(tmp: Path, server: str, out: Path) -> list[str]:
        config = tmp / "run.json"
        config.write_text(json.dumps({**small_run_config(server, out, per_cell=1), "batch": {"poll_interval": 0.02}}))
        return ["generate", "--config", str(config), "--batch"]

    add("generate: --batch with a teacher that has no batch API", lambda tmp, w: Case(["generate", "--teacher", "local", "--batch", "--out", str(tmp / "o")], "the teacher 'local' has no batch API", [tmp]))
    add("generate: --batch against a server without a batch API", lambda tmp, w: Case(batch_generate(tmp, str(w.no_batch_server), tmp / "o"), "has no batch API (GET /batches answered HTTP 404)", [tmp]))
    add("generate: --batch with a recorded batch of another run", lambda tmp, w: Case(batch_generate(tmp, str(w.batch_server), _foreign_batch(tmp / "o", w.batch_server)), "belongs to another run", [tmp]))
    add("generate: --batch and a corrupt batch output file", lambda tmp, w: Case(batch_generate(tmp, str(_corrupting(w.batch_server)), tmp / "o"), "is not a batch result file", [tmp / "run.json"]))
    add("judge: --batch with the embedded local teacher", lambda tmp, w: Case(["judge", str(w.records), str(tmp / "o"), "--teacher", "local", "--batch"], "has no batch API", [w.records, tmp]))
    add("pairs: --batch with --engine ray", lambda tmp, w: Case(COMMANDS["pairs"](w.records, tmp / "o", w) + ["--batch", "--engine", "ray"], "engine: ray with mode: batch is not supported", [w.records, tmp]))
    add("batches: a folder with no batches recorded", lambda tmp, w: Case(["batches", str(w.records)], "no batches recorded", [w.records]))
    add("batches: a corrupt state file", lambda tmp, w: Case(["batches", str(_text_at(tmp / "o" / "batches" / "state.json", '{"run": '))], "not a MediFlow batch state file", [tmp]))
    add("batches --cancel: a folder in use by another process", lambda tmp, w: Case(["batches", str(_with_state(tmp / "busy")), "--cancel"], "in use by another process", [tmp], hold_lock=tmp / "busy"))

    # join: its shares are inputs like any other
    add("join: output inside a share", lambda tmp, w: Case(["join", str(_copy(w.records, tmp / "share") / "joined"), str(tmp / "share")], "is inside the input", [tmp]))
    add("join: a folder that is not a share", lambda tmp, w: Case(["join", str(tmp / "joined"), str(w.records)], "not a generate output folder", [w.records, tmp]))

    # numbers out of range
    add("decontaminate: --ngram 0", lambda tmp, w: Case(["decontaminate", str(w.records), str(tmp / "o"), "--eval", str(w.eval_set), "--ngram", "0"], "ngram", [w.records, tmp]))
    add("judge: --samples 0", lambda tmp, w: Case(COMMANDS["judge"](w.records, tmp / "o", w) + ["--samples", "0"], "samples", [w.records, tmp]))
    add("dedup: --values sloppy", lambda tmp, w: Case(["dedup", str(w.records), str(tmp / "o"), "--values", "sloppy"], "invalid choice: 'sloppy'", [w.records, tmp]))
    add("dedup: --workers -1", lambda tmp, w: Case(["dedup", str(w.records), str(tmp / "o"), "--workers", "-1"], "workers: -1 is less than the minimum of 0", [w.records, tmp]))
    add("curate: dedup.values not strict or lenient", lambda tmp, w: Case(["curate", str(w.records), str(tmp / "o"), "--config", str(_text(tmp / "c.yaml", "dedup: {values: loose}\n"))], "dedup.values", [w.records, tmp]))
    add("export: --max-shard-rows 0", lambda tmp, w: Case(["export", str(w.records), "--local-dir", str(tmp / "o"), "--max-shard-rows", "0"], "max_shard_rows: 0 is less than the minimum of 1", [w.records, tmp]))
    add("export: --max-shard-mb -1", lambda tmp, w: Case(["export", str(w.records), "--local-dir", str(tmp / "o"), "--max-shard-mb", "-1"], "max_shard_mb: -1.0 is less than or equal to the minimum of 0", [w.records, tmp]))
    add("export: split shares that do not sum to 1", lambda tmp, w: Case(["export", str(w.records), "--local-dir", str(tmp / "o"), "--split-train", "0.5"], "split.train: train + validation + test = 0.6", [w.records, tmp]))
    add("export: neither --local-dir nor --to-hub", lambda tmp, w: Case(["export", str(w.records)], "export: nowhere to write", [w.records, tmp]))
    add("export: --to-hub without a token", lambda tmp, w: Case(["export", str(w.records), "--to-hub", "org/name", "--token-env", "MEDIFLOW_NO_SUCH_TOKEN"], "no Hub token: set the environment variable MEDIFLOW_NO_SUCH", [w.records, tmp]))
    add("audit: a misspelt key in --config", lambda tmp, w: Case(["audit", str(w.records), "--config", str(_text(tmp / "audit.yaml", "sample_sise: 3\n"))], "did you mean 'sample_size'", [w.records, tmp]))
    add("audit: --sample-size 0", lambda tmp, w: Case(["audit", str(w.records), "--sample-size", "0"], "sample_size: 0 is less than the minimum of 1", [w.records, tmp]))
    add("curate: a config that is not UTF-8", lambda tmp, w: Case(["curate", str(w.records), str(tmp / "o"), "--config", str(_latin1(tmp / "c.yaml"))], "not UTF-8", [w.records, tmp]))
    # config keys: the flags derived from every config's fields, and the config files they override
    add("curate: --judge-limits-rpm 0", lambda tmp, w: Case(["curate", str(w.records), str(tmp / "o"), "--teacher", "openai:m", "--judge-limits-rpm", "0"], "judge.limits.rpm: 0.0 is less than or equal", [w.records, tmp]))
    add("curate: a misplaced key in --config", lambda tmp, w: Case(["curate", str(w.records), str(tmp / "o"), "--config", str(_text(tmp / "c.yaml", "judge: {concurrency: 4}\n"))], "'judge.limits.concurrency'", [w.records, tmp]))
    add("pairs: --judge-samples 0", lambda tmp, w: Case(COMMANDS["pairs"](w.records, tmp / "o", w) + ["--judge-samples", "0"], "judge_samples: 0 is less than the minimum of 1", [w.records, tmp]))
    add("pairs: a --config with an unknown key", lambda tmp, w: Case(COMMANDS["pairs"](w.records, tmp / "o", w) + ["--config", str(_text(tmp / "p.yaml", "min_margn: 1\n"))], "did you mean 'min_margin'", [w.records, tmp]))
    add("pairs: a missing --config", lambda tmp, w: Case(COMMANDS["pairs"](w.records, tmp / "o", w) + ["--config", str(tmp / "none.yaml")], "cannot read config file", [w.records, tmp]))
    add("generate: --sampling-response-temperature -1", lambda tmp, w: Case([*generate(tmp), "--sampling-response-temperature", "-1", "--out", str(tmp / "o")], "sampling.response.temperature: -1", [tmp]))
    add("train sft: a config that is not UTF-8", lambda tmp, w: Case(["train", "sft", "--config", str(_latin1(tmp / "t.yaml"))], "not UTF-8", [tmp]))

    # training flags: length handling and precision are checked before anything is read or written
    def sft(tmp: Path, w: World, *flags: str, stage: str = "sft") -> Case:
        return Case(["train", stage, "--config", str(_train_config(tmp, w.records, tmp / "out")), *flags], "", [w.records, tmp])

    add("train sft: --data-overlong trim", lambda tmp, w: replace(sft(tmp, w, "--data-overlong", "trim"), says="argument --data-overlong: invalid choice"))
    add("train dpo: --data-packing", lambda tmp, w: replace(sft(tmp, w, "--data-packing", stage="dpo"), says="data.packing: DPO compares whole chosen/rejected sequences"))
    add(
        "train pit: --data-chunk-overlap above half of max_length",
        lambda tmp, w: replace(
            sft(tmp, w, "--data-documents", str(w.records), "--data-task-data", str(w.records), "--data-max-length", "64", "--data-chunk-overlap", "40", stage="pit"), says="data.chunk_overlap: must be below half of data.max_length (64)"
        ),
    )
    add("train sft: --train-bf16 with --train-fp16", lambda tmp, w: replace(sft(tmp, w, "--train-bf16", "--train-fp16"), says="choose one mixed precision"))
    add("train sft: --data-max-length 0", lambda tmp, w: replace(sft(tmp, w, "--data-max-length", "0"), says="data.max_length"))
    # each stage's own section: its flags, and no other stage's keys
    add("train dpo: --dpo-beta 0", lambda tmp, w: replace(sft(tmp, w, "--dpo-beta", "0", stage="dpo"), says="dpo.beta: 0"))
    add("train sft: --dpo-beta (another stage's key)", lambda tmp, w: replace(sft(tmp, w, "--dpo-beta", "0.2"), says="unrecognized arguments: --dpo-beta"))
    add("train qa: no teacher", lambda tmp, w: replace(sft(tmp, w, stage="qa"), says="qa.teacher is required for the qa stage"))
    add("train qa: --batch with the embedded local teacher", lambda tmp, w: replace(sft(tmp, w, "--teacher", "local", "--batch", stage="qa"), says="qa.mode: batch: the teacher 'local' has no batch API"))
    add("train qa: --concurrency 0", lambda tmp, w: replace(sft(tmp, w, "--teacher", "local", "--concurrency", "0", stage="qa"), says="qa.limits.concurrency: 0 is less than the minimum of 1"))

    # every setting is checked before a model loads or the output folder is touched (issue 22)
    def trained(tmp: Path, w: World, stage: str, *flags: str, says: str) -> Case:
        return Case([*_model_argv(f"train {stage}", tmp, w, w.records, tmp / "out"), *flags], says, [w.records, w.pairs, w.model, tmp])

    add("train dpo: --dpo-loss-type that TRL does not know", lambda tmp, w: trained(tmp, w, "dpo", "--dpo-loss-type", "sigmoidd", says="dpo.loss_type: 'sigmoidd' is not one of TRL's loss types"))
    add(
        "train sft: --model-attn-implementation flash_attention_2 without flash-attn",
        lambda tmp, w: trained(tmp, w, "sft", "--model-attn-implementation", "flash_attention_2", says="model.attn_implementation: flash_attention_2 needs the flash-attn package"),
    )
    add("train sft: --resume a checkpoint whose save was killed", lambda tmp, w: trained(tmp, w, "sft", "--resume", str(_killed_checkpoint(tmp / "checkpoint-3")), says="holds only config.json: no weights, optimizer or trainer state"))
    add("train sft: --model-attn-implementation fast", lambda tmp, w: replace(sft(tmp, w, "--model-attn-implementation", "fast"), says="argument --model-attn-implementation: invalid choice"))
    if not _cuda():
        add("train sft: --method-finetuning qlora without a GPU", lambda tmp, w: trained(tmp, w, "sft", "--method-finetuning", "qlora", says="qlora loads the base in 4 bits with bitsandbytes, which needs a CUDA GPU"))
    # train eval: its held-out inputs are checked before a model is loaded
    add("train eval: --eval-eval-batch-size 0", lambda tmp, w: replace(sft(tmp, w, "--eval-eval-batch-size", "0", stage="eval"), says="eval.eval_batch_size: 0 is less than the minimum of 1"))
    add("train eval: corrupt --data-records", lambda tmp, w: replace(sft(tmp, w, "--data-records", str(w.bad["corrupt"]), stage="eval"), says="not a readable Parquet file"))
    add("train eval: a missing --data-records", lambda tmp, w: replace(sft(tmp, w, "--data-records", str(tmp / "nowhere.jsonl"), stage="eval"), says="no such file or folder"))
    # the model-writing commands: their output folder overlaps no input, is locked, holds no other config's run
    for command in MODEL_COMMANDS:
        add(
            f"{command}: output inside the data",
            lambda tmp, w, c=command: Case(  # a merge's data: an expert model
                _model_argv(c, tmp, w, _copy(w.expert if c.startswith("merge") else w.records, tmp / "data"), tmp / "data" / "out"), "is inside the input", [tmp]
            ),
        )
        add(f"{command}: output contains the model", lambda tmp, w, c=command: Case(_model_argv(c, tmp, w, w.records, tmp, model=Path(shutil.copytree(w.model, tmp / "model"))), "contains the input", [w.records, tmp]))
        add(f"{command}: output locked by another process", lambda tmp, w, c=command: Case(_model_argv(c, tmp, w, w.records, tmp / "busy"), "in use by another process", [w.records, tmp], hold_lock=tmp / "busy"))
        add(f"{command}: output holds a run of another config", lambda tmp, w, c=command: Case(_model_argv(c, tmp, w, w.records, _other_run(tmp / "other", MODEL_COMMANDS[c])), "run of another config", [w.records, tmp]))
        add(f"{command}: output holds another kind of folder", lambda tmp, w, c=command: Case(_model_argv(c, tmp, w, w.records, _copy(w.pairs, tmp / "other")), "folder, not a", [w.records, tmp]))
    add("train sft: a model folder whose run did not finish", lambda tmp, w: Case(_model_argv("train sft", tmp, w, w.records, tmp / "out", model=_unfinished(tmp / "merged", w.model)), "did not finish (status running)", [w.records, tmp]))
    add(
        "merge --preset: output inside its evaluator's data",
        lambda tmp, w: Case(
            _model_argv(
                "merge --preset",
                tmp,
                w,
                w.records,
                tmp / "heldout" / "out",
                evaluate={"eval_config": str(_text(tmp / "eval.yaml", json.dumps({"data": {"records": str(_copy(w.records, tmp / "heldout"))}, "output": {"dir": str(tmp / "evals")}})))},
            ),
            "is inside the input",
            [tmp],
        ),
    )
    add("merge --preset: a work_dir outside the output", lambda tmp, w: Case(_model_argv("merge --preset", tmp, w, w.records, tmp / "out", work_dir="elsewhere"), "work_dir: the preset keeps its cache in", [tmp]))
    add(
        "merge --preset: the same file as eval_config and report_config",
        lambda tmp, w: Case(
            _model_argv("merge --preset", tmp, w, w.records, tmp / "out", evaluate={"eval_config": str(_eval_config(tmp, w)), "report_config": str(tmp / "eval.yaml")}), "eval_config and report_config are the same file", [w.records, tmp]
        ),
    )
    add("merge --preset: --search-budget 0", lambda tmp, w: Case([*_model_argv("merge --preset", tmp, w, w.records, tmp / "out"), "--search-budget", "0"], "search.budget: 0 is less than the minimum of 1", [tmp]))
    add("merge: a preset flag with a mergekit-format config", lambda tmp, w: Case([*_model_argv("merge", tmp, w, w.records, tmp / "out"), "--search-budget", "3"], "search.budget: keys of a preset config", [tmp]))
    add(
        "merge --preset: --seed (a mergekit-format merge's option)",
        lambda tmp, w: Case([*_model_argv("merge --preset", tmp, w, w.records, tmp / "out"), "--seed", "3"], "--seed: options of a mergekit-format merge, and this is a preset", [tmp]),
    )
    add("merge: a config that is not UTF-8", lambda tmp, w: Case(["merge", "--config", str(_latin1(tmp / "m.yaml")), "--output", str(tmp / "merged")], "not UTF-8", [tmp]))
    add("merge: a missing config", lambda tmp, w: Case(["merge", "--config", str(tmp / "none.yaml"), "--output", str(tmp / "merged")], "not found", [tmp]))
    add(
        "merge: a Hub id that is not in the local Hugging Face cache",
        lambda tmp, w: Case(
            [
                "merge",
                "--config",
                str(_text(tmp / "m.yaml", json.dumps({"merge_method": "linear", "models": [{"model": str(w.model), "parameters": {"weight": 0.5}}, {"model": "tiny-org/never-cached", "parameters": {"weight": 0.5}}]}))),
                "--output",
                str(tmp / "merged"),
            ],
            "'tiny-org/never-cached' is neither a model folder with config.json nor a Hub id in the local Hugging Face cache",
            [w.model, tmp],
        ),
    )
    _single_file_cases(add, generate)
    _link_cases(add, generate)
    return cases


ANOTHER_RUN = "of another MediFlow run"


def _single_file_cases(add: Callable[[str, Callable[[Path, World], Case]], None], generate: Callable[[Path], list[str]]) -> None:
    """Every path a command writes, folder or single file, goes through one guard (issue 23)."""

    def shard(run: Path) -> Path:
        return run / "data" / "part-00000.parquet"

    add("audit: --html over a shard of its input", lambda tmp, w: Case(["audit", str(_copy(w.records, tmp / "run")), "--html", str(shard(tmp / "run"))], "is inside the input", [tmp]))
    add("audit: --html over its input's manifest", lambda tmp, w: Case(["audit", str(_copy(w.records, tmp / "run")), "--html", str(tmp / "run" / "manifest.json")], "is inside the input", [tmp]))
    add("audit: --html through a symlink to its input's shard", lambda tmp, w: Case(["audit", str(_copy(w.records, tmp / "run")), "--html", str(_symlink(tmp / "report.html", shard(tmp / "run")))], "is inside the input", [tmp]))
    add("audit: --html over another run's shard", lambda tmp, w: Case(["audit", str(w.records), "--html", str(shard(_copy(w.pairs, tmp / "other")))], ANOTHER_RUN, [w.records, tmp]))
    add("audit: --html names a folder", lambda tmp, w: Case(["audit", str(w.records), "--html", str(_mkdir(tmp / "reports"))], "is a folder", [w.records, tmp]))
    add("audit: --html under a file", lambda tmp, w: Case(["audit", str(w.records), "--html", str(_file(tmp / "reports") / "a.html")], "is a file", [w.records, tmp]))
    add("generate: --plan-out over a finished run's shard", lambda tmp, w: Case([*generate(tmp), "--dry-run", "--plan-out", str(shard(_copy(w.records, tmp / "run")))], ANOTHER_RUN, [tmp]))
    add("generate: --plan-out is its --config file", lambda tmp, w: Case([*generate(tmp), "--dry-run", "--plan-out", str(tmp / "run.json")], "is the config file", [tmp]))
    add("generate: --plan-out under a file", lambda tmp, w: Case([*generate(tmp), "--dry-run", "--plan-out", str(_file(tmp / "plans") / "plan.parquet")], "is a file", [tmp]))
    add("generate: --out inside another run's folder", lambda tmp, w: Case([*generate(tmp), "--out", str(_copy(w.records, tmp / "other") / "run")], ANOTHER_RUN, [tmp]))
    add("judge: --cache inside its input", lambda tmp, w: Case(COMMANDS["judge"](_copy(w.records, tmp / "run"), tmp / "out", w) + ["--cache", str(tmp / "run" / "cache.sqlite")], "is inside the input", [tmp]))
    add(
        "judge: --cache is its --config file",
        lambda tmp, w: Case(COMMANDS["judge"](w.records, tmp / "out", w) + ["--config", str(_text(tmp / "c.yaml", "judge: {samples: 1}\n")), "--cache", str(tmp / "c.yaml")], "is the config file", [w.records, tmp]),
    )
    add("judge: --cache in another run's folder", lambda tmp, w: Case(COMMANDS["judge"](w.records, tmp / "out", w) + ["--cache", str(_copy(w.pairs, tmp / "other") / "cache.sqlite")], ANOTHER_RUN, [w.records, tmp]))
    add(
        "curate: --judge-cache inside its input",
        lambda tmp, w: Case(
            ["curate", str(_copy(w.records, tmp / "run")), str(tmp / "out"), "--teacher", "openai:m", "--base-url", DEAD_URL, "--api-key-env", KEY_ENV, "--judge-cache", str(tmp / "run" / "cache.sqlite")], "is inside the input", [tmp]
        ),
    )
    add("train eval: --output-report is its --config file", lambda tmp, w: Case([*_model_argv("train eval", tmp, w, w.records, tmp / "out"), "--output-report", str(tmp / "eval.yaml")], "is the config file", [w.records, tmp]))
    add(
        "train eval: --output-report inside its data",
        lambda tmp, w: Case([*_model_argv("train eval", tmp, w, _copy(w.records, tmp / "data"), tmp / "out"), "--output-report", str(tmp / "data" / "report.json")], "is inside the input", [tmp]),
    )
    add(
        "train eval: --output-report in another run's folder",
        lambda tmp, w: Case([*_model_argv("train eval", tmp, w, w.records, tmp / "out"), "--output-report", str(_copy(w.pairs, tmp / "other") / "report.json")], ANOTHER_RUN, [w.records, tmp]),
    )
    add(
        "train sft: --model-cache-dir inside its data",
        lambda tmp, w: Case(  # refused before a conversion starts
            [*_model_argv("train sft", tmp, w, _copy(w.records, tmp / "data"), tmp / "out", model=Path("gemma3-270m")), "--model-cache-dir", str(tmp / "data" / "models")], "is inside the input", [tmp]
        ),
    )
    add("train sft: output inside another run's folder", lambda tmp, w: Case(_model_argv("train sft", tmp, w, w.records, _copy(w.pairs, tmp / "other") / "sft"), ANOTHER_RUN, [w.records, tmp]))
    add("train sft: output contains its config file", lambda tmp, w: Case(_model_argv("train sft", _mkdir(tmp / "out"), w, w.records, tmp / "out"), "contains the config file", [w.records, tmp]))
    add("merge: output contains its config file", lambda tmp, w: Case(_model_argv("merge", _mkdir(tmp / "out"), w, w.records, tmp / "out"), "contains the config file", [tmp]))
    add("merge: output inside another run's folder", lambda tmp, w: Case(_model_argv("merge", tmp, w, w.records, _copy(w.pairs, tmp / "other") / "merged"), ANOTHER_RUN, [tmp]))
    for command in COMMANDS:
        add(f"{command}: output inside another run's folder", lambda tmp, w, c=command: Case(COMMANDS[c](w.records, _copy(w.pairs, tmp / "other") / "out", w), ANOTHER_RUN, [w.records, tmp]))


LINKED = "is a symbolic link"


def _linked(folder: Path, entry: str, target: Path) -> Path:
    """``folder`` with its ``entry`` replaced by a symbolic link to ``target``."""
    path = folder / entry
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.symlink_to(target)
    return folder


def _sqlite(path: Path) -> Path:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("create table paid (key text primary key, answer text)")
        db.execute("insert into paid values ('k', 'an answer somebody paid for')")
        db.commit()
    return path


def _exported(tmp: Path, world: World, name: str) -> Path:
    assert main(["export", str(world.records), "--local-dir", str(tmp / name)]) == 0
    return tmp / name


def _link_cases(add: Callable[[str, Callable[[Path, World], Case]], None], generate: Callable[[Path], list[str]]) -> None:
    """No write follows a link inside an output folder: each kind of link, planted; its target must not change (issue 23)."""

    def filtered(tmp: Path, w: World) -> Path:
        assert main(["filter", str(w.records), str(tmp / "out")]) == 0  # a finished run of the same command: a rerun resumes it
        return tmp / "out"

    add("filter: a rerun whose data/ links into another run", lambda tmp, w: Case(COMMANDS["filter"](w.records, _linked(filtered(tmp, w), "data", _copy(w.records, tmp / "other") / "data"), w), LINKED, [w.records, tmp]))
    for entry, target in (("data", "data"), ("data/part-00000.parquet", "data/part-00000.parquet"), ("manifest.json", "manifest.json"), ("rejects.parquet", "rejects.parquet"), (".lock", "manifest.json")):
        add(
            f"filter: --overwrite with {entry} a link into another run",
            lambda tmp, w, e=entry, t=target: Case([*COMMANDS["filter"](w.records, _linked(filtered(tmp, w), e, _copy(w.records, tmp / "other") / t), w), "--overwrite"], LINKED, [w.records, tmp]),
        )
    add(
        "judge: cache.sqlite a link to another run's cache",
        lambda tmp, w: Case(COMMANDS["judge"](w.records, _linked(_mkdir(tmp / "out"), "cache.sqlite", _sqlite(_copy(w.records, tmp / "other") / "cache.sqlite")), w), LINKED, [w.records, tmp]),
    )
    add(
        "export: --overwrite with data/sft a link into another export",
        lambda tmp, w: Case(["export", str(w.records), "--local-dir", str(_linked(_exported(tmp, w, "out"), "data/sft", _exported(tmp, w, "other") / "data" / "sft")), "--overwrite"], LINKED, [w.records, tmp]),
    )
    add(
        "export: --overwrite with README.md a link into another export",
        lambda tmp, w: Case(["export", str(w.records), "--local-dir", str(_linked(_exported(tmp, w, "out"), "README.md", _exported(tmp, w, "other") / "README.md")), "--overwrite"], LINKED, [w.records, tmp]),
    )
    add("generate: --overwrite with data/ a link into another run", lambda tmp, w: Case([*generate(tmp), "--out", str(_linked(_copy(w.records, tmp / "out"), "data", _copy(w.records, tmp / "other") / "data")), "--overwrite"], LINKED, [tmp]))
    add(
        "train sft: --overwrite with model/ a link to its base model",
        lambda tmp, w: Case([*_model_argv("train sft", tmp, w, w.records, _linked(_other_run(tmp / "out", "sft"), "model", Path(shutil.copytree(w.model, tmp / "base"))), model=tmp / "base"), "--overwrite"], LINKED, [w.records, tmp]),
    )
    add(
        "merge: --overwrite with a weights file a link into an expert",
        lambda tmp, w: Case([*_model_argv("merge", tmp, w, w.records, _linked(_other_run(tmp / "out", "merge"), "model.safetensors", _weights(Path(shutil.copytree(w.expert, tmp / "expert"))))), "--overwrite"], LINKED, [tmp]),
    )


def _weights(model: Path) -> Path:
    return next(model.glob("*.safetensors"))


#: The commands that write a model folder (or an eval report), and the kind of folder each writes.
MODEL_COMMANDS = {"train sft": "sft", "train dpo": "dpo", "train pit": "pit", "train eval": "eval", "merge": "merge", "merge --preset": "merge"}


def _model_argv(command: str, tmp: Path, world: World, data: Path, out: Path, *, model: Path | None = None, **extra: str) -> list[str]:
    """A model command over ``data`` (records; pairs for dpo) writing ``out``, with a real tiny model."""
    model = model or world.model
    if command.startswith("merge"):
        if command == "merge":
            config = {"merge_method": "slerp", "base_model": str(model), "models": [{"model": str(model)}, {"model": str(data if data != world.records else world.expert)}], "parameters": {"t": 0.5}}
            return ["merge", "--config", str(_text(tmp / "merge.yaml", json.dumps(config))), "--output", str(out)]
        experts = [str(world.expert)] if data == world.records else [str(world.expert), str(data)]
        config = {"preset": "mediphi", "base_model": str(model), "experts": experts, "output": str(out), "evaluate": {"callable": "mediflow.train.merge.search:best_trial"}, **extra}
        return ["merge", "--config", str(_text(tmp / "preset.yaml", json.dumps(config)))]
    stage = command.split()[1]
    data_keys = {
        "sft": {"train": str(data)},
        "dpo": {"train": str(data if data != world.records else world.pairs)},
        "pit": {"documents": str(data), "text_field": "input", "task_data": str(world.task_data)},
        "eval": {"documents": str(data), "text_field": "input"},
    }[stage]
    config = {"model": {"name_or_path": str(model)}, "data": {**data_keys, "max_length": 2048}, "output": {"dir": str(out)}}
    return ["train", stage, "--config", str(_text(tmp / f"{stage}.yaml", json.dumps(config)))]


def _eval_config(tmp: Path, world: World) -> Path:
    """A ``train eval`` config scoring held-out records (the world's records)."""
    return _text(tmp / "eval.yaml", json.dumps({"data": {"records": str(world.records)}, "output": {"dir": str(tmp / "evals")}}))


def _killed_checkpoint(folder: Path) -> Path:
    """A checkpoint folder whose save was killed after its config (what ``kill -9`` mid-save leaves)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _other_run(folder: Path, kind: str) -> Path:
    """A finished folder of ``kind`` made by another config."""
    run = OutputFolder.open(folder, kind=kind, holds="model", config={"made_by": "another config"}, details={"fingerprint": {"train.learning_rate": 1.0}})
    run.finish({})
    return folder


def _unfinished(folder: Path, model: Path) -> Path:
    """A merge folder whose run was killed after its model files arrived: its manifest still says running."""
    run = OutputFolder.open(folder, kind="merge", holds="model", config={"made_by": "a killed merge"}, staged=False)
    for file in model.iterdir():
        shutil.copy(file, folder / file.name)
    run.close()
    return folder


def _symlink(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _broken_cases(folder: Path) -> Path:
    """A taxonomy folder whose cases/profiles.yaml names a code that does not exist."""
    (folder / "cases").mkdir(parents=True)
    text = (ROOT / "taxonomies" / "cases" / "profiles.yaml").read_text(encoding="utf-8")
    (folder / "cases" / "profiles.yaml").write_text(text.replace("      I50: 7     # heart failure", "      I5O: 7"), encoding="utf-8")
    return folder


def _mkdir(folder: Path) -> Path:
    folder.mkdir()
    return folder


def _foreign(folder: Path) -> Path:
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    return folder


def _file(path: Path) -> Path:
    path.write_text("a file, not a folder")
    return path


def _text_at(path: Path, text: str) -> Path:
    """``text`` written at ``path`` (its folders made); the folder two levels up (an output folder holding it)."""
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path.parent.parent


def _with_state(folder: Path) -> Path:
    BatchState.new("generate").save(folder)
    return folder


def _foreign_batch(folder: Path, server: TeacherServerURL | None) -> Path:
    """An output folder whose batch state records, as still running, a batch that another run created at the provider."""
    import openai

    client = openai.OpenAI(base_url=str(server), api_key="unused", max_retries=0)
    line = {"custom_id": "k", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}
    uploaded = client.files.create(file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"mediflow_run": "another-run", "mediflow_file": "f"})
    state = BatchState.new("generate")
    state.records.append(BatchRecord("f", "teacher", 1, "round-001-teacher-0001.jsonl", 1, 100, status="in_progress", input_file_id=uploaded.id, id=batch.id))
    state.save(folder)
    return folder


def _corrupting(server: TeacherServerURL | None) -> TeacherServerURL:
    """The batch server, set to answer its next batch with an output file that is not JSONL."""
    assert server is not None
    server.reset()
    server.control(batch_corrupt=1)
    return server


def _read_only_case(command: str, tmp: Path, world: World) -> Case:
    """The output inside a folder nobody may write (made so while the command runs)."""
    (tmp / "ro").mkdir()
    return Case(COMMANDS[command](world.records, tmp / "ro" / "out", world), "read-only", [world.records, tmp], read_only=tmp / "ro")


@contextlib.contextmanager
def _unwritable(folder: Path) -> Iterator[None]:
    """``folder`` read-only for the duration: chmod 555, or, for root, the immutable attribute."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def _latin1(path: Path) -> Path:
    path.write_bytes("per_cell: 1\n# caf\xe9 au lait\n".encode("latin-1"))
    return path


def _taxonomy(folder: Path, *, name: str = "veterinary_note", ref: str | None = None, latin1: bool = False) -> Path:
    category = next(iter(load_taxonomy().categories))
    (folder / "document_types").mkdir(parents=True)
    entry = f"document_types:\n  - name: {json.dumps(name)}\n    category: {category}\n    description: A note.\n    sections: [A]\n    typical_length: {{min_words: 100, max_words: 200}}\n    specialties: [x]\n    settings: [y]\n"
    if latin1:
        entry += "# caf\xe9\n"
    (folder / "document_types" / "extra.yaml").write_bytes(entry.encode("latin-1"))
    if ref is not None:
        (folder / "tasks").mkdir()
        (folder / "tasks" / "remote_task.yaml").write_text(
            "name: remote_task\ndescription: d\ninstruction_guidance: i\nanswer_guidance: a\n"
            f"applies_to: {{categories: [{category}]}}\n"
            f"output_schema: {{type: object, properties: {{x: {{$ref: {json.dumps(ref)}}}}}}}\nexample_output: {{x: 1}}\n"
        )
    return folder


CASES = build_cases()


def _run_in_sandbox(case: Case, tmp: Path) -> tuple[int, str]:
    """The CLI in a subprocess under a small file-size limit: a disk that fills up mid-run."""
    limit_bytes = 256 * 1024

    def prepare() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), KEY_ENV: "unused"}
    process = subprocess.run([sys.executable, "-m", "mediflow", *case.argv], capture_output=True, text=True, env=env, preexec_fn=prepare, timeout=300, cwd=tmp)
    return process.returncode, process.stderr


@pytest.mark.parametrize("make", [make for _, make in CASES], ids=[name for name, _ in CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(make: Callable[[Path, World], Case], world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    tmp = tmp_path / "case"
    tmp.mkdir()
    case = make(tmp, world)
    protected = [path for path in case.protect]
    before = {str(path): tree(path) for path in protected}
    if case.sandbox is not None:
        code, err = _run_in_sandbox(case, tmp)
    else:
        monkeypatch.setenv(KEY_ENV, "unused")
        for name in case.unset:
            monkeypatch.delenv(name, raising=False)
        lock = None
        unwritable = _unwritable(case.read_only) if case.read_only is not None else contextlib.nullcontext()
        if case.hold_lock is not None:
            case.hold_lock.mkdir(exist_ok=True)
            lock = FolderLock(case.hold_lock)
            lock.acquire()
            before = {str(path): tree(path) for path in protected}
        try:
            with unwritable:
                try:
                    code = main(case.argv)
                except SystemExit as exit_:  # argparse rejects a flag value itself
                    code = int(exit_.code or 0)
        finally:
            if lock is not None:
                lock.release()
        err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert case.says in lines[0], lines[0]
    if case.sandbox == "full_disk":
        manifest = json.loads((tmp / "out" / "manifest.json").read_text())
        assert manifest["status"] == "failed" and "File too large" in manifest["reason"]  # the folder says why
        return
    assert {str(path): tree(path) for path in protected} == before


def test_the_table_covers_every_command_and_class() -> None:
    names = [name for name, _ in CASES]
    for command in ("generate", "filter", "judge", "dedup", "decontaminate", "curate", "pairs", "export", "audit", "train sft", "train dpo", "train pit", "train eval", "merge", "merge --preset", "batches"):
        assert any(name.startswith(f"{command}:") for name in names), command
    for kind in (
        "inside the input",
        "input inside the output",
        "another kind",
        "locked",
        "corrupt",
        "truncated",
        "empty",
        "missing_column",
        "mistyped",
        "task name that is a path",
        "read-only",
        "full disk",
        " 0",
        # issue 23: single-file outputs, links inside an output, hostile Parquet
        "--html over",
        "--plan-out over",
        "--cache inside",
        "--output-report",
        "--model-cache-dir",
        "another run's folder",
        "its config file",
        "a link into another run",
        "bad_utf8",
        "duplicate_column",
        "null_output",
        "duplicate_id",
    ):
        assert any(kind in name for name in names), kind
    for link in ("data a link", "data/part-00000.parquet a link", "manifest.json a link", "rejects.parquet a link", ".lock a link", "cache.sqlite a link", "README.md a link", "data/sft a link", "model/ a link", "weights file a link"):
        assert any(link in name for name in names), link  # every kind of link, planted
