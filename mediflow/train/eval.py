"""The evaluation hook: did a stage help?

Two views, both cheap enough to run after every stage:

* **Perplexity on held-out documents, per domain** — what PIT should lower on its own corpus and
  what merging should preserve across the experts' corpora.
* **Generated answers on held-out MediFlow records, per task** — greedy decoding with a bounded
  ``max_new_tokens``, scored by exact match, JSON validity (parsed, and valid against the task's
  ``output_schema`` from the taxonomy) and field-level F1 (both JSONs flattened to ``key.path=value``
  leaves, compared as multisets); plain-text answers get SQuAD-style token F1 instead of field F1.

Reports are JSON files with one layout, so ``mediflow train eval --compare a.json b.json`` lines up
any number of stages. :func:`make_evaluator` turns a config into ``evaluate(model_dir) -> float``
(higher is better) for the merge search.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mediflow.errors import MediflowError
from mediflow.train.config import StageConfig
from mediflow.train.data import load_documents, read_table
from mediflow.train.models import load_causal_lm, load_tokenizer, stop_token_ids

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# ---------------------------------------------------------------- metrics on strings (pure)


def parse_json(text: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``text`` (optionally inside one ```json fence) is JSON, else ``(False, None)``."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    try:
        return True, json.loads(fenced.group(1) if fenced else stripped)
    except (json.JSONDecodeError, ValueError):
        return False, None


def flatten_json(value: Any, prefix: str = "") -> list[str]:
    """Leaves as ``path=value`` strings; list positions are dropped so item order does not matter."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in flatten_json(item, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(value, list):
        return [leaf for item in value for leaf in flatten_json(item, f"{prefix}[]")]
    text = value if isinstance(value, str) else json.dumps(value)
    return [f"{prefix}={_normalize(text)}"]


def _f1(predicted: list[str], reference: list[str]) -> float:
    if not predicted and not reference:
        return 1.0
    common = sum((Counter(predicted) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def field_f1(prediction: str, reference: str) -> float:
    """F1 over the flattened leaves of two JSON answers (0 when the prediction is not JSON)."""
    ok_pred, pred = parse_json(prediction)
    ok_ref, ref = parse_json(reference)
    if not ok_ref:
        raise MediflowError(f"field_f1: the reference answer is not JSON: {reference[:80]!r}")
    return _f1(flatten_json(pred), flatten_json(ref)) if ok_pred else 0.0


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over normalized word tokens."""
    return _f1(_normalize(prediction).split(), _normalize(reference).split())


def exact_match(prediction: str, reference: str, output_format: str) -> bool:
    """JSON answers match when they parse to equal values; text answers after normalization."""
    if output_format == "json":
        ok_pred, pred = parse_json(prediction)
        ok_ref, ref = parse_json(reference)
        return ok_pred and ok_ref and pred == ref
    return _normalize(prediction) == _normalize(reference)


def json_valid(prediction: str, schema: dict[str, Any] | None) -> bool:
    """Parses as JSON and, when the task has a schema, validates against it."""
    ok, value = parse_json(prediction)
    if not ok:
        return False
    if schema is None:
        return True
    import jsonschema

    return jsonschema.Draft202012Validator(schema).is_valid(value)


def _normalize(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD's normalization)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def score_records(rows: list[dict[str, Any]], schemas: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """Per-task metrics over rows holding ``task_type``, ``output_format``, ``output``, ``prediction``."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task_type"] or "unknown", []).append(row)
    results: dict[str, dict[str, Any]] = {}
    for task, task_rows in sorted(by_task.items()):
        # A "json" record whose reference does not parse is scored as text rather than dropped.
        json_rows = [r for r in task_rows if r["output_format"] == "json" and parse_json(r["output"])[0]]
        text_rows = [r for r in task_rows if r not in json_rows]
        schema = schemas.get(task)
        scores = [field_f1(r["prediction"], r["output"]) for r in json_rows] + [
            token_f1(r["prediction"], r["output"]) for r in text_rows
        ]
        results[task] = {
            "n": len(task_rows),
            "exact_match": _mean([exact_match(r["prediction"], r["output"], r["output_format"]) for r in task_rows]),
            "json_valid": _mean([json_valid(r["prediction"], schema) for r in json_rows]),
            "field_f1": _mean([field_f1(r["prediction"], r["output"]) for r in json_rows]),
            "token_f1": _mean([token_f1(r["prediction"], r["output"]) for r in text_rows]),
            "score": _mean(scores),
            "schema_checked": schema is not None,
            "examples": [
                {"prediction": r["prediction"][:300], "reference": r["output"][:300]} for r in task_rows[:2]
            ],
        }
    return results


