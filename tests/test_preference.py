"""Preference building blocks: the margin rule, error kinds, hard checks, code swaps, selection, and
the judge's seeded candidate order (checked on the requests that reach the judge)."""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from pathlib import Path

import pyarrow as pa
import pytest

from mediflow import terminology
from mediflow.errors import MediflowError
from mediflow.preference.error_kinds import applicable_kinds, choose_kind, load_error_kinds
from mediflow.preference.hard_checks import CHOSEN_FAILS_CHECKS, INDISTINGUISHABLE, fits_kind, tell_apart
from mediflow.preference.icd10 import invalid_codes_in, swap_for_sibling, valid_codes_in
from mediflow.preference.judge import PairJudge, PairJudgeStep, presentation_order
from mediflow.preference.margins import (
    IDENTICAL_TEXT,
    LOW_MARGIN,
    REJECTED_NOT_WORSE,
    TIE,
    ScoredCandidate,
    best_worst_pair,
    confirmed_worse,
)
from mediflow.preference.selection import select_best
from mediflow.prompts import load_prompts
from mediflow.teachers.base import ChatRequest, ChatResponse


def scored(*scores: float) -> list[ScoredCandidate]:
    return [ScoredCandidate(f"source{i}", f"answer {i}", s) for i, s in enumerate(scores)]


# --- margin rule -----------------------------------------------------------------------------


def test_best_worst_pair_needs_the_margin() -> None:
    decision = best_worst_pair(scored(6, 9, 3, 7), min_margin=2)
    assert decision.kept and decision.chosen.score == 9 and decision.rejected.score == 3
    assert best_worst_pair(scored(6, 7, 6.5), min_margin=2).drop_reason == LOW_MARGIN
    assert best_worst_pair(scored(6, 8), min_margin=2).kept  # exactly the margin is enough


def test_all_equal_scores_are_a_tie_never_a_pair() -> None:
    """distilabel's max/min pick returns one answer as both chosen and rejected here."""
    decision = best_worst_pair(scored(5, 5, 5), min_margin=0.5)
    assert decision.drop_reason == TIE and decision.chosen is None and decision.rejected is None


def test_identical_texts_never_make_a_pair_whatever_the_scores() -> None:
    same = [ScoredCandidate("a", "The  answer.", 9), ScoredCandidate("b", "The answer. ", 2)]
    assert best_worst_pair(same, min_margin=1).drop_reason == IDENTICAL_TEXT
    assert confirmed_worse(same[0], same[1], min_margin=1).drop_reason == IDENTICAL_TEXT


def test_injected_pair_kept_only_when_the_judge_confirms_it_is_worse() -> None:
    chosen, rejected = ScoredCandidate("t", "right", 8), ScoredCandidate("i", "wrong", 5)
    assert confirmed_worse(chosen, rejected, 2).kept
    assert confirmed_worse(chosen, ScoredCandidate("i", "wrong", 8), 2).drop_reason == TIE
    assert confirmed_worse(chosen, ScoredCandidate("i", "wrong", 9), 2).drop_reason == REJECTED_NOT_WORSE
    assert confirmed_worse(chosen, ScoredCandidate("i", "wrong", 7), 2).drop_reason == LOW_MARGIN
    with pytest.raises(ValueError):
        confirmed_worse(chosen, rejected, 0)


# --- error kinds -------------------------------------------------------------------------------


def test_error_kinds_apply_by_format_and_content() -> None:
    kinds = load_error_kinds()
    names = {k.name for k in kinds}
    assert {"ambiguity", "partial_correctness", "factual_error", "wrong_icd10_code", "omitted_finding", "broken_json_structure"} <= names

    plain = {k.name for k in applicable_kinds(kinds, "medication_qa", "plain_text", "Take aspirin 81 mg daily.")}
    assert "broken_json_structure" not in plain and "wrong_icd10_code" not in plain and "factual_error" in plain
    coded = {k.name for k in applicable_kinds(kinds, "icd10cm_coding", "json", '{"codes": [{"code": "E11.9"}]}')}
    assert {"broken_json_structure", "wrong_icd10_code"} <= coded


