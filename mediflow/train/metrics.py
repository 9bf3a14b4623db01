"""Task metrics for generated answers, as pure functions over (prediction, reference) strings.

One scorer per kind of clinical task (which task is which kind is data: ``taxonomies/eval_metrics.yaml``):

* ``classification``: exact match and macro-F1 over the labels (position by position when an
  answer holds several, e.g. one label per hypothesis);
* ``rouge_l``: ROUGE-L F1 over word tokens (summaries, answers, notes);
* ``icd10_codes``: code-level precision / recall / F1, codes found by the ICD-10-CM pattern in the
  answer wherever they are (JSON field or prose);
* ``spans``: span-level precision / recall / F1 over the normalised items an answer lists
  (entities, PHI mentions, keywords, relation triples);
* ``fields``: the default for other JSON answers: F1 over flattened ``path=value`` leaves; plain
  text gets SQuAD token F1.

JSON is read leniently (the first JSON value anywhere in the answer, so ``Here is the JSON: {...}``
scores on its content), and strict validity (the whole answer is JSON) is reported separately.
Every metric comes with a percentile bootstrap confidence interval over examples.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rapidfuzz.distance import LCSseq

from mediflow.errors import ConfigError
from mediflow.resources import taxonomies_dir

METRIC_KINDS = ("classification", "rouge_l", "icd10_codes", "spans", "fields")

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
#: ICD-10-CM codes in dotted (E11.9) or undotted (E119) form.
_ICD10 = re.compile(r"\b([A-TV-Z][0-9][0-9A-Z])(?:\.?([0-9A-Z]{1,4}))?\b")
_NONE = "<none>"


# ---------------------------------------------------------------- reading answers


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD's normalization)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def parse_json(text: str) -> tuple[bool, Any]:
    """Strict: ``(True, value)`` when the whole answer (optionally inside one ```json fence) is JSON."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    try:
        return True, json.loads(fenced.group(1) if fenced else stripped)
    except (json.JSONDecodeError, ValueError):
        return False, None


def extract_json(text: str) -> tuple[bool, Any]:
    """Lenient: the answer's first JSON object or array wherever it starts (prose around it ignored)."""
    ok, value = parse_json(text)
    if ok:
        return ok, value
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
            return True, value
        except json.JSONDecodeError:
            continue
    return False, None


def select(value: Any, path: str) -> list[Any]:
    """The values at ``path`` (``a.b``, ``a[].b``: every item of list ``a``) inside a parsed answer."""
    found = [value]
    for part in path.split(".") if path else []:
        many = part.endswith("[]")
        key = part[:-2] if many else part
        nxt: list[Any] = []
        for item in found:
            child = item.get(key) if isinstance(item, dict) and key else item
            if many:
                nxt.extend(child if isinstance(child, list) else [])
            elif child is not None:
                nxt.append(child)
        found = nxt
    return found


def flatten_json(value: Any, prefix: str = "") -> list[str]:
    """Leaves as ``path=value`` strings; list positions are dropped so item order does not matter."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in flatten_json(item, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(value, list):
        return [leaf for item in value for leaf in flatten_json(item, f"{prefix}[]")]
    text = value if isinstance(value, str) else json.dumps(value)
    return [f"{prefix}={normalize(text)}"]


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return " ".join(leaf.split("=", 1)[1] for leaf in flatten_json(value))
    return json.dumps(value)


@dataclass(frozen=True)
class TaskMetric:
    """How one task is scored: the kind, and where its items sit in a JSON answer."""

    kind: str = "fields"
    #: ``classification``/``spans``/``rouge_l``: the path of the labels / items / text in a JSON answer.
    items: str = ""
    #: ``spans``: the fields of each item that identify it (a relation = head, relation, tail).
    fields: tuple[str, ...] = ()

    def extract(self, answer: str) -> list[str]:
        """The normalised items of one answer: from its JSON when it has the path, else its text."""
        ok, value = extract_json(answer)
        if ok and self.items:
            values = select(value, self.items)
            if self.fields:
                values = [" | ".join(_as_text(v.get(f, "")) for f in self.fields) for v in values if isinstance(v, dict)]
            return [normalize(_as_text(v)) for v in values]
        if ok and self.kind == "rouge_l":
            return [normalize(_as_text(value))]
        if self.kind == "spans":
            return [normalize(part) for part in re.split(r"[\n;]+", answer) if normalize(part)]
        return [normalize(answer)]


# ---------------------------------------------------------------- metrics over a set of examples

Pairs = Sequence[tuple[str, str]]


def exact_match(prediction: str, reference: str) -> bool:
    """JSON answers match when they parse to equal values; text answers after normalization."""
    ok_ref, ref = parse_json(reference)
    if ok_ref and isinstance(ref, dict | list):
        ok_pred, pred = extract_json(prediction)
        return ok_pred and pred == ref
    return normalize(prediction) == normalize(reference)


def _f1(predicted: list[str], reference: list[str]) -> float:
    if not predicted and not reference:
        return 1.0
    common = sum((Counter(predicted) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over normalized word tokens."""
    return _f1(normalize(prediction).split(), normalize(reference).split())


def field_f1(prediction: str, reference: str) -> float:
    """F1 over the flattened leaves of two JSON answers (0 when no JSON is found in the prediction)."""
    ok_pred, pred = extract_json(prediction)
    ok_ref, ref = parse_json(reference)
    if not ok_ref:
        return token_f1(prediction, reference)
    return _f1(flatten_json(pred), flatten_json(ref)) if ok_pred else 0.0


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of word tokens (rapidfuzz's LCS)."""
    pred, ref = prediction.split(), reference.split()
    if not pred or not ref:
        return float(pred == ref)
    common = LCSseq.similarity(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def icd10_codes(text: str) -> set[str]:
    """The ICD-10-CM codes an answer names, in dotted upper-case form."""
    return {f"{head}.{tail}" if tail else head for head, tail in _ICD10.findall(text.upper())}


def set_prf(predicted: Sequence[set[str]], reference: Sequence[set[str]]) -> dict[str, float]:
    """Micro precision / recall / F1 over per-example sets (codes, spans)."""
    tp = sum(len(p & r) for p, r in zip(predicted, reference))
    n_pred, n_ref = sum(len(p) for p in predicted), sum(len(r) for r in reference)
    precision = tp / n_pred if n_pred else float(n_ref == 0)
    recall = tp / n_ref if n_ref else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def macro_f1(predicted: Sequence[list[str]], reference: Sequence[list[str]]) -> float:
    """Macro-F1 over labels, position by position (a missing prediction counts as a wrong label)."""
    gold, guess = [], []
    for pred, ref in zip(predicted, reference):
        for index, label in enumerate(ref):
            gold.append(label)
            guess.append(pred[index] if index < len(pred) else _NONE)
    classes = sorted(set(gold) | set(guess) - {_NONE})
    if not classes:
        return 1.0
    scores = []
    for label in classes:
        tp = sum(g == label and p == label for g, p in zip(gold, guess))
        fp = sum(g != label and p == label for g, p in zip(gold, guess))
        fn = sum(g == label and p != label for g, p in zip(gold, guess))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return sum(scores) / len(scores)


@dataclass(frozen=True)
class Example:
    """One scored example, measured once so that bootstrap resamples only aggregate."""

    exact: bool
    predicted: tuple[str, ...]
    reference: tuple[str, ...]
    value: float  # the per-example score of rouge_l / fields


def measure(metric: TaskMetric, prediction: str, reference: str) -> Example:
    """What the aggregate metrics of ``metric.kind`` need from one ``(prediction, reference)``."""
    if metric.kind == "icd10_codes":
        return Example(exact_match(prediction, reference), tuple(sorted(icd10_codes(prediction))), tuple(sorted(icd10_codes(reference))), 0.0)
    predicted, gold = metric.extract(prediction), metric.extract(reference)
    if metric.kind == "classification":
        return Example(predicted == gold, tuple(predicted), tuple(gold), 0.0)
    if metric.kind == "spans":
        return Example(exact_match(prediction, reference), tuple(predicted), tuple(gold), 0.0)
    if metric.kind == "rouge_l":
        return Example(exact_match(prediction, reference), (), (), rouge_l(" ".join(predicted), " ".join(gold)))
    return Example(exact_match(prediction, reference), (), (), field_f1(prediction, reference))


def aggregate(kind: str, examples: Sequence[Example]) -> dict[str, float]:
    """The task's metrics over measured examples; ``score`` is the headline one."""
    if not examples:
        return {}
    em = float(np.mean([e.exact for e in examples]))
    if kind == "classification":
        f1 = macro_f1([list(e.predicted) for e in examples], [list(e.reference) for e in examples])
        return {"exact_match": em, "macro_f1": f1, "score": f1}
    if kind in ("icd10_codes", "spans"):
        prf = set_prf([set(e.predicted) for e in examples], [set(e.reference) for e in examples])
        return {"exact_match": em, **prf, "score": prf["f1"]}
    value = float(np.mean([e.value for e in examples]))
    return {"exact_match": em, ("rouge_l" if kind == "rouge_l" else "f1"): value, "score": value}


def task_metrics(metric: TaskMetric, pairs: Pairs) -> dict[str, float]:
    """Every metric of ``metric.kind`` over ``(prediction, reference)`` pairs."""
    return aggregate(metric.kind, [measure(metric, p, r) for p, r in pairs])


def bootstrap(kind: str, examples: Sequence[Example], *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of every aggregate metric, resampling examples with replacement."""
    if len(examples) < 2:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        sample = [examples[i] for i in rng.integers(0, len(examples), len(examples))]
        for key, value in aggregate(kind, sample).items():
            draws.setdefault(key, []).append(value)
    tail = (1 - level) / 2 * 100
    return {key: [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))] for key, values in draws.items()}


def load_task_metrics(path: Path | None = None) -> dict[str, TaskMetric]:
    """``{task: TaskMetric}`` from ``eval_metrics.yaml`` (the built-in one, or a user file)."""

    source = path or taxonomies_dir() / "eval_metrics.yaml"
    raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    metrics = {}
    for task, spec in raw.items():
        if not isinstance(spec, dict) or spec.get("metric") not in METRIC_KINDS or set(spec) - {"metric", "items", "fields"}:
            raise ConfigError(f"{source}: {task}: expected {{metric: one of {list(METRIC_KINDS)}, items: PATH, fields: [...]}}, got {spec!r}")
        metrics[str(task)] = TaskMetric(spec["metric"], str(spec.get("items", "")), tuple(spec.get("fields", ())))
    return metrics
