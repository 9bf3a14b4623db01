"""The dataset card (``README.md``): Hub YAML metadata plus a body generated from the export's counts.

The body's wording is data (``prompts/dataset_card.md.j2``, shipped in the wheel) so it can be
edited without code; the YAML front matter is built here as a dict and dumped with PyYAML, so it
always parses whatever the task names or counts are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from mediflow.resources import prompts_dir

CARD_TEMPLATE = "dataset_card.md.j2"

#: The Hub's ``size_categories`` buckets: (upper bound, label).
_SIZE_BUCKETS: tuple[tuple[int, str], ...] = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
)


def size_category(rows: int) -> str:
    for bound, label in _SIZE_BUCKETS:
        if rows < bound:
            return label
    return "n>100M"


@dataclass
class CardFacts:
    """Everything the card states, gathered while exporting."""

    repo_id: str
    configs: dict[str, dict[str, list[str]]]  # config -> split -> shard paths relative to the export root
    rows: dict[str, Counter[str]]  # config -> split -> rows
    tasks: Counter[str]
    document_types: Counter[str]
    teachers: Counter[str]
    filters: list[dict[str, Any]]
    pairs: dict[str, Any] | None
    seed: int
    fractions: dict[str, float]
    license: str = "cdla-permissive-2.0"
    judged: bool = False
    task_configs: list[str] = field(default_factory=list)
    file_bytes: dict[str, int] = field(default_factory=dict)  # config -> bytes of its Parquet shards
    split_bytes: dict[str, dict[str, int]] = field(default_factory=dict)  # config -> split -> uncompressed bytes


def front_matter(facts: CardFacts) -> dict[str, Any]:
    """The Hub metadata: ``configs`` with their data files per split, licence, categories, tags.

    ``dataset_info`` (rows per split, bytes per config) is not decoration: ``datasets`` caches a local
    folder under a hash of its card, not of its files, so without it a re-export into the same folder
    would load the previous export's rows from the cache (or fail its split-size check). It also lets
    ``load_dataset`` verify the row counts.
    """
    total = sum(facts.rows["sft"].values())
    tags = ["medical", "clinical", "synthetic", "mediflow"] + (["dpo"] if "dpo" in facts.configs else [])
    return {
        "configs": [
            {
                "config_name": name,
                "data_files": [{"split": split, "path": f"data/{name}/{split}-*.parquet"} for split in splits],
                **({"default": True} if name == "sft" else {}),
            }
            for name, splits in facts.configs.items()
        ],
        "dataset_info": [
            {
                "config_name": name,
                "splits": [{"name": split, "num_bytes": facts.split_bytes.get(name, {}).get(split, 0), "num_examples": facts.rows[name][split]} for split in splits],
                "download_size": facts.file_bytes.get(name, 0),
            }
            for name, splits in facts.configs.items()
        ],
        "license": facts.license,
        "task_categories": ["text-generation", "question-answering", "summarization"],
        "size_categories": [size_category(total)],
        "language": ["en"],
        "tags": tags,
        "pretty_name": facts.repo_id.split("/")[-1],
    }


def render_card(facts: CardFacts, template_dir: Path | None = None) -> str:
    """The full ``README.md`` text."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir or prompts_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    splits = [s for s in ("train", "validation", "test") if any(s in r for r in facts.rows.values())]
    configs = [{"name": name, "rows": facts.rows[name], "total": sum(facts.rows[name].values())} for name in facts.configs]
    return environment.get_template(CARD_TEMPLATE).render(
        front_matter=yaml.safe_dump(front_matter(facts), sort_keys=False, allow_unicode=True),
        title=facts.repo_id.split("/")[-1],
        repo_id=facts.repo_id,
        splits=splits,
        configs=configs,
        has_dpo="dpo" in facts.configs,
        task_configs=facts.task_configs,
        judged=facts.judged,
        seed=facts.seed,
        fractions=", ".join(f"{k} {v:g}" for k, v in facts.fractions.items()),
        tasks=sorted(facts.tasks.items()),
        document_types=sorted(facts.document_types.items()),
        teachers=facts.teachers.most_common(),
        filters=facts.filters,
        pairs=facts.pairs,
    )


def parse_card(text: str) -> dict[str, Any]:
    """The YAML front matter of a card (what the Hub reads)."""
    if not text.startswith("---\n"):
        raise ValueError("the card has no YAML front matter")
    header, _, _ = text[4:].partition("\n---\n")
    front: dict[str, Any] = yaml.safe_load(header)
    return front
