"""The evaluation hook: did a stage help?

Two views, both cheap enough to run after every stage:

* **Perplexity on held-out documents, per domain** — what PIT should lower on its own corpus and
  what merging should preserve across the experts' corpora.
* **Generated answers on held-out examples, per task** — MediFlow records or any prompt/reference
  file (Parquet/JSONL), answered greedily with the model's own chat template in batches of
  ``eval.eval_batch_size``, stopping at the end-of-turn tokens the template writes, scored with
  the task's metric (:mod:`.metrics`: exact match and macro-F1, ROUGE-L as ``rouge-score``
  computes it, ICD-10-CM code P/R/F1 over the real code set, span P/R/F1, JSON field F1) with
  bootstrap 95% intervals (a warning below 30 examples), plus strict and lenient JSON validity
  against the task's ``output_schema``. Every example's prompt, reference, prediction and scores
  go to ``predictions.jsonl``.

Held-out means held out: an export root is read from its ``test`` split only (the merge preset
selects on ``validation``); records that overlap what the model's manifests say it was trained on
(its SFT/DPO rows, its PIT task data and documents, those of the models it started from or was
merged from) are refused unless ``eval.allow_train_overlap`` (``--allow-train-overlap``); and with
``data.train`` set the eval items are also checked for overlap with that data. Reports are JSON files with one layout, so ``mediflow train eval --compare a.json
b.json`` lines up any number of stages. :func:`make_evaluator` turns a config into
``evaluate(model_dir) -> float`` (higher is better) for the merge search.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from mediflow.errors import MediflowError
from mediflow.folders import InputRef, OutputFolder, check_output, make_parent
from mediflow.folders.atomic import write_json, write_text
from mediflow.folders.manifest import flatten
from mediflow.records import to_messages
from mediflow.taxonomy import load_taxonomy
from mediflow.train.config import StageConfig
from mediflow.train.data import load_documents, load_messages, read_table
from mediflow.train.fingerprint import model_fingerprint, path_fingerprint, value_hash
from mediflow.train.lengths import LengthReport, chunk_documents
from mediflow.train.metrics import METRIC_KINDS, MIN_INTERVAL_N, TaskMetric, aggregate, bootstrap, extract_json, load_task_metrics, measure, parse_json
from mediflow.train.models import load_causal_lm, load_tokenizer
from mediflow.train.overlap import check_overlap, contaminated_items, conversation_text
from mediflow.train.provenance import trained_texts
from mediflow.train.runtime import check_attention, model_dir, stage_paths
from mediflow.train.templates import end_of_turn_ids, plan_chat_template

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- model-side measurements


def perplexity(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> dict[str, float]:
    """Token-weighted perplexity over ``texts``; a text longer than ``max_length`` is measured in chunks."""
    import torch

    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    chunks = chunk_documents(texts, tokenizer, max_length, 0, LengthReport("perplexity", max_length))
    with torch.no_grad():
        for text in chunks:
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
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int,
    template_kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Greedy answers to chat prompts (the model's chat template, generation prompt added), each stopping
    where the template ends an assistant turn (:func:`~mediflow.train.templates.end_of_turn_ids`)."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    stops = end_of_turn_ids(tokenizer, tokenizer.chat_template, template_kwargs)
    answers: list[str] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **(template_kwargs or {})) for messages in prompts[start : start + batch_size]]
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


def read_eval_rows(config: StageConfig, split: str | None = None) -> list[dict[str, Any]]:
    """The held-out examples as ``{id, task, prompt (messages), reference, json}`` rows.

    Two layouts: MediFlow records (``messages``, or ``instruction``/``input``/``output``, with
    ``task_type``), and any prompt/reference file (``prompt`` as a string or a message list,
    ``reference``, optional ``id``, ``task``, ``metric`` and ``system``). An export root is read
    through its ``sft`` config, one split (``test`` unless ``data.split`` says otherwise), so each
    record is read once.
    """
    path = config.path(config.data.records)
    table = read_table(path, split or config.data.read_split("eval"), "eval")
    columns = set(table.column_names)
    generic = {"prompt", "reference"} <= columns
    if not generic and not ({"output", "task_type"} <= columns and ({"messages"} <= columns or {"instruction", "input"} <= columns)):
        raise MediflowError(f"{path}: eval data needs prompt/reference columns, or MediFlow records (task_type, output and messages or instruction/input), found {sorted(columns)}")
    rows = []
    for index, record in enumerate(table.to_pylist()):
        if generic:
            prompt = record["prompt"]
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [{"role": m["role"], "content": m["content"]} for m in prompt]
            if record.get("system"):
                messages = [{"role": "system", "content": record["system"]}, *messages]
            reference, task = record["reference"], record.get("task") or record.get("task_type") or "default"
        else:
            if record.get("messages"):
                messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"] if m["role"] != "assistant"]
            else:
                messages = to_messages(record["instruction"], record["input"])
            reference, task = record["output"], record["task_type"] or "unknown"
        rows.append(
            {
                "id": str(record.get("id") or index),
                "task": task,
                "metric": record.get("metric"),
                "prompt": messages,
                "reference": reference,
                "json": record.get("output_format") == "json" or _is_structured(reference),
            }
        )
    return rows[: config.data.max_samples] if config.data.max_samples else rows


def _is_structured(reference: str) -> bool:
    ok, value = parse_json(reference)
    return ok and isinstance(value, dict | list)


def _task_schemas(config: StageConfig, tasks: set[str]) -> dict[str, dict[str, Any] | None]:
    """Each task's ``output_schema`` from the taxonomy; ``None`` (parse-only check) when unknown."""
    taxonomy = load_taxonomy(config.path(config.data.taxonomy) if config.data.taxonomy else None)
    return {task: (taxonomy.tasks[task].output_schema if task in taxonomy.tasks else None) for task in tasks}