def test_kind_choice_is_seeded_per_record_and_covers_the_kinds() -> None:
    kinds = load_error_kinds()
    first = [choose_kind(kinds, f"record-{i}", seed=0) for i in range(200)]
    assert first == [choose_kind(kinds, f"record-{i}", seed=0) for i in range(200)]
    assert first != [choose_kind(kinds, f"record-{i}", seed=1) for i in range(200)]
    assert {k.name for k in first} == {k.name for k in kinds}
    assert choose_kind([], "record", seed=0) is None


def test_error_kinds_file_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "kinds.yaml"
    bad.write_text("error_kinds:\n  - name: x\n    description: d\n    how: h\n    formats: [json]\n    strategy: magic\n")
    with pytest.raises(MediflowError, match=r"kinds.yaml: error kind 'x': unknown strategy 'magic'"):
        load_error_kinds(bad)
    bad.write_text("error_kinds:\n  - name: x\n    how: h\n")
    with pytest.raises(MediflowError, match=r"error_kinds\[0\] is missing the key 'description'"):
        load_error_kinds(bad)
    bad.write_text("error_kinds:\n  - name: x\n    description: d\n    how: h\n    formats: [json]\n    structural: maybe\n")
    with pytest.raises(MediflowError, match=r"error kind 'x': 'structural' must be true or false"):
        load_error_kinds(bad)


# --- ICD-10 codes and hard checks --------------------------------------------------------------


def test_wrong_code_is_a_real_sibling() -> None:
    text = "Principal: E11.9 type 2 diabetes. Also E11.9 noted; vitamin B12 low."
    swap = swap_for_sibling(text, "record-1", seed=0)
    assert swap is not None and swap.original == "E11.9"
    assert terminology.is_valid(swap.replacement) and swap.replacement != "E11.9"
    assert swap.replacement in terminology.siblings("E11.9")
    assert "E11.9" not in swap.text and swap.text.count(swap.replacement) == 2
    assert valid_codes_in(swap.text) == [swap.replacement] and invalid_codes_in("code Q99.ZZ9") == ["Q99.ZZ9"]
    assert swap_for_sibling("no codes here", "r", 0) is None


def test_hard_checks_tell_json_answers_apart() -> None:
    schema = {"type": "object", "required": ["codes"], "properties": {"codes": {"type": "array", "items": {"type": "string"}}}}
    chosen = '{"codes": ["E11.9"]}'
    assert tell_apart(chosen, '{ "codes" : ["E11.9"] }', schema).drop_reason == INDISTINGUISHABLE
    assert tell_apart(chosen, '{"codes": ["E11.8"]}', schema).differences == ("content",)
    assert "json_schema" in tell_apart(chosen, '{"code": "E11.9"}', schema).differences
    assert "json_syntax" in tell_apart(chosen, '{"codes": ["E11.9"]', schema).differences
    assert "icd10_validity" in tell_apart(chosen, '{"codes": ["E11.ZZ"]}', schema).differences
    assert tell_apart('{"code": 1}', chosen, schema).drop_reason == CHOSEN_FAILS_CHECKS


def test_an_injected_json_pair_must_differ_the_way_its_error_kind_says() -> None:
    schema = {"type": "object", "required": ["codes"], "properties": {"codes": {"type": "array", "items": {"type": "string"}}}}
    chosen = '{"codes": ["E11.9"]}'
    structural = {k.name: k.structural for k in load_error_kinds()}
    assert structural["broken_json_structure"] and not structural["factual_error"]
    content_error = tell_apart(chosen, '{"codes": ["E11.8"]}', schema).differences
    broken_syntax = tell_apart(chosen, "codes: E11.9", schema).differences
    broken_schema = tell_apart(chosen, '{"code": "E11.9"}', schema).differences
    assert fits_kind(content_error, structural=False) and not fits_kind(content_error, structural=True)
    assert fits_kind(broken_schema, structural=True) and not fits_kind(broken_schema, structural=False)
    assert not fits_kind(broken_syntax, structural=False) and not fits_kind(broken_syntax, structural=True)


