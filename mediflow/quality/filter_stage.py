"""The ``filter`` stage: build the configured rules and drop each record at its first failing rule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from mediflow.errors import ConfigError
from mediflow.folders import InputData
from mediflow.quality.config import FilterConfig, as_plain
from mediflow.quality.filters import (
    Icd10Rule,
    JsonRule,
    LanguageRule,
    LengthRule,
    PatternRule,
    PromptEchoRule,
    Rule,
    VerbatimCopyRule,
    compile_patterns,
    rule_data,
)
from mediflow.quality.report import StageReport
from mediflow.quality.stage import Drops, open_stage, run_stage

#: The taxonomy field a task uses to ask for a check: ``quality_checks: [icd10_codes]``.
TASK_CHECKS_FIELD = "quality_checks"


def _taxonomy(config: FilterConfig) -> Any:
    from mediflow.taxonomy import load_taxonomy

    return load_taxonomy(Path(config.taxonomy) if config.taxonomy else None)


def _tasks_for(check: str, setting: Any, taxonomy: Any) -> frozenset[str]:
    """The tasks a check applies to: listed in the config, or ``auto`` = those whose taxonomy entry asks for it."""
    if setting in (None, "auto"):
        return frozenset(name for name, task in taxonomy.tasks.items() if check in (getattr(task, TASK_CHECKS_FIELD, None) or ()))
    if isinstance(setting, (list, tuple)) and all(isinstance(t, str) for t in setting):
        return frozenset(setting)
    raise ConfigError(f"filters.{check}.tasks: expected 'auto' or a list of task names, got {setting!r}")


def _options(section: str, given: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(f"filters.{section}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    return given


def build_rules(config: FilterConfig) -> list[Rule]:
    """The rules in the order they run (cheapest first, so most drops cost least)."""
    data = rule_data()
    rules: list[Rule] = []
    if config.length:
        rules += [LengthRule(column, limits.min_tokens, limits.max_tokens) for column, limits in config.length.items()]
    if config.refusal is not None:
        options = _options("refusal", config.refusal, {"extra_patterns"})
        patterns = compile_patterns(data["refusal_patterns"] + list(options.get("extra_patterns", [])))
        rules.append(PatternRule("refusal", ("output",), patterns, "refusal / AI self-talk"))
    if config.template_residue is not None:
        options = _options("template_residue", config.template_residue, {"extra_patterns", "prompt_echo_min_tokens"})
        placeholders = compile_patterns(data["placeholder_patterns"] + list(options.get("extra_patterns", [])))
        rules.append(PatternRule("template_residue:placeholder", ("instruction", "input", "output"), placeholders, "unfilled placeholder"))
        leakage = compile_patterns(data["leakage_patterns"], re.IGNORECASE | re.MULTILINE)
        rules.append(PatternRule("template_residue:leakage", ("output",), leakage, "prompt scaffolding"))
        rules.append(PromptEchoRule(min_tokens=int(options.get("prompt_echo_min_tokens", 8))))
    if config.language is not None:
        options = _options("language", config.language, {"min_share", "columns"})
        stopwords = {lang: frozenset(words) for lang, words in data["stopwords"].items()}
        rules.append(LanguageRule(stopwords, tuple(options.get("columns", ("instruction", "input", "output"))), float(options.get("min_share", 0.5))))
    needs_taxonomy = any(section is not None for section in (config.json, config.icd10_codes, config.verbatim_copy))
    taxonomy = _taxonomy(config) if needs_taxonomy else None
    if config.json is not None:
        options = _options("json", config.json, {"unknown_task"})
        unknown_task = options.get("unknown_task", "keep")
        if unknown_task not in ("keep", "drop"):
            raise ConfigError(f"filters.json.unknown_task: {unknown_task!r} is not one of keep, drop")
        schemas = {name: task.output_schema for name, task in taxonomy.tasks.items() if task.output_schema}
        rules.append(JsonRule(schemas, unknown_task))
    if config.icd10_codes is not None:
        options = _options("icd10_codes", config.icd10_codes, {"tasks", "require_billable"})
        from mediflow import terminology

        rules.append(
            Icd10Rule(
                _tasks_for("icd10_codes", options.get("tasks", "auto"), taxonomy),
                terminology.is_valid,
                terminology.is_billable,
                bool(options.get("require_billable", True)),
            )
        )
    if config.verbatim_copy is not None:
        options = _options("verbatim_copy", config.verbatim_copy, {"tasks", "ngram", "max_copied"})
        rules.append(
            VerbatimCopyRule(
                _tasks_for("verbatim_copy", options.get("tasks", "auto"), taxonomy),
                int(options.get("ngram", 8)),
                float(options.get("max_copied", 0.8)),
            )
        )
    return rules


def filter_table(table: pa.Table, rules: list[Rule]) -> Drops:
    """Decide one batch: each record is dropped at the first rule that says so."""
    drops = Drops.none(table.num_rows)
    for index, record in enumerate(table.select([c for c in table.column_names if c != "messages"]).to_pylist()):
        for rule in rules:
            verdict = rule.check(record)
            if not verdict.keep:
                drops.mask[index] = True
                drops.rule.append(rule.name)
                drops.score.append(float(verdict.score))
                drops.reason.append(verdict.reason)
                drops.match.append(None)
                break
    return drops


def run_filters(source: Path | InputData, out: Path, config: FilterConfig | None = None, *, overwrite: bool = False) -> StageReport:
    """Apply the rule filters to ``source`` and write ``out``."""
    config = config or FilterConfig()
    rules = build_rules(config)
    data, folder = open_stage(source, out, "filter", {"rules": [rule.name for rule in rules], **as_plain(config)}, overwrite=overwrite)
    applies: dict[str, Any] = {
        rule.name: sorted(rule.tasks) for rule in rules if isinstance(rule, (Icd10Rule, VerbatimCopyRule))
    }

    def decide(batch: pa.Table, offset: int) -> tuple[pa.Table, Drops]:
        return batch, filter_table(batch, rules)

    return run_stage(data, folder, decide, details=lambda: {"tasks_checked": applies})
