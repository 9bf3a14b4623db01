"""Rule filters: small, named, configurable checks that score a record and keep or drop it.

Every rule has the same shape: ``check(record) -> Verdict(score, keep, reason)``. A drop therefore
always carries the number that decided it (a token count, a share of English words, the share of
the output copied from the document, ...) and a one-line reason naming what was found. Patterns
and word lists are data (``rules.yaml``); which tasks are coding or summary tasks comes from the
taxonomy (a task's ``quality_checks``) or from the curate config, never from task names in code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Protocol

import jsonschema
import yaml

from mediflow.errors import ConfigError
from mediflow.quality.text import json_strings, word_tokens

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Verdict:
    """One rule's judgement of one record."""

    score: float
    keep: bool
    reason: str = ""


KEEP_NOT_APPLICABLE = Verdict(score=math.nan, keep=True, reason="not applicable")


class Rule(Protocol):
    """A named check. ``name`` is what the report and the rejects call it."""

    @property
    def name(self) -> str: ...

    def check(self, record: Record) -> Verdict: ...


@cache
def rule_data() -> dict[str, Any]:
    """The shipped patterns and word lists (``mediflow/quality/rules.yaml``)."""
    data: dict[str, Any] = yaml.safe_load(resources.files("mediflow.quality").joinpath("rules.yaml").read_text(encoding="utf-8"))
    return data


def _text(record: Record, column: str) -> str:
    value = record.get(column)
    return value if isinstance(value, str) else ""


def compile_patterns(patterns: Iterable[str], flags: int = re.IGNORECASE) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, flags))
        except re.error as exc:
            raise ConfigError(f"filters: invalid regular expression {pattern!r}: {exc}") from exc
    return compiled


@dataclass(frozen=True)
class LengthRule:
    """Empty, too short or too long ``column``, in word tokens (a fast regex count, no model tokenizer)."""

    column: str
    min_tokens: int = 1
    max_tokens: int | None = None

    @property
    def name(self) -> str:
        return f"length:{self.column}"

    def check(self, record: Record) -> Verdict:
        count = len(word_tokens(_text(record, self.column)))
        if count == 0:
            return Verdict(0, False, f"{self.column} is empty")
        if count < self.min_tokens:
            return Verdict(count, False, f"{self.column} too short: {count} tokens < {self.min_tokens}")
        if self.max_tokens is not None and count > self.max_tokens:
            return Verdict(count, False, f"{self.column} too long: {count} tokens > {self.max_tokens}")
        return Verdict(count, True)


@dataclass
class PatternRule:
    """Drops a record when any pattern matches one of ``columns``; the score is the number of matches."""

    name: str
    columns: tuple[str, ...]
    patterns: list[re.Pattern[str]]
    what: str

    def check(self, record: Record) -> Verdict:
        found = [(column, match.group(0)) for column in self.columns for pattern in self.patterns if (match := pattern.search(_text(record, column)))]
        if not found:
            return Verdict(0, True)
        column, text = found[0]
        return Verdict(len(found), False, f"{self.what} in {column}: {text.strip()[:80]!r}")


@dataclass(frozen=True)
class PromptEchoRule:
    """The output repeats the instruction verbatim (a model echoing its prompt)."""

    min_tokens: int = 8
    name: str = "template_residue:prompt_echo"

    def check(self, record: Record) -> Verdict:
        instruction = " ".join(word_tokens(_text(record, "instruction")))
        if len(instruction.split()) < self.min_tokens:
            return KEEP_NOT_APPLICABLE
        output = " ".join(word_tokens(_text(record, "output")))
        if instruction in output:
            return Verdict(1, False, "the output repeats the instruction verbatim")
        return Verdict(0, True)


