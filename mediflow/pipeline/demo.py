"""The demo run of ``mediflow generate`` with no config: a few cells on the embedded local teacher.

It exists so that the first command of the README works on a fresh machine with no key and no
network: Gemma-3-270M on the CPU, 2 tasks x 2 document types x the easiest difficulty, one record
per output format per stratum, short answers. The cells are picked from the taxonomy (the first two
tasks, in taxonomy order, that share two document types), never named in code.
"""

from __future__ import annotations

from typing import Any

from mediflow.errors import MediflowError
from mediflow.taxonomy import Taxonomy

DEMO_OUT = "mediflow-out/demo"


def demo_config(taxonomy: Taxonomy, *, embedded: bool = True) -> dict[str, Any]:
    """A small run config over ``taxonomy``; with ``embedded`` (the embedded local teacher) its limits too.

    The demo's limits (no retries, the error breaker off) suit a deterministic CPU model only: any
    other teacher (``--teacher openai:M`` without ``--config``) keeps the production limits, so
    the first 429 of a paid run is retried, not fatal.
    """
    task_names = list(taxonomy.tasks)
    compatible = {task: taxonomy.document_types_for(task) for task in task_names}
    for i, first in enumerate(task_names):
        for second in task_names[i + 1 :]:
            shared = [doc for doc in compatible[first] if doc in compatible[second]]
            if len(shared) >= 2:
                easiest = min(taxonomy.difficulty_levels, key=lambda level: level.rank)
                config: dict[str, Any] = {
                    "teacher": {"spec": "local"},
                    "tasks": [first, second],
                    "document_types": shared[:2],
                    "difficulty_levels": [easiest.name],
                    "per_cell": 2,
                    "json_share": 0.5,
                    "documents_per_instruction": 1,
                    "max_corrections": 1,
                    "sampling": {
                        "document": {"max_tokens": 160},
                        "instruction": {"max_tokens": 48},
                        "response": {"max_tokens": 320},
                    },
                    # A deterministic local model gives the same answer to a retry: a truncated
                    # JSON answer goes straight to a correction turn, and a weak model's rejects
                    # must not trip the error-rate breaker meant for failing servers.
                    "limits": {"concurrency": 1, "request_timeout": 600.0, "max_retries": 0, "error_rate_threshold": 1.0},
                    "output": {"dir": DEMO_OUT, "shard_size": 100},
                }
                if not embedded:
                    del config["limits"]
                return config
    raise MediflowError("the taxonomy has no two tasks sharing two document types: pass --config for a run")
