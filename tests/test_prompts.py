"""Prompt templates: loading, versions, strict rendering, and rendering for every taxonomy cell."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mediflow.errors import MediflowError
from mediflow.prompts import load_prompts
from mediflow.resources import prompts_dir
from mediflow.taxonomy import load_taxonomy
from mediflow.teachers.base import ChatRequest

TAXONOMY = load_taxonomy()
PROMPTS = load_prompts()
GENERATION_PROMPTS = ("document", "instruction", "response_plain", "response_json", "correction")


@pytest.mark.parametrize("name", GENERATION_PROMPTS)
def test_version_is_the_file_hash(name: str) -> None:
    prompt = PROMPTS.get(name)
    expected = hashlib.sha256((prompts_dir() / f"{name}.yaml").read_bytes()).hexdigest()[:12]
    assert prompt.version == expected
    assert prompt.data["description"]


def test_document_prompt_renders_for_every_document_type() -> None:
    prompt = PROMPTS.get("document")
    for doc_type in TAXONOMY.document_types.values():
        messages = prompt.render(document_type=doc_type, category=TAXONOMY.category(doc_type.category))
        assert [role for role, _ in messages] == ["system", "user"]
        user = messages[1][1]
        assert doc_type.sections[0] in user and f"{doc_type.typical_length.max_words} words" in user
        assert "fictitious" in messages[0][1]


def test_document_prompt_renders_the_case_requirements_and_difficulty() -> None:
    from mediflow.cases import Case, Condition, Medication

    doc_type = TAXONOMY.document_type("discharge_summary")
    task = TAXONOMY.task("error_detection_correction")
    case = Case(
        "general_inpatient",
        71,
        "female",
        "inpatient ward",
        "urgent",
        (
            Condition("E11.22", "Type 2 diabetes mellitus with diabetic chronic kidney disease", "primary", "type 2 diabetes with diabetic CKD"),
            Condition("I48.91", "Unspecified atrial fibrillation", "comorbidity"),
            Condition("N18.31", "Chronic kidney disease, stage 3a", "companion", "CKD stage 3a"),
        ),
        (Medication("insulin glargine", "E11.22"), Medication("apixaban", "I48.91"), Medication("enoxaparin", "", "prophylaxis", "venous thromboembolism prophylaxis")),
    )
    (_, _), (_, user) = PROMPTS.get("document").render(
        document_type=doc_type,
        category=TAXONOMY.category(doc_type.category),
        case=case,
        requirements=task.document_requirements,
        difficulty=TAXONOMY.difficulty_levels[-1],
        target_words=700,
    )
    assert "71 years old, female; seen in inpatient ward; urgent encounter" in user
    assert "- type 2 diabetes with diabetic CKD (ICD-10-CM E11.22) - the main problem" in user  # the clinical name, not the coder's
    assert "- Unspecified atrial fibrillation (ICD-10-CM I48.91) - another of the patient's conditions" in user  # no name: the description
    assert "- insulin glargine - for type 2 diabetes with diabetic CKD" in user  # each drug with its indication
    assert "- apixaban - for Unspecified atrial fibrillation" in user
    assert "- enoxaparin - venous thromboembolism prophylaxis" in user
    assert task.document_requirements in user
    assert "about 700 words" in user and "specialist" in user


def test_document_prompt_gives_infants_in_months_and_population_documents_no_patient() -> None:
    from mediflow.cases import Case, Condition, Medication

    doc_type = TAXONOMY.document_type("progress_note")
    infant = Case("paediatric_inpatient", 0, "male", "inpatient ward", "urgent", (Condition("J21.0", "Acute bronchiolitis due to RSV", "primary"),), (), "", 7)
    (_, _), (_, user) = PROMPTS.get("document").render(document_type=doc_type, category=TAXONOMY.category(doc_type.category), case=infant)
    assert "The patient: 7 months old, male" in user and "years old" not in user
    newborn = Case("newborn", 0, "female", "inpatient ward", "routine", (Condition("Z38.00", "Single liveborn infant, delivered vaginally", "primary"),), (), "", 0)
    (_, _), (_, user) = PROMPTS.get("document").render(document_type=doc_type, category=TAXONOMY.category(doc_type.category), case=newborn)
    assert "a newborn (under one month old)" in user
    label = TAXONOMY.document_type("prescribing_information_excerpt")
    topic = Case(
        "chronic_care",
        None,
        None,
        "drug labelling",
        None,
        (Condition("E11.9", "Type 2 diabetes mellitus without complications", "primary", "type 2 diabetes mellitus"),),
        (Medication("metformin", "E11.9"),),
        "adults aged 18 and older with type 2 diabetes mellitus",
    )
    (_, _), (_, user) = PROMPTS.get("document").render(document_type=label, category=TAXONOMY.category(label.category), case=topic)
    assert "not about one patient: write it for adults aged 18 and older with type 2 diabetes mellitus" in user
    assert "Medicines it is about: metformin." in user and "The patient" not in user


def test_instruction_and_response_prompts_render_for_every_cell() -> None:
    """Every compatible (task, document type) x difficulty x format renders, JSON ones embedding the schema."""
    instruction = PROMPTS.get("instruction")
    plain, structured = PROMPTS.get("response_plain"), PROMPTS.get("response_json")
    rendered = 0
    for task_name, doc_name in TAXONOMY.cells():
        task, doc_type = TAXONOMY.task(task_name), TAXONOMY.document_type(doc_name)
        schema_text = json.dumps(task.output_schema, indent=2, ensure_ascii=False)
        for level in TAXONOMY.difficulty_levels:
            for output_format in TAXONOMY.output_formats:
                messages = instruction.render(task=task, document_type=doc_type, difficulty=level, output_format=output_format)
                assert (schema_text in messages[1][1]) == (output_format == "json")
                rendered += 1
        for response in (plain, structured):
            answer = response.render(task=task, instruction="Do the task.", document="Pt seen.")
            assert answer[1][1].endswith("<document>\nPt seen.\n</document>")
            ChatRequest(messages=answer)  # the shape the engine takes
    assert rendered == len(TAXONOMY.cells()) * 6 * 2


def test_response_json_embeds_the_task_schema() -> None:
    task = TAXONOMY.task("icd10cm_coding")
    (_, system), _ = PROMPTS.get("response_json").render(task=task, instruction="Code it.", document="T2DM.")
    assert json.dumps(task.output_schema, indent=2) in system
    assert task.answer_guidance in system


def test_instruction_prompt_can_target_a_specific_document() -> None:
    messages = PROMPTS.get("instruction").render(
        task=TAXONOMY.task("clinical_record_qa"),
        document_type=TAXONOMY.document_type("progress_note"),
        difficulty=TAXONOMY.difficulty_levels[0],
        output_format="plain_text",
        document="S: feels well.",
    )
    assert "<document>\nS: feels well.\n</document>" in messages[1][1]


def test_correction_turn_quotes_the_error_and_optionally_the_schema() -> None:
    correction = PROMPTS.get("correction")
    ((role, text),) = correction.render(error="'codes' is a required property")
    assert role == "user" and "'codes' is a required property" in text and "Schema" not in text
    ((_, with_schema),) = correction.render(error="bad", schema={"type": "object"})
    assert '"type": "object"' in with_schema


def test_a_missing_variable_is_an_error_naming_it() -> None:
    with pytest.raises(MediflowError, match="'document' is undefined"):
        PROMPTS.get("response_plain").render(task=TAXONOMY.task("keyword_extraction"), instruction="x")


def test_declared_variables_match_the_templates() -> None:
    for name in GENERATION_PROMPTS:
        prompt = PROMPTS.get(name)
        declared = prompt.data["variables"]
        assert prompt.variables == set(declared["required"]) | set(declared.get("optional", {})), name


def test_any_prompt_file_loads_generically_and_user_files_override(tmp_path: Path) -> None:
    (tmp_path / "qa.yaml").write_text("rubric: [a, b]\nuser: 'Ask {{ n }} questions about: {{ document }}'\n")
    (tmp_path / "correction.yaml").write_text("user: 'Fix: {{ error }}'\n")
    library = load_prompts(tmp_path)
    qa = library.get("qa")
    assert qa.render(n=3, document="doc") == (("user", "Ask 3 questions about: doc"),)
    assert qa.data == {"rubric": ["a", "b"]}
    assert library.get("correction").render(error="e") == (("user", "Fix: e"),)
    assert library.get("document").version == PROMPTS.get("document").version
    assert {"qa", "document", "correction"} <= set(library.names())


def test_broken_prompt_files_are_reported_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad_syntax.yaml").write_text("user: 'Hello {{ name '\n")
    (tmp_path / "data_only.yaml").write_text("kinds: [omission]\n")
    (tmp_path / "not_a_mapping.yaml").write_text("- a list\n")
    library = load_prompts(tmp_path)
    with pytest.raises(MediflowError, match=r"bad_syntax.yaml: user template, line 1"):
        library.get("bad_syntax")
    with pytest.raises(MediflowError, match="not_a_mapping.yaml: a prompt file must be a mapping"):
        library.get("not_a_mapping")
    data_only = library.get("data_only")
    assert data_only.data == {"kinds": ["omission"]}
    with pytest.raises(MediflowError, match="has no 'system:' or 'user:' template"):
        data_only.render()
    with pytest.raises(MediflowError, match="unknown prompt 'nope'.*document"):
        library.get("nope")


class _Anything(str):
    """A stand-in for any variable: a string that has every attribute and item, iterates once, compares as a number."""

    def __getattr__(self, name: str) -> _Anything:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name)

    def __getitem__(self, key: object) -> _Anything:  # type: ignore[override]
        return _Anything(str(key))

    def __iter__(self):  # type: ignore[override]
        return iter([_Anything("item")])

    def items(self):
        return [(_Anything("key"), _Anything("value"))]

    def __gt__(self, other: object) -> bool:
        return True

    __lt__ = __ge__ = __le__ = __gt__


def _declared(name: str) -> tuple[set[str], set[str]]:
    variables = PROMPTS.get(name).data.get("variables")
    assert isinstance(variables, dict) and set(variables) <= {"required", "optional"}, f"prompt '{name}': declare its variables as 'variables: {{required: {{name: what}}, optional: {{...}}}}'"
    return set(variables.get("required") or {}), set(variables.get("optional") or {})


@pytest.mark.parametrize("name", [name for name in PROMPTS.names() if PROMPTS.get(name).sources])
def test_every_prompt_declares_exactly_the_variables_it_renders(name: str) -> None:
    required, optional = _declared(name)
    used = set(PROMPTS.get(name).variables)
    assert not used - required - optional, f"prompt '{name}' uses undeclared variables {sorted(used - required - optional)}"
    assert not (required | optional) - used, f"prompt '{name}' declares unused variables {sorted((required | optional) - used)}"
    everything = PROMPTS.get(name).render(**{variable: _Anything(variable) for variable in required | optional})
    only_required = PROMPTS.get(name).render(**{variable: _Anything(variable) for variable in required})
    assert everything and only_required
    if required:
        with pytest.raises(MediflowError, match="is undefined"):
            PROMPTS.get(name).render(**{variable: _Anything(variable) for variable in sorted(required)[1:]})


def test_prompts_name_their_answer_schema_response_schema() -> None:
    with_schema = [name for name in PROMPTS.names() if "response_schema" in PROMPTS.get(name).data]
    other_names = [name for name in PROMPTS.names() if {"schema", "candidate_schema", "answer_schema"} & set(PROMPTS.get(name).data)]
    assert with_schema and not other_names, f"name the answer's JSON Schema 'response_schema' in {other_names}"
