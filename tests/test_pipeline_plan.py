"""The plan: stratified over the taxonomy, seeded, stable under config changes, with instruction reuse."""

from __future__ import annotations

from collections import Counter

import pytest

from mediflow.config import load_config
from mediflow.errors import ConfigError
from mediflow.pipeline.plan import build_plan
from mediflow.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def taxonomy():
    return load_taxonomy()


def _two_tasks(taxonomy) -> list[str]:
    return list(taxonomy.tasks)[:2]


def test_same_seed_same_plan_other_seed_other_order(taxonomy) -> None:
    config = load_config({"tasks": _two_tasks(taxonomy), "per_cell": 2})
    first, again = build_plan(config, taxonomy), build_plan(config, taxonomy)
    assert first.id == again.id and list(first.items()) == list(again.items())
    other = build_plan(load_config({"tasks": _two_tasks(taxonomy), "per_cell": 2, "seed": 1}), taxonomy)
    assert other.id != first.id


def test_every_compatible_cell_is_covered_with_difficulty_weights(taxonomy) -> None:
    tasks = _two_tasks(taxonomy)
    levels = {level.name: level.weight for level in taxonomy.difficulty_levels}
    plan = build_plan(load_config({"tasks": tasks, "per_cell": 4, "json_share": 0.5}), taxonomy)
    strata = Counter((i.task, i.document_type, i.difficulty) for i in plan.items())
    expected = {(t, d, level) for t, d in taxonomy.cells() if t in tasks for level in levels}
    assert set(strata) == expected
    for (_, _, level), count in strata.items():
        assert count in (int(4 * levels[level]), int(4 * levels[level]) + 1)  # per_cell x weight, seeded rounding
    share = sum(i.output_format == "json" for i in plan.items()) / len(plan)
    assert 0.45 <= share <= 0.55
    assert [i.position for i in plan.items()] == list(range(len(plan)))


def test_adding_a_task_keeps_every_existing_item_and_seed(taxonomy) -> None:
    tasks = list(taxonomy.tasks)
    small = build_plan(load_config({"tasks": tasks[:1]}), taxonomy)
    large = build_plan(load_config({"tasks": tasks[:2]}), taxonomy)
    key = lambda i: (i.task, i.document_type, i.difficulty, i.output_format, i.index, i.seed)  # noqa: E731
    assert {key(i) for i in small.items()} <= {key(i) for i in large.items()}


def test_instruction_reuse_groups_items_of_one_task_difficulty_and_format(taxonomy) -> None:
    config = load_config({"tasks": _two_tasks(taxonomy), "documents_per_instruction": 3})
    plan = build_plan(config, taxonomy)
    groups = list(plan.groups())
    assert all(len(group.items) <= 3 for group in groups)
    assert len(groups) == plan.group_count < len(plan) / 2
    for group in groups:
        assert {(i.task, i.difficulty, i.output_format) for i in group.items} == {(group.task, group.difficulty, group.output_format)}


def test_max_records_is_a_mixed_prefix(taxonomy) -> None:
    plan = build_plan(load_config({"tasks": _two_tasks(taxonomy), "max_records": 20}), taxonomy)
    assert len(plan) == 20
    assert len({i.task for i in plan.items()}) == 2  # seeded group order, not task after task


def test_the_plan_is_lazy_a_huge_plan_costs_what_max_records_keeps(taxonomy) -> None:
    import tracemalloc

    tracemalloc.start()
    plan = build_plan(load_config({"per_cell": 1_000_000, "max_records": 10}), taxonomy)
    items = list(plan.items())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(plan) == len(items) == 10 and [i.position for i in items] == list(range(10))
    assert peak < 20_000_000  # the counts of a few thousand cells, never the billions of items


def test_counts_without_enumerating_match_the_enumeration(taxonomy) -> None:
    config = load_config({"tasks": _two_tasks(taxonomy), "per_cell": 3, "documents_per_instruction": 2})
    plan = build_plan(config, taxonomy)
    items = list(plan.items())
    assert plan.strata() == Counter((i.task, i.document_type, i.difficulty, i.output_format) for i in items)
    assert len(items) == len(plan) == sum(plan.strata().values())
    assert len({(i.task, i.document_type, i.difficulty, i.output_format, i.index) for i in items}) == len(items)
    assert plan.group_count == sum(1 for _ in plan.groups())


def test_every_prefix_is_stratified_over_streams_and_categories(taxonomy) -> None:
    plan = build_plan(load_config({"per_cell": 4}), taxonomy)
    stream = lambda i: (i.task, i.difficulty, i.output_format)  # noqa: E731
    sizes = Counter(stream(i) for i in plan.items())
    for prefix in (50, 333, 1000):
        counts = Counter(stream(i) for i in plan.sample(prefix))
        for name, size in sizes.items():  # weighted round robin: each stream in proportion, within 2 items
            assert abs(counts[name] - prefix * size / len(plan)) <= 2
    categories = {taxonomy.document_types[i.document_type].category for i in plan.sample(400)}
    assert len(categories) == len(taxonomy.categories)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tasks": ["summarise_everything"]}, "tasks: unknown name 'summarise_everything'"),
        ({"document_types": ["fax_cover"]}, "document_types: unknown name 'fax_cover'"),
        ({"difficulty_levels": ["impossible"]}, "difficulty_levels: unknown name 'impossible'"),
    ],
)
def test_unknown_names_list_the_known_ones(taxonomy, data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_plan(load_config(data), taxonomy)
    assert str(caught.value).startswith(message)
    assert "known:" in str(caught.value)
