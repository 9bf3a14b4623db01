"""Hard checks that must tell a JSON task's chosen and rejected answers apart, judge aside.

For JSON answers a judge can be fooled by formatting, so an injected pair is kept only when
mechanical checks see a difference: the parsed values differ, or the rejected side fails a check
the chosen side passes (JSON syntax, the task's JSON Schema, ICD-10-CM code validity). A rejected
answer that passes every check the chosen one fails would teach the wrong preference, so such a
pair is dropped too. An injected pair must also differ the way its ``error_type`` says: a content
error that broke the JSON would be labelled with the wrong kind, so it is dropped as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mediflow.preference.icd10 import invalid_codes_in
from mediflow.records import canonical_json
from mediflow.steps.structured import check_json

#: Drop reasons of the hard checks.
INDISTINGUISHABLE = "hard_checks_indistinguishable"
CHOSEN_FAILS_CHECKS = "chosen_fails_hard_checks"
KIND_MISMATCH = "hard_checks_kind_mismatch"


@dataclass(frozen=True)
class AnswerChecks:
    """What the mechanical checks say about one JSON answer."""

    parses: bool
    schema_valid: bool
    icd10_valid: bool
    canonical: str | None  # canonical JSON of the parsed value, None when it does not parse

    def failures(self) -> set[str]:
        return {name for name, ok in (("json_syntax", self.parses), ("json_schema", self.schema_valid), ("icd10_validity", self.icd10_valid)) if not ok}


def check_answer(text: str, schema: dict[str, Any] | None) -> AnswerChecks:
    """Run the JSON checks on one answer (no schema: only syntax and codes are checked)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return AnswerChecks(parses=False, schema_valid=False, icd10_valid=not invalid_codes_in(text), canonical=None)
    schema_valid = schema is None or check_json(text, schema)[1] is None
    return AnswerChecks(True, schema_valid, not invalid_codes_in(text), canonical_json(value))


@dataclass(frozen=True)
class HardCheckResult:
    """The checks' verdict on a pair: the differences found, or why the pair must be dropped."""

    differences: tuple[str, ...]
    drop_reason: str | None


def tell_apart(chosen: str, rejected: str, schema: dict[str, Any] | None) -> HardCheckResult:
    """Whether the hard checks distinguish ``rejected`` from ``chosen`` (and not in the wrong direction)."""
    chosen_checks, rejected_checks = check_answer(chosen, schema), check_answer(rejected, schema)
    if chosen_checks.failures() - rejected_checks.failures():
        return HardCheckResult((), CHOSEN_FAILS_CHECKS)
    differences = sorted(rejected_checks.failures() - chosen_checks.failures())
    if chosen_checks.canonical != rejected_checks.canonical:
        differences.append("content")
    if not differences:
        return HardCheckResult((), INDISTINGUISHABLE)
    return HardCheckResult(tuple(differences), None)


def fits_kind(differences: tuple[str, ...], structural: bool) -> bool:
    """Whether the checks' differences are those of the error kind: a structural kind parses but breaks
    the schema; any other kind keeps valid, schema-conforming JSON and changes its content."""
    if structural:
        return "json_schema" in differences and "json_syntax" not in differences
    return "json_syntax" not in differences and "json_schema" not in differences
