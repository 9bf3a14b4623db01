"""The cache Ray actors share across hosts: per-actor append-only segments over the run's read-only cache, merged by the driver.

No Ray here: a segment is a file and a lock, and these tests hold both directly (two handles in one
process conflict like two hosts' processes do).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

from mediflow.engine import Engine, LimitsConfig
from mediflow.engine.cache import ResponseCache, SegmentWriter, SharedCache, merge_segments, segment_usage, segments_dir
from mediflow.folders import CACHE_NAME
from mediflow.folders.output import CACHE_SEGMENTS
from mediflow.teachers import ChatRequest, ChatResponse, make_teacher
from mediflow.testing import TeacherServerURL


def answer(i: int) -> ChatResponse:
    return ChatResponse(text=f"answer {i}", finish_reason="stop", prompt_tokens=3, completion_tokens=i, model="m")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_segments_sit_beside_the_cache_in_the_folder_contract(tmp_path: Path) -> None:
    assert segments_dir(tmp_path / CACHE_NAME) == tmp_path / CACHE_SEGMENTS


def test_an_actor_reads_the_run_cache_and_appends_only_to_its_own_segment(tmp_path: Path) -> None:
    cache_path = tmp_path / CACHE_NAME
    base = ResponseCache(cache_path)
    base.put("old", "t", answer(0))
    base.close()
    merge_segments(cache_path)  # what the driver does before actors start: the WAL is emptied into the file
    before = cache_path.read_bytes()

    actor = SharedCache(cache_path)
    assert actor.get("old") == answer(0) and actor.get("old").cached
    actor.put("new", "t", answer(1))
    assert actor.get("new") == answer(1)  # queued answers are served at once
    assert lines(actor.segment) == []  # ... and written only by a flush, in a group
    asyncio.run(actor.flush())
    assert [row["key"] for row in lines(actor.segment)] == ["new"]
    assert actor.get("new") == answer(1)  # read back from its segment
    assert cache_path.read_bytes() == before  # the run's cache is never written by an actor

    other = SharedCache(cache_path)  # a live actor's segment is its own: another actor does not index it
    assert other.get("new") is None
    actor.close()
    replacement = SharedCache(cache_path)  # after the writer is gone (a node lost), a new actor reads its answers
    assert replacement.get("new") == answer(1) and replacement.get("new").cached
    other.close()
    replacement.close()


def test_merge_folds_finished_segments_keeps_live_ones_and_skips_a_torn_line(tmp_path: Path) -> None:
    cache_path = tmp_path / CACHE_NAME
    finished, live = SharedCache(cache_path), SharedCache(cache_path)
    for i in range(5):
        finished.put(f"f{i}", "t", answer(i))
        live.put(f"l{i}", "t", answer(i))
    asyncio.run(finished.flush())
    asyncio.run(live.flush())
    finished.close()
    with finished.segment.open("ab") as handle:  # a writer killed in the middle of a write
        handle.write(b'{"key": "torn", "teacher": "t", "te')

    assert merge_segments(cache_path) == 10
    assert not finished.segment.exists() and live.segment.exists()  # the live one is kept for the next merge
    db = sqlite3.connect(f"file:{cache_path}?mode=ro&immutable=1", uri=True)  # what a reader on another host sees
    assert sorted(key for (key,) in db.execute("SELECT key FROM responses")) == sorted([f"f{i}" for i in range(5)] + [f"l{i}" for i in range(5)])
    db.close()

    live.put("l5", "t", answer(5))
    live.close()
    assert merge_segments(cache_path) == 1  # the rest of the live segment, once its writer is gone
    assert not segments_dir(cache_path).exists()
    cache = ResponseCache(cache_path)
    assert len(cache) == 11 and cache.get("torn") is None and cache.get("l5") == answer(5)
    cache.close()


def test_a_group_write_after_a_torn_one_starts_on_a_new_line(tmp_path: Path) -> None:
    actor = SharedCache(tmp_path / CACHE_NAME)
    actor.put("a", "t", answer(1))
    asyncio.run(actor.flush())
    with actor.segment.open("ab") as handle:  # what a write cut by a full disk leaves
        handle.write(b'{"key": "b", "tea')
    actor.put("c", "t", answer(3))
    asyncio.run(actor.flush())
    assert actor.get("c") == answer(3)
    actor.close()
    first, torn, last = actor.segment.read_bytes().splitlines()
    assert (json.loads(first)["key"], torn, json.loads(last)["key"]) == ("a", b'{"key": "b", "tea', "c")
    assert merge_segments(tmp_path / CACHE_NAME) == 2


def test_an_actor_engine_writes_answers_in_groups_off_its_event_loop(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    """60 concurrent answers: each is on disk before the engine hands it over, written in a few fsynced groups from a thread
    (not one synchronous commit per answer on the event loop)."""
    writes: list[tuple[int, str]] = []
    original = SegmentWriter.write_queued

    def spying_write(self: SegmentWriter) -> list[str]:
        keys = original(self)
        if keys:
            writes.append((len(keys), threading.current_thread().name))
        return keys

    async def run() -> tuple[str, Path, list[int]]:
        teacher = make_teacher("openai:test-teacher", base_url=teacher_server)
        on_disk: list[int] = []
        try:
            async with Engine(teacher, tmp_path / CACHE_NAME, LimitsConfig(concurrency=60), progress=False, shared_cache=True) as engine:
                segment = None

                async def one(i: int) -> None:
                    nonlocal segment
                    await engine.complete(ChatRequest(messages=(("user", f"note {i}"),), max_tokens=20))
                    segment = engine._cache.segment  # type: ignore[union-attr]
                    on_disk.append(len(lines(segment)))  # what a kill right now would leave

                await asyncio.gather(*(one(i) for i in range(60)))
                assert segment is not None
                return threading.current_thread().name, segment, on_disk
        finally:
            await teacher.aclose()

    SegmentWriter.write_queued = spying_write  # type: ignore[method-assign]
    try:
        loop_thread, segment, on_disk = asyncio.run(run())
    finally:
        SegmentWriter.write_queued = original  # type: ignore[method-assign]
    assert len(lines(segment)) == 60
    assert all(count >= handed + 1 for handed, count in enumerate(on_disk))  # every answer handed over was already on disk
    assert sum(count for count, _ in writes) == 60 and len(writes) < 60  # grouped
    assert all(thread != loop_thread for _, thread in writes)  # off the event loop
    assert merge_segments(tmp_path / CACHE_NAME) == 60 and teacher_server.stats()["requests"] == 60


def test_the_run_counts_the_answers_a_dead_actor_wrote_after_its_last_report(tmp_path: Path) -> None:
    """Reproduction: after a node loss the manifest counted 52 (later 60) of 74 answers served: the lost actor's last
    answers were on disk (its segment) but not in its last report. The driver counts the segments' lines."""
    from mediflow.scale.config import RayConfig
    from mediflow.scale.ray_runner import RayRun

    cache_path = tmp_path / CACHE_NAME
    for first, count in ((0, 3), (10, 4)):  # two actors' segments; the second one's writer died (closed) after 4 answers
        writer = SegmentWriter(segments_dir(cache_path))
        for i in range(first, first + count):
            writer.append(f"k{i}", "t", answer(i))
        writer.write_queued()
        writer.close()
    assert segment_usage(cache_path) == (7, 21, sum(range(3)) + sum(range(10, 14)))

    run = RayRun([], work=None, config=RayConfig(), folder=tmp_path, cache=cache_path)  # type: ignore[arg-type]  # totals only
    reported = {"requests": 5, "cache_hits": 1, "prompt_tokens": 12, "completion_tokens": 3 + 21}  # the second actor reported 2 of its 4
    run._reports = {"a": {"requests": 3, "cache_hits": 0, "prompt_tokens": 9, "completion_tokens": 3}, "b": {"requests": 2, "cache_hits": 1, "prompt_tokens": 3, "completion_tokens": 21}}
    run._on_disk = segment_usage(cache_path)
    session = run.session
    assert session["requests"] - session["cache_hits"] == 7  # every answer paid for and on disk
    assert session["requests"] == reported["requests"] + 3 and session["cache_hits"] == 1
    assert (session["prompt_tokens"], session["completion_tokens"]) == (21, 3 + 46)