def _json_valid(value: Any, ok: bool, schema: dict[str, Any] | None) -> bool:
    if not ok:
        return False

    return schema is None or jsonschema.Draft202012Validator(schema).is_valid(value)


def score_rows(rows: list[dict[str, Any]], schemas: dict[str, dict[str, Any] | None], metrics: dict[str, TaskMetric], *, resamples: int = 1000) -> dict[str, dict[str, Any]]:
    """Per-task metrics with bootstrap intervals over rows holding ``task``, ``reference``, ``prediction``.

    Each row also gets its own ``scores`` (what the predictions file shows). JSON validity is
    reported twice for structured answers: ``json_strict`` (the whole answer is JSON, valid against
    the task's schema) and ``json_lenient`` (a valid JSON value found anywhere in the answer).
    """
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    results: dict[str, dict[str, Any]] = {}
    for task, task_rows in sorted(by_task.items()):
        kinds = {row["metric"] for row in task_rows if row.get("metric")}
        if len(kinds) > 1:
            raise MediflowError(f"eval: task '{task}' names several metrics {sorted(kinds)}; one task, one metric")
        metric = TaskMetric(kinds.pop()) if kinds else metrics.get(task, TaskMetric())
        if metric.kind not in METRIC_KINDS:
            raise MediflowError(f"eval: task '{task}': unknown metric '{metric.kind}' (known: {', '.join(METRIC_KINDS)})")
        examples = [measure(metric, row["prediction"], row["reference"]) for row in task_rows]
        schema = schemas.get(task)
        structured = [row for row in task_rows if row["json"]]
        for row, example in zip(task_rows, examples):
            row["scores"] = {"exact_match": example.exact, **({"value": example.value} if metric.kind in ("rouge_l", "rouge_l_squad", "fields") else {})}
            if row["json"]:
                strict_ok, strict = parse_json(row["prediction"])
                lenient_ok, lenient = extract_json(row["prediction"])
                row["scores"]["json_strict"] = _json_valid(strict, strict_ok, schema)
                row["scores"]["json_lenient"] = _json_valid(lenient, lenient_ok, schema)
        summary = aggregate(metric.kind, examples)
        results[task] = {
            "n": len(task_rows),
            "metric": metric.kind,
            **summary,
            "ci95": bootstrap(metric.kind, examples, resamples=resamples),
            "json_strict": _mean([row["scores"]["json_strict"] for row in structured]),
            "json_lenient": _mean([row["scores"]["json_lenient"] for row in structured]),
            "schema_checked": schema is not None,
        }
        if len(task_rows) < MIN_INTERVAL_N:
            note = f"n={len(task_rows)} < {MIN_INTERVAL_N}: the bootstrap interval over so few examples is not reliable"
            results[task]["ci95_warning"] = note
            warnings.warn(f"eval: task '{task}': {note}", stacklevel=2)
    return results


