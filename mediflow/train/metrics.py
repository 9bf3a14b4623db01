"""Task metrics for generated answers, as pure functions over (prediction, reference) strings.

One scorer per kind of clinical task (which task is which kind is data: ``taxonomies/eval_metrics.yaml``):

* ``classification``: exact match and macro-F1 over the labels (position by position when an
  answer holds several, e.g. one label per hypothesis);
* ``rouge_l``: ROUGE-L F1 exactly as Google's ``rouge-score`` package computes it (its tokenizer:
  lowercased ``[a-z0-9]+`` words, no stemming), so numbers compare with published ones;
  ``rouge_l_squad`` is our earlier variant (word LCS after SQuAD normalisation: articles and
  punctuation dropped), kept under its own name;
* ``icd10_codes``: code-level precision / recall / F1 over the codes of the real ICD-10-CM code set
  (``simple-icd-10-cm``, through :mod:`mediflow.terminology`) an answer names, dotted or not,
  wherever they are (JSON field or prose): ``A1C`` and ``B12`` are not codes, ``U07.1`` is;
* ``spans``: span-level precision / recall / F1 over the normalised items an answer lists
  (entities, PHI mentions, keywords, relation triples);
* ``fields``: the default for other JSON answers: F1 over flattened ``path=value`` leaves; plain
  text gets SQuAD token F1.

For codes and spans, an example with nothing on either side (no code in the reference, none
predicted) is left out of precision / recall / F1 and counted separately (``empty_both``): it says
nothing about finding codes, and a set of such examples has no F1 (``None``), never a perfect one.
JSON is read leniently (the first JSON value anywhere in the answer, so ``Here is the JSON: {...}``
scores on its content), and strict validity (the whole answer is JSON) is reported separately.
Every metric comes with a percentile bootstrap confidence interval over examples; below
:data:`MIN_INTERVAL_N` examples the interval carries a warning (it is not reliable).
"""

from __future__ import annotations

import functools
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

from mediflow import terminology
from mediflow.errors import ConfigError
from mediflow.resources import taxonomies_dir

METRIC_KINDS = ("classification", "rouge_l", "rouge_l_squad", "icd10_codes", "spans", "fields")
#: Fewer examples than this, and a bootstrap interval is reported with a warning.
MIN_INTERVAL_N = 30

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
#: What could be an ICD-10-CM code, dotted (E11.9) or not (E119); only those in the code set count.
_ICD10 = re.compile(r"\b([A-Z][0-9][0-9A-Z])(?:\.?([0-9A-Z]{1,4}))?\b")
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

    def text(self, answer: str) -> str:
        """The answer's text as written (for ``rouge_l``): its JSON items at ``items``, its JSON text, or itself."""
        ok, value = extract_json(answer)
        if ok and self.items:
            return " ".join(_as_text(v) for v in select(value, self.items))
        return _as_text(value) if ok and isinstance(value, dict | list) else answer

    def extract(self, answer: str) -> list[str]:
        """The normalised items of one answer: from its JSON when it has the path, else its text."""
        ok, value = extract_json(answer)
        if ok and self.items:
            values = select(value, self.items)
            if self.fields:
                values = [" | ".join(_as_text(v.get(f, "")) for f in self.fields) for v in values if isinstance(v, dict)]
            return [normalize(_as_text(v)) for v in values]
        if ok and self.kind in ("rouge_l", "rouge_l_squad"):
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


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 as Google's ``rouge-score`` computes it (``RougeScorer(["rougeL"])``, no stemming)."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def rouge_l_squad(prediction: str, reference: str) -> float:
    """Our earlier ROUGE-L: word LCS F1 (rapidfuzz) over SQuAD-normalised text (not comparable with published ROUGE-L)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = LCSseq.similarity(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def icd10_codes(text: str) -> set[str]:
    """The ICD-10-CM codes an answer names (in the real code set, categories included), in dotted upper-case form."""
    candidates = {f"{head}.{tail}" if tail else head for head, tail in _ICD10.findall(text.upper())}
    return {terminology.normalise(code) for code in candidates if terminology.is_valid(code)}


def set_prf(predicted: Sequence[set[str]], reference: Sequence[set[str]]) -> dict[str, float | None]:
    """Micro precision / recall / F1 over per-example sets (codes, spans); examples empty on both sides are left out.

    With nothing predicted (or nothing to find) precision (recall) is 0, as ``sklearn``'s
    ``zero_division=0``; with nothing on either side anywhere there is no score (``None``).
    """
    tp = sum(len(p & r) for p, r in zip(predicted, reference))
    n_pred, n_ref = sum(len(p) for p in predicted), sum(len(r) for r in reference)
    if not n_pred and not n_ref:
        return {"precision": None, "recall": None, "f1": None}
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
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
    value: float  # the per-example score of rouge_l / rouge_l_squad / fields


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
        return Example(exact_match(prediction, reference), (), (), rouge_l(metric.text(prediction), metric.text(reference)))
    if metric.kind == "rouge_l_squad":
        return Example(exact_match(prediction, reference), (), (), rouge_l_squad(" ".join(predicted), " ".join(gold)))
    return Example(exact_match(prediction, reference), (), (), field_f1(prediction, reference))


def aggregate(kind: str, examples: Sequence[Example]) -> dict[str, float | None]:
    """The task's metrics over measured examples; ``score`` is the headline one (``None`` when undefined)."""
    if not examples:
        return {}
    em = float(np.mean([e.exact for e in examples]))
    if kind == "classification":
        f1 = macro_f1([list(e.predicted) for e in examples], [list(e.reference) for e in examples])
        return {"exact_match": em, "macro_f1": f1, "score": f1}
    if kind in ("icd10_codes", "spans"):
        scored = [e for e in examples if e.predicted or e.reference]
        prf = set_prf([set(e.predicted) for e in scored], [set(e.reference) for e in scored])
        return {"exact_match": em, **prf, "score": prf["f1"], "empty_both": float(len(examples) - len(scored))}
    value = float(np.mean([e.value for e in examples]))
    return {"exact_match": em, (kind if kind in ("rouge_l", "rouge_l_squad") else "f1"): value, "score": value}


def task_metrics(metric: TaskMetric, pairs: Pairs) -> dict[str, float | None]:
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
            if value is not None and key != "empty_both":  # a resample with nothing to score has no F1
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
