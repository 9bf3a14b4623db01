"""Batch mode's round loop: passes that defer cache misses, batches that answer them, until nothing is missing.

A stage in batch mode calls :func:`fill_cache_in_batches` before its usual run, with the units
of its work (instruction groups, records, rows) and the coroutine that works one unit on its
engines. Then:

1. Batches a killed run left outstanding (``OUT/batches/state.json``) are finished first: waited
   for, downloaded and read into the cache; never submitted again.
2. A **pass** runs every unit with the engines deferring their misses
   (:meth:`Engine.defer_misses`): a unit whose requests are all cached runs to its end (and is
   not run again in later passes); one that meets a miss stops with
   :class:`~mediflow.engine.deferral.Deferred`, and its miss becomes a line of this round's batch
   files (:class:`~mediflow.batch.files.RoundWriter`, split at the provider's limits). A pass
   writes nothing else: no record, no reject, nothing counted as done.
3. The round's files are uploaded and submitted, at most ``batch.in_flight`` at a time, each step
   recorded in the state file first; the batches are polled every ``batch.poll_interval`` seconds;
   a finished batch's output lines go into the cache (:meth:`Engine.store_batch_answer`). Lines that
   failed, expired or were cancelled simply stay missing: the next pass defers them again, so a
   resubmission holds only those lines. A line refused for a parameter or a response format the
   server does not take teaches the teacher's negotiation and is asked again the new way; a line
   that fails ``batch.line_attempts`` times, or is refused outright, stops the run with one error line
   (everything answered so far stays in the cache).
4. The next pass goes one step further along each unit's chain (document -> instruction ->
   response, correction turns, a cut answer's retry). When a pass defers nothing, every request
   the stage will make is in the cache, and the stage runs as it does online, from the cache: its
   records, rejects and manifest are those of an online run that got the same answers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mediflow.batch.config import BatchConfig
from mediflow.batch.files import LineResult, RoundWriter, read_results, remove_partial
from mediflow.batch.providers import BatchAPI, BatchInfo, batch_api_of, status_error
from mediflow.batch.state import PREPARED, UPLOADED, BatchRecord, BatchState, load_state
from mediflow.engine.deferral import Deferred
from mediflow.engine.engine import Engine
from mediflow.engine.failures import classify
from mediflow.engine.progress import Progress
from mediflow.errors import MediflowError, TeacherError
from mediflow.folders.atomic import remove_leftovers
from mediflow.folders.manifest import now
from mediflow.folders.output import BATCHES_DIR
from mediflow.steps.runner import map_ordered
from mediflow.teachers.factory import TeacherConfig
from mediflow.teachers.openai_compat import completion_response

logger = logging.getLogger(__name__)
Unit = TypeVar("Unit")
_MAX_ERRORS = 5
_UNSAFE = re.compile(r"[^a-z0-9_.-]+")


@dataclass
class _Teacher:
    """One distinct engine of the stage, the roles it serves and its provider's batch API."""

    role: str  # the first role: names its files and records
    engine: Engine
    api: BatchAPI