# --- selection ---------------------------------------------------------------------------------


def test_selection_takes_the_best_judged_records() -> None:
    table = pa.table({"id": [f"r{i}" for i in range(10)], "quality": [float(i) for i in range(10)], "coherence": [float(i) for i in range(10)]})
    best = select_best(table, min_score=None, top_fraction=0.3)
    assert best.records.column("id").to_pylist() == ["r9", "r8", "r7"] and best.below_threshold == 7
    assert select_best(table, min_score=8, top_fraction=1.0).records.num_rows == 2
    with pytest.warns(UserWarning, match="no judge scores"):
        unjudged = select_best(pa.table({"id": ["a", "b"]}), min_score=None, top_fraction=0.5)
    assert unjudged.records.num_rows == 2 and not unjudged.judged


# --- the judge sees candidates in a seeded random order ----------------------------------------


class RecordingJudgeEngine:
    """Stands in for the engine: records each judge request and scores candidates by their text."""

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        user = dict(request.messages)["user"]
        shown = re.findall(r"### Candidate ([A-Z])\n(candidate-\d)", user)
        return ChatResponse(json.dumps({label: {"score": 2 + int(text[-1]), "rationale": "ok"} for label, text in shown}), "stop")


def shown_order(request: ChatRequest) -> list[str]:
    return re.findall(r"### Candidate [A-Z]\n(candidate-\d)", dict(request.messages)["user"])


def test_candidate_order_is_shuffled_seeded_and_scores_map_back() -> None:
    engine = RecordingJudgeEngine()
    judge = PairJudge(engine, PairJudgeStep(load_prompts().get("pair_judge"), seed=11, temperature=0.0), samples=2)
    record = {"instruction": "Summarise.", "input": "Note.", "output_format": "plain_text"}
    candidates = [f"candidate-{i}" for i in range(4)]
    verdicts = [asyncio.run(judge.score(record, candidates, f"record-{r}")) for r in range(6)]

    orders = [shown_order(request) for request in engine.requests]
    assert all(sorted(order) == candidates for order in orders)
    assert len({tuple(order) for order in orders}) > 3, "the order must vary across records and samples"
    assert orders[0] != orders[1], "each judge sample gets its own order"
    for verdict in verdicts:  # whatever the order shown, each candidate gets its own score back
        assert verdict.scores == (2.0, 3.0, 4.0, 5.0)
    for verdict, (first, second) in zip(verdicts, zip(orders[::2], orders[1::2])):
        assert [candidates[i] for i in verdict.orders[0]] == first and [candidates[i] for i in verdict.orders[1]] == second

    again = RecordingJudgeEngine()
    asyncio.run(PairJudge(again, PairJudgeStep(load_prompts().get("pair_judge"), seed=11, temperature=0.0), samples=2).score(record, candidates, "record-0"))
    assert [shown_order(r) for r in again.requests] == orders[:2]
    assert presentation_order(4, "record-0", 0, seed=12) != presentation_order(4, "record-0", 0, seed=11) or presentation_order(4, "record-1", 0, seed=12) != presentation_order(4, "record-1", 0, seed=11)


def test_judge_without_a_valid_answer_gives_no_scores() -> None:
    class Garbage:
        async def complete(self, request: ChatRequest) -> ChatResponse:
            return ChatResponse("not json", "stop")

    judge = PairJudge(Garbage(), PairJudgeStep(load_prompts().get("pair_judge"), seed=0, temperature=0.0, max_corrections=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verdict = asyncio.run(judge.score({"instruction": "i", "input": "d"}, ["a", "b"], "r"))
    assert verdict.scores is None and "not valid JSON" in (verdict.error or "")