def _mean(values: list[bool]) -> float | None:
    return sum(float(v) for v in values) / len(values) if values else None


@dataclass(frozen=True)
class EvalInputs:
    """The held-out data one evaluation reads: documents per domain, and the examples (or ``None``)."""

    documents: dict[str, list[str]]
    rows: list[dict[str, Any]] | None


def read_eval_inputs(config: StageConfig, split: str | None = None) -> EvalInputs:
    """Read (and check) the held-out documents and examples; a bad input is refused before a model loads."""
    documents = {domain: [doc["text"] for doc in load_documents(config.path(path), config.data.text_field)] for domain, path in config.data.document_domains().items()}
    return EvalInputs(documents, read_eval_rows(config, split) if config.data.records else None)


def evaluate_model(model_dir: Path, config: StageConfig, *, split: str | None = None, predictions: Path | None = None, inputs: EvalInputs | None = None) -> dict[str, Any]:
    """Measure one model folder: perplexity per document domain and task metrics on held-out examples.

    Answers are generated with the model's own chat template (see :mod:`.templates`) and stop at
    its end-of-turn tokens. ``predictions``: where to write one JSON line per example.
    """
    import torch

    inputs = inputs or read_eval_inputs(config, split)
    documents, rows = inputs.documents, inputs.rows
    tokenizer = load_tokenizer(model_dir)
    plan = plan_chat_template(tokenizer, config.model.chat_template)
    tokenizer.chat_template = plan.saved_template
    model = load_causal_lm(model_dir, config.model.dtype, for_training=False, attn_implementation=config.model.attn_implementation)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    report: dict[str, Any] = {"model": str(model_dir), "perplexity": {}, "tasks": {}}
    for domain, texts in documents.items():
        report["perplexity"][domain] = perplexity(model, tokenizer, texts[: config.data.max_samples or None], config.data.max_length)
    if rows is not None:
        report["split"] = split or config.data.read_split("eval")
        answers = generate_answers(model, tokenizer, [r["prompt"] for r in rows], config.eval.max_new_tokens, config.eval.eval_batch_size, config.model.chat_template_kwargs)
        for row, answer in zip(rows, answers):
            row["prediction"] = answer
        metrics_file = config.path(config.data.metrics) if config.data.metrics else None
        report["tasks"] = score_rows(rows, _task_schemas(config, {r["task"] for r in rows}), load_task_metrics(metrics_file))
        if config.data.train:
            train_texts = [conversation_text(r["messages"]) for r in load_messages(config.path(config.data.train), "train")]
            eval_texts = [conversation_text([*r["prompt"], {"role": "assistant", "content": r["reference"]}]) for r in rows]
            report["overlap"] = check_overlap("eval", train_texts, eval_texts)
        if predictions is not None:
            predictions.parent.mkdir(parents=True, exist_ok=True)
            keys = ("id", "task", "prompt", "reference", "prediction", "scores")
            write_text(predictions, "".join(json.dumps({key: row[key] for key in keys}, ensure_ascii=False) + "\n" for row in rows))
    report["score"] = objective(report, config.eval.objective)
    return report