def _mean(values: list[float | bool]) -> float | None:
    return sum(float(v) for v in values) / len(values) if values else None


# ---------------------------------------------------------------- model-side measurements


def perplexity(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> dict[str, float]:
    """Token-weighted perplexity over ``texts`` (each truncated to ``max_length`` tokens)."""
    import torch

    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"].to(device)
            predicted = ids.shape[1] - 1
            if predicted < 1:
                continue
            loss = model(input_ids=ids, labels=ids).loss.float().item()
            total_nll += loss * predicted
            total_tokens += predicted
    if total_tokens == 0:
        raise MediflowError("perplexity: no document has two or more tokens")
    return {"perplexity": math.exp(total_nll / total_tokens), "tokens": total_tokens, "documents": len(texts)}


def generate_answers(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy answers to chat prompts (the model's chat template, generation prompt added)."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    stops = stop_token_ids(tokenizer)
    answers: list[str] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                for messages in prompts[start : start + batch_size]
            ]
            batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(device)
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return [answer.strip() for answer in answers]


def _record_rows(config: StageConfig) -> list[dict[str, Any]]:
    """Held-out records with their prompt (the conversation minus the reference answer)."""
    from mediflow.records import to_messages

    table = read_table(config.path(config.data.records), config.data.split)
    needed = {"task_type", "output_format", "output"}
    if not needed <= set(table.column_names):
        raise MediflowError(f"{config.data.records}: held-out records need columns {sorted(needed)}")
    rows = []
    for record in table.to_pylist():
        messages = record.get("messages")
        if messages:
            prompt = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "assistant"]
        else:
            prompt = to_messages(record["instruction"], record["input"])
        rows.append({"task_type": record["task_type"], "output_format": record["output_format"], "output": record["output"], "prompt": prompt})
    return rows[: config.data.max_samples] if config.data.max_samples else rows


def _task_schemas(config: StageConfig, tasks: set[str]) -> dict[str, dict[str, Any] | None]:
    """Each task's ``output_schema`` from the taxonomy; ``None`` (parse-only check) when unknown."""
    try:
        from mediflow.taxonomy import load_taxonomy
    except ImportError:
        return dict.fromkeys(tasks)
    taxonomy = load_taxonomy(config.path(config.data.taxonomy) if config.data.taxonomy else None)
    return {task: (taxonomy.tasks[task].output_schema if task in taxonomy.tasks else None) for task in tasks}


def evaluate_model(model_dir: Path, config: StageConfig) -> dict[str, Any]:
    """Measure one model folder: perplexity per document domain and answer metrics per task."""
    import torch

    tokenizer = load_tokenizer(model_dir, config.model.chat_template)
    if tokenizer.chat_template is None:
        tokenizer = load_tokenizer(model_dir, config.model.chat_template, need_generation_markers=True)
    model = load_causal_lm(model_dir, config.model.dtype, for_training=False)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    report: dict[str, Any] = {"model": str(model_dir), "perplexity": {}, "tasks": {}}
    for domain, path in config.data.document_domains().items():
        texts = [doc["text"] for doc in load_documents(config.path(path), config.data.text_field)]
        report["perplexity"][domain] = perplexity(model, tokenizer, texts[: config.data.max_samples or None], config.data.max_length)
    if config.data.records:
        rows = _record_rows(config)
        answers = generate_answers(
            model, tokenizer, [r["prompt"] for r in rows], config.method.max_new_tokens, config.method.eval_batch_size
        )
        for row, answer in zip(rows, answers):
            row["prediction"] = answer
        report["tasks"] = score_records(rows, _task_schemas(config, {r["task_type"] for r in rows}))
    report["score"] = objective(report, config.method.objective)
    return report


def objective(report: dict[str, Any], kind: str = "auto") -> float:
    """One number, higher is better: mean task score, or minus the mean log-perplexity over domains."""
    if kind == "auto":
        kind = "task_score" if report["tasks"] else "neg_log_perplexity"
    if kind == "task_score":
        scores = [task["score"] for task in report["tasks"].values() if task["score"] is not None]
        if not scores:
            raise MediflowError("objective task_score: no held-out records were scored (set data.records)")
        return sum(scores) / len(scores)
    values = [math.log(domain["perplexity"]) for domain in report["perplexity"].values()]
    if not values:
        raise MediflowError("objective neg_log_perplexity: no held-out documents (set data.documents)")
    return -sum(values) / len(values)


def make_evaluator(config: StageConfig) -> Callable[[Path], float]:
    """``evaluate(model_dir) -> float`` (higher is better) for searches such as the merge preset's.

    The score is :func:`objective` of :func:`evaluate_model` under ``method.objective``: the mean
    per-task score on held-out records when ``data.records`` is set, else minus the mean
    log-perplexity over the held-out document domains.
    """

    def evaluate(model_dir: Path) -> float:
        return evaluate_model(Path(model_dir), config)["score"]

    return evaluate


def run_eval(config: StageConfig) -> dict[str, Any]:
    """Evaluate ``model.name_or_path``, write the JSON report, print the table; return the report."""
    from mediflow.train.runtime import model_dir

    report = evaluate_model(model_dir(config), config)
    report["label"] = Path(config.output.dir).name
    target = config.path(config.output.report) if config.output.report else config.path(config.output.dir) / "eval_report.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_suffix(target.suffix + ".tmp")
    staging.write_text(json.dumps(report, indent=2), encoding="utf-8")
    os.replace(staging, target)
    print(format_reports([report]))
    print(f"report: {target}")
    return report


# ---------------------------------------------------------------- tables


def format_reports(reports: list[dict[str, Any]]) -> str:
    """One row per metric, one column per report: how each stage moved each number."""
    labels = [report.get("label") or Path(report["model"]).name for report in reports]
    rows: list[tuple[str, list[str]]] = []
    domains = sorted({d for r in reports for d in r["perplexity"]})
    for domain in domains:
        rows.append((f"ppl {domain}", [_cell(r["perplexity"].get(domain, {}).get("perplexity")) for r in reports]))
    tasks = sorted({t for r in reports for t in r["tasks"]})
    for task in tasks:
        for metric in ("exact_match", "json_valid", "field_f1", "token_f1"):
            values = [r["tasks"].get(task, {}).get(metric) for r in reports]
            if any(v is not None for v in values):
                rows.append((f"{task} {metric}", [_cell(v) for v in values]))
    rows.append(("score", [_cell(r.get("score")) for r in reports]))
    width = max(len(name) for name, _ in rows)
    widths = [max(len(label), 9) for label in labels]
    lines = [" ".join([" " * width] + [label.rjust(w) for label, w in zip(labels, widths)])]
    lines += [" ".join([name.ljust(width)] + [c.rjust(w) for c, w in zip(cells, widths)]) for name, cells in rows]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) >= 100 else f"{value:.4f}"


def compare_reports(paths: list[Path]) -> str:
    """The table for several saved reports, in the given order."""
    reports = []
    for path in paths:
        if not path.is_file():
            raise MediflowError(f"{path}: no such eval report")
        reports.append(json.loads(path.read_text(encoding="utf-8")))
    return format_reports(reports)
