"""A decontamination check between what a stage trains on and what it is evaluated on.

A held-out score means nothing when the eval items were trained on. Before training (and before a
report) the eval texts are compared with the training texts by hashed word 13-grams, with the
normalisation and hashing of ``mediflow curate``'s decontamination (:mod:`mediflow.quality.text`);
an eval text shorter than 13 words counts only when a training text equals it. The count of eval
items sharing anything with the training data goes into the manifest, with a warning when it is
not zero.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pyarrow as pa

from mediflow.quality.text import ngram_hashes, normalize_column, token_hashes

NGRAM = 13


def _grams(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = token_hashes(normalize_column(pa.array(texts, pa.string())))
    grams = ngram_hashes(tokens, n, short_as_one=True)
    return grams.hashes, grams.owner


def contaminated_items(train_texts: list[str], eval_texts: list[str], n: int = NGRAM) -> list[int]:
    """Indices of the eval texts sharing a word ``n``-gram (or, when short, their whole text) with training."""
    if not train_texts or not eval_texts:
        return []
    train_hashes, _ = _grams(train_texts, n)
    eval_hashes, owner = _grams(eval_texts, n)
    found = np.isin(eval_hashes, train_hashes)
    return sorted({int(i) for i in owner[found]})


def check_overlap(stage: str, train_texts: list[str], eval_texts: list[str]) -> dict[str, Any]:
    """The manifest entry for the check, with a warning when some eval items were seen in training."""
    hits = contaminated_items(train_texts, eval_texts)
    if hits:
        warnings.warn(
            f"{stage}: {len(hits)} of {len(eval_texts)} eval items share a {NGRAM}-word span with the training data; their scores are not held-out (decontaminate with `mediflow curate`)",
            stacklevel=2,
        )
    return {"eval_items": len(eval_texts), "contaminated": len(hits), "ngram": NGRAM}


def conversation_text(messages: list[dict[str, str]]) -> str:
    """A conversation's document and answers as one text, for the check.

    The system turn (the task instruction) is left out: instructions written from one template
    share long spans across unrelated records, which would flag every item.
    """
    return "\n".join(turn["content"] for turn in messages if turn["role"] != "system")