def objective(report: dict[str, Any], kind: str = "auto") -> float:
    """One number, higher is better: mean task score, or minus the mean log-perplexity over domains."""
    if kind == "auto":
        kind = "task_score" if report["tasks"] else "neg_log_perplexity"
    if kind == "task_score":
        scores = [task["score"] for task in report["tasks"].values() if task.get("score") is not None]
        if not scores:
            raise MediflowError("objective task_score: no held-out records were scored (set data.records)")
        return float(sum(scores) / len(scores))
    values = [math.log(domain["perplexity"]) for domain in report["perplexity"].values()]
    if not values:
        raise MediflowError("objective neg_log_perplexity: no held-out documents (set data.documents)")
    return -sum(values) / len(values)


class ScoreHook:
    """``evaluate(model_dir) -> float`` (higher is better) for searches such as the merge preset's.

    ``fingerprint`` identifies what the score measures (the eval settings, the split and the content
    of every eval file), so cached scores are reused only for the same measurement.
    """

    def __init__(self, config: StageConfig, split: str | None = None) -> None:
        self.config, self.split = config, split
        self.fingerprint = value_hash(measurement(config, split))

    def __call__(self, model_dir: Path) -> float:
        return float(evaluate_model(Path(model_dir), self.config, split=self.split)["score"])


def measurement(config: StageConfig, split: str | None = None) -> dict[str, Any]:
    """What a score measures, the model aside: the content of every eval file and the eval settings."""
    data = config.data
    files = {f"documents.{domain}": path_fingerprint(config.path(path)) for domain, path in data.document_domains().items()}
    if data.records:
        files["records"] = path_fingerprint(config.path(data.records))
    settings = {
        "objective": config.eval.objective,
        "max_new_tokens": config.eval.max_new_tokens,
        "chat_template": config.model.chat_template,
        "chat_template_kwargs": config.model.chat_template_kwargs,
        "attn_implementation": config.model.attn_implementation,
        "dtype": config.model.dtype,
        "max_length": data.max_length,
        "max_samples": data.max_samples,
        "split": split or data.read_split("eval"),
        "metrics": path_fingerprint(config.path(data.metrics)) if data.metrics else None,
    }
    return {"files": files, "settings": settings}


def make_evaluator(config: StageConfig, split: str | None = None) -> ScoreHook:
    """The score of :func:`evaluate_model` under ``eval.objective``, on ``split`` of ``data.records``."""
    return ScoreHook(config, split)