@dataclass
class JsonRule:
    """``output_format == json`` outputs must parse and validate against their task's ``output_schema``."""

    schemas: Mapping[str, dict[str, Any]]
    unknown_task: str = "keep"  # or "drop": a task the taxonomy does not know has no schema to check
    name: str = "json"
    _validators: dict[str, jsonschema.protocols.Validator] = field(default_factory=dict)

    def _validator(self, task: str) -> jsonschema.protocols.Validator | None:
        if task not in self._validators:
            schema = self.schemas.get(task)
            if schema is None:
                return None
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
            self._validators[task] = cls(schema)
        return self._validators[task]

    def check(self, record: Record) -> Verdict:
        if record.get("output_format") != "json":
            return KEEP_NOT_APPLICABLE
        try:
            value = json.loads(_text(record, "output"))
        except json.JSONDecodeError as exc:
            return Verdict(0, False, f"output is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        task = _text(record, "task_type")
        validator = self._validator(task)
        if validator is None:
            if self.unknown_task == "drop":
                return Verdict(0, False, f"task {task!r} has no output schema in the taxonomy")
            return Verdict(1, True)
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            where = error.json_path if error.absolute_path else "the top level"
            return Verdict(0, False, f"output does not match the {task} schema at {where}: {error.message[:200]}")
        return Verdict(1, True)


@dataclass
class LanguageRule:
    """English text, by a stop-word heuristic (no model, deterministic, ~µs per record).

    The score is the smaller of (a) the share of letters that are Latin script and (b) the share of
    function-word hits that are English rather than another language's (words shared with English
    are not counted for the others). Terse clinical English with few function words and no foreign
    ones scores 1.0, which is what we want: only evidence of another language drops a record.
    """

    stopwords: Mapping[str, frozenset[str]]
    columns: tuple[str, ...] = ("instruction", "input", "output")
    min_share: float = 0.5
    name: str = "language"

    def score(self, text: str) -> float:
        letters = [ch for ch in text if ch.isalpha()]
        if not letters:
            return 1.0
        latin = sum(1 for ch in letters if ch.isascii() or "\u00c0" <= ch <= "\u024f") / len(letters)
        tokens = word_tokens(text)
        english = self.stopwords["en"]
        en_hits = sum(1 for t in tokens if t in english)
        other_hits = max(
            (sum(1 for t in tokens if t in words and t not in english) for lang, words in self.stopwords.items() if lang != "en"),
            default=0,
        )
        share = 1.0 if en_hits + other_hits == 0 else en_hits / (en_hits + other_hits)
        return min(latin, share)

    def check(self, record: Record) -> Verdict:
        text = "\n".join(_text(record, column) for column in self.columns)
        share = self.score(text)
        if share < self.min_share:
            return Verdict(share, False, f"not English: English share {share:.2f} < {self.min_share}")
        return Verdict(share, True)


_ICD10_SHAPE = re.compile(r"\b[A-TV-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?\b")


def output_codes(record: Record) -> list[str]:
    """The ICD-10-CM-shaped codes of a record's output: JSON string values that are entirely a code, or code-shaped words of plain text."""
    output = _text(record, "output")
    if record.get("output_format") == "json":
        try:
            value = json.loads(output)
        except json.JSONDecodeError:
            return []
        return [s.strip() for s in json_strings(value) if _ICD10_SHAPE.fullmatch(s.strip())]
    return _ICD10_SHAPE.findall(output)


@dataclass
class Icd10Rule:
    """Codes in a coding task's output must be real (and, by default, billable) ICD-10-CM codes.

    In JSON outputs only string values that are entirely code-shaped count (so "vitamin B12" in an
    evidence quote is not read as a code); in plain text every code-shaped word does.
    """

    tasks: frozenset[str]
    is_valid: Callable[[str], bool]
    is_billable: Callable[[str], bool]
    require_billable: bool = True
    name: str = "icd10_codes"

    def codes(self, record: Record) -> list[str]:
        return output_codes(record)

    def check(self, record: Record) -> Verdict:
        if _text(record, "task_type") not in self.tasks:
            return KEEP_NOT_APPLICABLE
        codes = self.codes(record)
        if not codes:
            return KEEP_NOT_APPLICABLE
        bad = [c for c in codes if not (self.is_billable(c) if self.require_billable else self.is_valid(c))]
        score = 1 - len(bad) / len(codes)
        if bad:
            kind = "not billable ICD-10-CM codes" if self.require_billable else "not ICD-10-CM codes"
            return Verdict(score, False, f"{kind}: {', '.join(sorted(set(bad))[:10])}")
        return Verdict(score, True)


@dataclass(frozen=True)
class VerbatimCopyRule:
    """A summary must not copy the document: the share of output tokens inside word ``ngram``-grams
    that also occur in the document must stay below ``max_copied``."""

    tasks: frozenset[str]
    ngram: int = 8
    max_copied: float = 0.8
    name: str = "verbatim_copy"

    def copied_share(self, output: str, document: str) -> float:
        out_tokens, doc_tokens = word_tokens(output), word_tokens(document)
        n = self.ngram
        if len(out_tokens) < n or len(doc_tokens) < n:
            return 1.0 if out_tokens and " ".join(out_tokens) in " ".join(doc_tokens) else 0.0
        doc_grams = {tuple(doc_tokens[i : i + n]) for i in range(len(doc_tokens) - n + 1)}
        covered = [False] * len(out_tokens)
        for i in range(len(out_tokens) - n + 1):
            if tuple(out_tokens[i : i + n]) in doc_grams:
                covered[i : i + n] = [True] * n
        return sum(covered) / len(out_tokens)

    def check(self, record: Record) -> Verdict:
        if _text(record, "task_type") not in self.tasks:
            return KEEP_NOT_APPLICABLE
        output = _text(record, "output")
        if record.get("output_format") == "json":
            try:
                output = "\n".join(json_strings(json.loads(output)))  # the values, not the keys
            except json.JSONDecodeError:
                pass
        share = self.copied_share(output, _text(record, "input"))
        if share >= self.max_copied:
            return Verdict(share, False, f"summary copies the document: {share:.0%} of its tokens in copied {self.ngram}-grams")
        return Verdict(share, True)


def _case_conditions(record: Record) -> list[dict[str, Any]]:
    case = record.get("case")
    return list(case.get("conditions") or []) if isinstance(case, Mapping) else []


class MentionFinding(Protocol):
    """What the mention matcher says of one code (:class:`mediflow.cases.mentions.Finding`)."""

    @property
    def mentioned(self) -> bool: ...

    def explain(self) -> str: ...


@dataclass
class CaseMentionRule:
    """The document must mention the primary condition of the case it was written about.

    :class:`mediflow.cases.mentions.MentionMatcher` finds a condition's names (description words,
    inclusion terms, synonyms and lay terms, the code) and reads them in context: a negated,
    hedged, hypothetical or family-history mention, an ambiguous abbreviation its sentence does not
    confirm, or a name inside another condition's name is not a mention. A document that mentions
    only comorbidities is dropped, and the reason says what was found instead. Records without a
    ``case`` (released data, runs made before cases existed) are not applicable. The score is the
    share of the case's conditions the document mentions.
    """

    find: Callable[[str, list[str]], Mapping[str, MentionFinding]]
    name: str = "case_mentions"

    def check(self, record: Record) -> Verdict:
        conditions = _case_conditions(record)
        if not conditions:
            return KEEP_NOT_APPLICABLE
        codes = [c["code"] for c in conditions]
        findings = self.find(_text(record, "input"), codes)
        share = sum(finding.mentioned for finding in findings.values()) / len(codes)
        primary = findings[codes[0]]
        if primary.mentioned:
            return Verdict(share, True)
        others = [code for code in codes[1:] if findings[code].mentioned]
        also = f"; it mentions only {', '.join(others)}" if others else ""
        reason = f"the document does not mention its primary condition ({codes[0]} {conditions[0]['description'][:80]}): {primary.explain()}{also}"
        return Verdict(share, False, reason[:400])


@dataclass(frozen=True)
class CaseCodesRule:
    """A coding task's gold codes must share at least a three-character category with the record's case."""

    tasks: frozenset[str]
    name: str = "case_codes"

    def check(self, record: Record) -> Verdict:
        conditions = _case_conditions(record)
        if _text(record, "task_type") not in self.tasks or not conditions:
            return KEEP_NOT_APPLICABLE
        codes = output_codes(record)
        if not codes:
            return KEEP_NOT_APPLICABLE
        gold = {code.strip().upper()[:3] for code in codes}
        case = {c["code"][:3] for c in conditions}
        shared = gold & case
        if not shared:
            return Verdict(0.0, False, f"gold codes share nothing with the case: {', '.join(sorted(set(codes))[:6])} vs {', '.join(c['code'] for c in conditions)}")
        return Verdict(len(shared) / len(case), True)
