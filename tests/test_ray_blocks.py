"""``generate`` on Ray reads the plan as blocks aligned with shard ranges: cursors into the lazy plan, and pieces of ranges
that two blocks share joined into shards by the driver. No Ray here: the blocks and the driver's bookkeeping, directly."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mediflow.config import load_config
from mediflow.pipeline.collect import ShardCollector, write_range
from mediflow.pipeline.output import RunOutput
from mediflow.pipeline.plan import build_plan
from mediflow.pipeline.ray_generate import BlockDone, BlockPlan, piece_folder, pieces_root
from mediflow.taxonomy import load_taxonomy


@pytest.mark.parametrize(("settings", "size"), [({"per_cell": 3, "documents_per_instruction": 3}, 50), ({"per_cell": 2, "max_records": 300}, 16), ({"per_cell": 4, "documents_per_instruction": 5}, 3)])
def test_blocks_resume_the_plan_where_they_start_and_together_are_the_plan(settings, size) -> None:
    plan = build_plan(load_config(None, **settings), load_taxonomy())
    whole = [(group.key, [item.position for item in group.items]) for group in plan.groups()]
    again = []
    for block in plan.blocks(size):
        part = []
        for group in plan.groups(block.cursor):
            if group.items[0].position >= block.end:
                break
            part.append((group.key, [item.position for item in group.items]))
        assert part[0][1][0] == block.cursor.position and part[0][1][0] // size == block.index  # the groups starting in its range
        assert part[-1][1][-1] + 1 == block.end
        again += part
    assert again == whole
    assert max(len(pickle.dumps(block.cursor)) for block in plan.blocks(size)) < 16_000  # what an actor gets: a cursor, not items


class _Folder:
    """Enough of an OutputFolder for RunOutput to write shards."""

    def __init__(self, root: Path) -> None:
        self.root = root


def _item(position: int) -> tuple[str, dict]:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "cost_usd": None}
    cell = {"task_type": "t", "input_data": "d", "difficulty_level": "l", "output_format": "plain_text", "cell": "t/d/l/plain_text"}
    return ("reject", {"item_id": f"i{position}", "stage": "document", "reason": "test", "raw_text": "", "usage": usage, **cell})


def test_a_range_two_blocks_share_is_joined_by_the_driver_once_its_pieces_are_all_in(tmp_path) -> None:
    output = RunOutput(tmp_path, _Folder(tmp_path))  # type: ignore[arg-type]
    collector = ShardCollector(output, plan_size=10, shard_size=4, finished=set())
    blocks = BlockPlan(collector, [])
    created = datetime(2025, 1, 1, tzinfo=UTC)
    # block 0 made positions 0-5 (its last group runs past range 0), block 1 made 6-9
    write_range(output, 0, {p: _item(p) for p in range(4)})
    write_range(RunOutput(piece_folder(tmp_path, 0), for_driver=True), 1, {p: _item(p) for p in (4, 5)})
    blocks.done(BlockDone(0, 6, (0,), {1: 2}), created)
    assert collector.finished == {0} and not output.shard_path(1).exists()  # range 1 waits for block 1's piece
    write_range(RunOutput(piece_folder(tmp_path, 1), for_driver=True), 1, {p: _item(p) for p in (6, 7)})
    write_range(RunOutput(piece_folder(tmp_path, 1), for_driver=True), 2, {p: _item(p) for p in (8, 9)})
    blocks.done(BlockDone(1, 4, (), {1: 2, 2: 2}), created)
    assert collector.finished == {0, 1, 2}
    assert output.read_summary(1)["positions"]["reject"] == [4, 5, 6, 7]  # in plan order, whoever made them
    blocks.finish()
    assert not pieces_root(tmp_path).exists()


def test_only_blocks_touching_a_missing_range_run_again(tmp_path) -> None:
    plan = build_plan(load_config(None, per_cell=2, documents_per_instruction=3, max_records=40), load_taxonomy())
    output = RunOutput(tmp_path, _Folder(tmp_path))  # type: ignore[arg-type]
    all_blocks = list(plan.blocks(8))
    committed = {0, 1, 2}
    pieces_root(tmp_path).mkdir(parents=True)  # a killed run's pieces: their answers are cached, they are made again
    (pieces_root(tmp_path) / "stale").write_text("x")
    blocks = BlockPlan.of(plan, ShardCollector(output, len(plan), 8, committed), tmp_path)
    assert not pieces_root(tmp_path).exists()
    touched = {block.index for block in all_blocks if any(index not in committed for index in range(block.cursor.position // 8, (block.end - 1) // 8 + 1))}
    assert [unit.index for unit in blocks.units] == sorted(touched) and 0 not in touched
    for unit in blocks.units:
        assert set(unit.expected) >= {unit.index} and unit.finished <= committed