def check_train_overlap(model: Path, config: StageConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Compare the eval records with what the model's manifests say it was trained on; refuse an overlap.

    The model folder's manifest (and those of the models it started from or was merged from) name
    their training data (:mod:`.provenance`); each eval record's prompt and reference are compared
    with those texts by word 13-grams, as :mod:`.overlap` does. Records seen in training are refused
    with one line unless ``eval.allow_train_overlap``; then the report counts them (and says so).
    """
    sources, missing = trained_texts(model)
    eval_texts = [conversation_text([*r["prompt"], {"role": "assistant", "content": r["reference"]}]) for r in rows]
    hits: set[int] = set()
    seen_in: list[str] = []
    for source, texts in sources:
        found = contaminated_items(texts, eval_texts)
        if found:
            hits |= set(found)
            seen_in.append(source)
    entry = {"checked": [source for source, _ in sources], "unreadable": missing, "records": len(rows), "seen_in_training": len(hits)}
    if missing:
        warnings.warn(f"eval: cannot check the records against {', '.join(missing)} (named by the model's manifests, no longer readable)", stacklevel=2)
    if hits and not config.eval.allow_train_overlap:
        raise MediflowError(f"eval: {len(hits)} of {len(rows)} records overlap what {model} was trained on ({'; '.join(seen_in)}, per its manifests); evaluate on held-out records, or pass --allow-train-overlap to score them anyway")
    if hits:
        warnings.warn(f"eval: {len(hits)} of {len(rows)} records were seen in training ({'; '.join(seen_in)}); scored anyway (--allow-train-overlap)", stacklevel=2)
    return entry


def run_eval(config: StageConfig, *, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate ``model.name_or_path``; write the JSON report and the predictions; return the report (with its ``path``).

    ``output.dir`` is a contract folder of kind ``eval`` (overlap guards, lock, typed manifest whose
    identity is the model's weights and the measurement): rerunning the same evaluation redoes it,
    another one there is refused naming what changed unless ``overwrite``. The held-out inputs are
    read and checked (against the model's own training data too) before anything is written or a model loads.
    """
    check_attention(config)
    model = model_dir(config)
    inputs = read_eval_inputs(config)
    train_overlap = check_train_overlap(model, config, inputs.rows) if inputs.rows else None
    output = config.path(config.output.dir)
    target = config.path(config.output.report) if config.output.report else output / "eval_report.json"
    identity = flatten(
        {
            "model weights": model_fingerprint(model),
            **measurement(config),
            "overlap with": path_fingerprint(config.path(config.data.train)) if config.data.train else None,
            "eval_batch_size": config.eval.eval_batch_size,
        }
    )
    refs = [InputRef(str(model), "model", identity["model weights"])]
    refs += [InputRef(str(config.path(path)), "documents", identity[f"files.documents.{domain}"]) for domain, path in config.data.document_domains().items()]
    if config.data.records:
        refs.append(InputRef(str(config.path(config.data.records)), "eval", identity["files.records"]))
    paths = [model, *stage_paths(config)]
    check_output(target, paths, what="eval report", file=True, own=output)
    folder = OutputFolder.open(
        output,
        kind="eval",
        holds="report",
        config=config.to_dict(),
        fingerprint=value_hash(identity),
        inputs=refs,
        input_paths=paths,
        overwrite=overwrite,
        staged=False,
        extra_entries=("eval_report.json", "predictions.jsonl"),
        details={"fingerprint": identity},
    )
    with folder:
        report = evaluate_model(model, config, predictions=output / "predictions.jsonl" if config.data.records else None, inputs=inputs)
        report["label"] = Path(config.output.dir).name
        if train_overlap is not None:
            report["train_overlap"] = train_overlap
        write_json(make_parent(target), report)
        folder.finish({"examples": len(inputs.rows or []), "domains": len(inputs.documents)}, {"report": str(target), "score": report["score"]})
    return {**report, "path": str(target)}


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
        for metric in _TABLE_METRICS:
            values = [r["tasks"].get(task, {}).get(metric) for r in reports]
            if any(v is not None for v in values):
                intervals = [r["tasks"].get(task, {}).get("ci95", {}).get(metric) for r in reports]
                few = [bool(r["tasks"].get(task, {}).get("ci95_warning")) for r in reports]
                rows.append((f"{task} {metric}", [_cell(v, ci, f) for v, ci, f in zip(values, intervals, few)]))
    rows.append(("score", [_cell(r.get("score")) for r in reports]))
    width = max(len(name) for name, _ in rows)
    widths = [max(len(label), *(len(cells[i]) for _, cells in rows)) for i, label in enumerate(labels)]
    lines = [" ".join([" " * width] + [label.rjust(w) for label, w in zip(labels, widths)])]
    lines += [" ".join([name.ljust(width)] + [c.rjust(w) for c, w in zip(cells, widths)]) for name, cells in rows]
    if any(cell.endswith("*") for _, cells in rows for cell in cells):
        lines.append(f"* interval over fewer than {MIN_INTERVAL_N} examples: not reliable")
    return "\n".join(lines)


#: The metrics the table shows, when a task has them (``ci95`` intervals beside them).
_TABLE_METRICS = ("exact_match", "macro_f1", "rouge_l", "rouge_l_squad", "precision", "recall", "f1", "empty_both", "json_strict", "json_lenient")


def _cell(value: float | None, interval: list[float] | None = None, few: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}" if abs(value) >= 100 else f"{value:.4f}"
    return f"{text} [{interval[0]:.2f}, {interval[1]:.2f}]{'*' if few else ''}" if interval else text


def compare_reports(paths: list[Path]) -> str:
    """The table for several saved reports, in the given order."""
    reports = []
    for path in paths:
        if not path.is_file():
            raise MediflowError(f"{path}: no such eval report")
        reports.append(json.loads(path.read_text(encoding="utf-8")))
    return format_reports(reports)