async def fill_cache_in_batches(
    root: Path,
    kind: str,
    engines: Mapping[str, Engine],
    sections: Mapping[str, TeacherConfig],
    config: BatchConfig,
    units: Callable[[], Iterable[Unit]],
    work: Callable[[Unit], Awaitable[object]],
    *,
    window: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Answer every request ``work`` makes over ``units()`` through provider batches (see the module docstring).

    ``engines`` and ``sections`` are keyed by role (the config key of each teacher section; roles
    sharing a teacher share its engine). The engines must be open. Returns what the manifest
    records under ``batch``.
    """
    runner = BatchRunner(root, kind, engines, sections, config, progress)
    async with runner.opened():
        await runner.finish_outstanding()
        await runner.rounds(units, work, window)
    return runner.report()


async def check_recorded_batches(root: Path, apis: Mapping[str, BatchAPI]) -> None:
    """Before anything is written: every batch ``root`` records as still running is this run's (by role's API)."""
    state = load_state(root)
    if state is None:
        return
    for record in state.records:
        api = apis.get(record.role)
        if record.id is not None and record.outstanding and api is not None and api.keeps_metadata:
            state.check_owns(record, (await api.retrieve(record.id)).metadata, api.describe())


class BatchRunner:
    """One folder's batches: its state file, one batch API per teacher, the rounds (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        kind: str,
        engines: Mapping[str, Engine],
        sections: Mapping[str, TeacherConfig],
        config: BatchConfig,
        progress: Progress | None = None,
    ) -> None:
        self.root = Path(root)
        self.folder = self.root / BATCHES_DIR
        self.kind = kind
        self.config = config
        self.progress = progress
        self.sections = dict(sections)
        self.teachers: dict[str, _Teacher] = {}  # by role (roles sharing an engine share the entry)
        by_engine: dict[int, _Teacher] = {}
        for role, engine in engines.items():
            if id(engine) not in by_engine:
                by_engine[id(engine)] = _Teacher(role, engine, batch_api_of(engine.teacher, config, role))
            self.teachers[role] = by_engine[id(engine)]
        self.state = BatchState.new(kind)
        self._resumed: set[int] = set()  # records of an earlier session (looked up at the provider before creating)
        self._attempts: collections.Counter[str] = collections.Counter()
        self._passes = 0
        self._lines_per_round: dict[int, int] = {}
        self._last_note = ""

    # -- life cycle -------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[BatchRunner]:
        """Load (or start) the folder's state, check every provider, and close the APIs at the end."""
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_partial(self.folder)  # a killed pass's half-written input files (their requests are deferred again)
        remove_leftovers(self.folder)  # a killed download's temp file
        self.state = load_state(self.root) or BatchState.new(self.kind)
        self._resumed = {id(record) for record in self.state.records if record.outstanding}
        for role, section in self.sections.items():
            self.state.teachers[role] = {name: value for name, value in section.to_dict().items() if name in ("spec", "base_url", "api_key_env")}
        try:
            for teacher in self._distinct():
                await teacher.api.check()
            self._save()
            yield self
        finally:
            for teacher in self._distinct():
                teacher.engine.defer_misses(None)
                await teacher.api.aclose()
            if self.progress is not None:
                self.progress.note = None

    def _distinct(self) -> list[_Teacher]:
        return list({id(teacher): teacher for teacher in self.teachers.values()}.values())

    def _save(self) -> None:
        self.state.save(self.root)

    # -- outstanding batches of an earlier session ------------------------------------------------
    async def finish_outstanding(self) -> None:
        """Finish what a killed run left: drop unsent files, create uploaded ones (once), wait for submitted ones."""
        waiting: list[BatchRecord] = []
        for record in self.state.records:
            if not record.outstanding:
                continue
            if record.role not in self.teachers:
                raise MediflowError(
                    f"{self.folder / 'state.json'}: batch {record.id or record.file} was made for '{record.role}', which this run has no teacher for; rerun it with the config that made it, or cancel it with mediflow batches --cancel"
                )
            if record.status == PREPARED:  # never reached the provider: its requests are deferred again
                (self.folder / record.file).unlink(missing_ok=True)
                record.processed = True
                record.unanswered = record.lines
                continue
            waiting.append(record)
        self._save()
        if waiting:
            logger.info("%d batch(es) of an earlier session are outstanding: finishing them first", len(waiting))
            await self._submit_and_wait(waiting)

    # -- rounds -----------------------------------------------------------------------------------
    async def rounds(self, units: Callable[[], Iterable[Unit]], work: Callable[[Unit], Awaitable[object]], window: int) -> None:
        """Passes and batches until a pass defers nothing."""
        done = bytearray()
        while True:
            number = self.state.rounds + 1
            writers = {id(teacher): RoundWriter(self.folder, f"round-{number:03d}-{_slug(teacher.role)}", teacher.api.line, self.config.max_lines, self.config.max_bytes) for teacher in self._distinct()}
            for teacher in self._distinct():
                teacher.engine.defer_misses(writers[id(teacher)])
            try:
                deferred = await self._pass(units, work, window, done, number)
            except BaseException:
                for writer in writers.values():
                    writer.abandon()
                raise
            finally:
                for teacher in self._distinct():
                    teacher.engine.defer_misses(None)
            records = [BatchRecord(file.tag, teacher.role, number, file.path.name, file.lines, file.size) for teacher in self._distinct() for file in writers[id(teacher)].close()]
            if not records:
                return
            lines = sum(record.lines for record in records)
            self._lines_per_round[number] = lines
            logger.info("round %d: %d unit(s) waiting on %d request(s) in %d batch file(s)", number, deferred, lines, len(records))
            self.state.records += records
            self._save()
            await self._submit_and_wait(records)

    async def _pass(self, units: Callable[[], Iterable[Unit]], work: Callable[[Unit], Awaitable[object]], window: int, done: bytearray, number: int) -> int:
        """One pass over the units not finished in an earlier pass; how many were deferred."""
        self._passes += 1
        self._note(f"batch round {number}: reading the cache, collecting the requests still missing")

        async def one(item: tuple[int, Unit]) -> tuple[int, bool]:
            index, unit = item
            if index < len(done) and done[index]:
                return index, True
            try:
                await work(unit)
            except Deferred:
                return index, False
            return index, True

        deferred = 0
        async for index, finished in map_ordered(one, enumerate(units()), window):
            if index >= len(done):
                done.extend(bytes(index + 1 - len(done)))
            done[index] = finished
            deferred += not finished
        return deferred

    # -- submitting and waiting -------------------------------------------------------------------
    async def _submit_and_wait(self, records: list[BatchRecord]) -> None:
        """Submit ``records`` (at most ``in_flight`` unfinished at once), poll them, read each finished one into the cache."""
        queue = collections.deque(record for record in records if record.id is None)
        in_flight = [record for record in records if record.id is not None]
        failures: list[str] = []
        while queue or in_flight:
            while queue and len(in_flight) < self.config.in_flight:
                record = queue.popleft()
                await self._submit(record)
                in_flight.append(record)
            still: list[BatchRecord] = []
            for record in in_flight:
                info = await self._retrieve(record)
                if info.finished:
                    failures += await self._process(record, info)
                else:
                    still.append(record)
            self._save()
            in_flight = still
            self._note_batches(records)
            if in_flight or queue:
                await asyncio.sleep(self.config.poll_interval)
        if failures:
            raise TeacherError(failures[0] + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "") + " (answers received so far are cached; rerun to resume)")

    async def _submit(self, record: BatchRecord) -> None:
        api = self.teachers[record.role].api
        if record.status == PREPARED:
            record.input_file_id = await api.upload(self.folder / record.file)
            record.status, record.uploaded_at = UPLOADED, time.time()
            self._save()  # uploaded, not yet a batch: a rerun looks for the batch before creating it
        metadata = self.state.metadata(record)
        found = None
        if id(record) in self._resumed and api.keeps_metadata:
            found = await api.find(metadata, since=(record.uploaded_at or 0.0) - 300.0)
        assert record.input_file_id is not None
        info = found or await api.create(record.input_file_id, metadata, self.config.completion_window)
        record.id, record.status, record.submitted_at = info.id, info.status, now()
        batch_usage = self.teachers[record.role].engine.stats.batch
        if batch_usage is not None and found is None:
            batch_usage.batches += 1
        self._save()
        logger.info("submitted batch %s (%s, %d requests)", info.id, record.file, record.lines)

    async def _retrieve(self, record: BatchRecord) -> BatchInfo:
        assert record.id is not None
        api = self.teachers[record.role].api
        info = await api.retrieve(record.id)
        if api.keeps_metadata:
            self.state.check_owns(record, info.metadata, api.describe())
        record.status, record.completed, record.failed = info.status, info.completed, info.failed
        return info

    async def _process(self, record: BatchRecord, info: BatchInfo) -> list[str]:
        """Read a finished batch into the cache; the lines that stop the run (one line each)."""
        teacher = self.teachers[record.role]
        where = f"teacher at {teacher.api.describe()}: batch {record.id}"
        input_path = self.folder / record.file
        asked = _keys(input_path) if input_path.is_file() else None
        answered: set[str] = set()
        problems: dict[str, LineResult] = {}
        for kind, file_id in (("output", info.output_file_id), ("error", info.error_file_id)):
            if file_id is None:
                continue
            local = self.folder / f"{record.file}.{kind}"
            await teacher.api.download(file_id, local)
            try:
                for line in read_results(local, f"{where}: its {kind} file {file_id}"):
                    if asked is not None and line.custom_id not in asked:
                        raise MediflowError(f"{where}: its {kind} file {file_id} answers a request the batch was not given ({line.custom_id[:16]}...)")
                    if line.ok:
                        assert line.body is not None
                        try:
                            response = completion_response(line.body, teacher.engine.teacher.model)
                        except ValueError as exc:
                            raise MediflowError(f"{where}: its {kind} file {file_id} holds an unreadable answer for {line.custom_id[:16]}... ({exc})") from None
                        teacher.engine.store_batch_answer(line.custom_id, response)
                        answered.add(line.custom_id)
                    elif line.custom_id not in answered:
                        problems[line.custom_id] = line
            finally:
                local.unlink(missing_ok=True)
        missing = (asked or set()) - answered - set(problems)
        record.stored = len(answered)
        record.unanswered = len(problems) + len(missing)
        record.errors = [line.message() for line in list(problems.values())[:_MAX_ERRORS]] or list(info.errors[:_MAX_ERRORS])
        record.finished_at = now()
        record.processed = True
        self._save()
        failures = self._judge_failures(record, info, where, teacher, problems, missing, input_path)
        for path in (input_path, input_path.with_suffix(".vllm.log"), input_path.with_name(input_path.stem + ".vllm-output.jsonl")):
            path.unlink(missing_ok=True)
        self._save()
        logger.info("batch %s %s: %d answers cached, %d to ask again", record.id, info.status, record.stored, record.unanswered)
        return failures

    def _judge_failures(self, record: BatchRecord, info: BatchInfo, where: str, teacher: _Teacher, problems: dict[str, LineResult], missing: set[str], input_path: Path) -> list[str]:
        """Which unanswered lines go again (and how often they have), which teach the negotiation, which stop the run."""
        if info.status == "failed":
            why = "; ".join(info.errors[:2]) or "no reason given"
            return [f"{where} ({record.file}, {record.lines:,} requests, {record.size:,} bytes) failed validation: {why}; if the provider's limits are lower, lower batch.max_lines / batch.max_bytes"]
        bodies = _bodies(input_path, set(problems)) if problems else {}
        failures: list[str] = []
        retry: list[tuple[str, str]] = [(key, f"not run ({info.status})") for key in missing]
        for key, line in problems.items():
            if line.status is None or line.status == 429 or line.status >= 500 or line.status in (408, 409):
                retry.append((key, line.message()))
            elif key in bodies and teacher.api.learn(bodies[key], line.status, line.body):
                continue  # the negotiation stepped past what was refused: asked again the new way, not an attempt
            else:
                failure = classify(status_error(line.status, line.message(), line.body))
                failures.append(f"{where}: request {key[:16]}... refused ({failure.kind}): {line.message()}")
        for key, message in retry:
            self._attempts[key] += 1
            if self._attempts[key] >= self.config.line_attempts:
                failures.append(f"{where}: request {key[:16]}... failed in {self._attempts[key]} batches (batch.line_attempts); last: {message}")
        return failures

    # -- progress and report ----------------------------------------------------------------------
    def _note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.note = text

    def _note_batches(self, records: list[BatchRecord]) -> None:
        submitted = sum(record.id is not None for record in records)
        running = sum(record.id is not None and not record.processed for record in records)
        finished = sum(record.processed for record in records)
        total = sum(record.lines for record in records)
        done = sum(record.stored if record.processed else record.completed for record in records)
        text = f"batch round {records[0].round}: batches {submitted} submitted, {running} in progress, {finished} done; requests {done:,}/{total:,} done"
        self._note(text)
        if text != self._last_note:  # a line when something moved, not one every poll of a day-long wait
            logger.info(text)
            self._last_note = text

    def report(self) -> dict[str, Any]:
        """What the manifest records under ``batch``: rounds, batches, lines, and where the state is."""
        records = self.state.records
        return {
            "run": self.state.run,
            "rounds": self.state.rounds,
            "passes": self._passes,
            "batches": len([record for record in records if record.id is not None]),
            "lines": sum(record.lines for record in records),
            "answered": sum(record.stored for record in records),
            "asked_again": sum(record.unanswered for record in records),
            "lines_per_round": {str(number): lines for number, lines in sorted(self._lines_per_round.items())},
            "state": f"{BATCHES_DIR}/state.json",
        }


def _slug(role: str) -> str:
    return _UNSAFE.sub("-", role.lower()).strip("-") or "teacher"


def _keys(path: Path) -> set[str]:
    """The custom_ids of an input file (our own file: one JSON object a line)."""
    with open(path, "rb") as handle:
        return {json.loads(raw)["custom_id"] for raw in handle if raw.strip()}


def _bodies(path: Path, keys: set[str]) -> dict[str, dict[str, Any]]:
    """The request bodies of some lines of an input file (the ones a batch refused)."""
    bodies: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return bodies
    with open(path, "rb") as handle:
        for raw in handle:
            line = json.loads(raw) if raw.strip() else None
            if line is not None and line["custom_id"] in keys:
                bodies[line["custom_id"]] = line["body"]
    return bodies
