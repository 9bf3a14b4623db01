"""The ``filter`` stage: build the configured rules and drop each record at its first failing rule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from mediflow import terminology
from mediflow.cases.mentions import MentionMatcher
from mediflow.configuration import to_plain
from mediflow.folders import InputData
from mediflow.quality.config import FilterConfig, TaskChoice
from mediflow.quality.filters import (
    CaseCodesRule,
    CaseMentionRule,
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
from mediflow.taxonomy import Taxonomy, load_taxonomy


def _tasks_for(check: str, setting: TaskChoice, taxonomy: Taxonomy) -> frozenset[str]:
    """The tasks a check applies to: listed in the config, or ``auto`` = those whose taxonomy entry asks for it."""
    if setting == "auto":
        return frozenset(name for name, task in taxonomy.tasks.items() if check in task.quality_checks)
    return frozenset(setting)


def build_rules(config: FilterConfig) -> list[Rule]:
    """The rules in the order they run (cheapest first, so most drops cost least)."""
    data = rule_data()
    rules: list[Rule] = []
    if config.length:
        rules += [LengthRule(column, limits.min_tokens, limits.max_tokens) for column, limits in config.length.items()]
    if config.refusal is not None:
        patterns = compile_patterns(data["refusal_patterns"] + config.refusal.extra_patterns)
        rules.append(PatternRule("refusal", ("output",), patterns, "refusal / AI self-talk"))
    if config.template_residue is not None:
        residue = config.template_residue
        placeholders = compile_patterns(data["placeholder_patterns"] + residue.extra_patterns)
        rules.append(PatternRule("template_residue:placeholder", ("instruction", "input", "output"), placeholders, "unfilled placeholder"))
        leakage = compile_patterns(data["leakage_patterns"], re.IGNORECASE | re.MULTILINE)
        rules.append(PatternRule("template_residue:leakage", ("output",), leakage, "prompt scaffolding"))
        rules.append(PromptEchoRule(min_tokens=residue.prompt_echo_min_tokens))
    if config.language is not None:
        stopwords = {lang: frozenset(words) for lang, words in data["stopwords"].items()}
        rules.append(LanguageRule(stopwords, tuple(config.language.columns), config.language.min_share))
    if config.case_mentions is not None:
        rules.append(CaseMentionRule(MentionMatcher.for_taxonomy(config.taxonomy).find))
    if config.json is None and config.icd10_codes is None and config.verbatim_copy is None and config.case_codes is None:
        return rules
    taxonomy = load_taxonomy(Path(config.taxonomy) if config.taxonomy else None)
    if config.json is not None:
        schemas = {name: task.output_schema for name, task in taxonomy.tasks.items() if task.output_schema}
        rules.append(JsonRule(schemas, config.json.unknown_task))
    if config.icd10_codes is not None:
        codes = config.icd10_codes
        rules.append(Icd10Rule(_tasks_for("icd10_codes", codes.tasks, taxonomy), terminology.is_valid, terminology.is_billable, codes.require_billable))
    if config.verbatim_copy is not None:
        copy = config.verbatim_copy
        rules.append(VerbatimCopyRule(_tasks_for("verbatim_copy", copy.tasks, taxonomy), copy.ngram, copy.max_copied))
    if config.case_codes is not None:
        rules.append(CaseCodesRule(_tasks_for("icd10_codes", config.case_codes.tasks, taxonomy)))
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
    data, folder = open_stage(source, out, "filter", {"rules": [rule.name for rule in rules], **to_plain(config)}, overwrite=overwrite)
    applies: dict[str, Any] = {rule.name: sorted(rule.tasks) for rule in rules if isinstance(rule, (Icd10Rule, VerbatimCopyRule, CaseCodesRule))}

    def decide(batch: pa.Table, offset: int) -> tuple[pa.Table, Drops]:
        return batch, filter_table(batch, rules)

    return run_stage(data, folder, decide, details=lambda: {"tasks_checked": applies})
