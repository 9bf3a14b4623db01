"""Rule filters on crafted positive and negative cases."""

from mediflow.quality.filters import LanguageRule, LengthRule, PatternRule, VerbatimCopyRule, compile_patterns, rule_data


def test_length_rule():
    rule = LengthRule("output", min_tokens=2, max_tokens=5)
    assert not rule.check({"output": ""}).keep
    assert not rule.check({"output": "one"}).keep
    assert not rule.check({"output": "a b c d e f"}).keep
    assert rule.check({"output": "a b c"}).keep


def test_refusal_rule():
    rule = PatternRule("refusal", ("output",), compile_patterns(rule_data()["refusal_patterns"]), "refusal")
    verdict = rule.check({"output": "As an AI language model, I cannot provide medical advice."})
    assert not verdict.keep and verdict.score >= 1 and "refusal" in verdict.reason
    assert rule.check({"output": "Start apixaban 5 mg twice daily."}).keep


def test_language_rule():
    stopwords = {k: frozenset(v) for k, v in rule_data()["stopwords"].items()}
    rule = LanguageRule(stopwords, ("output",))
    assert rule.check({"output": "The patient was admitted with pneumonia and treated with antibiotics."}).keep
    assert not rule.check({"output": "Le patient est admis pour une pneumonie et il est traité avec des antibiotiques."}).keep


def test_verbatim_copy_rule():
    rule = VerbatimCopyRule(frozenset({"summary"}), ngram=4)
    document = "the patient was admitted with pneumonia and treated with ceftriaxone for five days before discharge home"
    assert not rule.check({"task_type": "summary", "input": document, "output": document}).keep
    assert rule.check({"task_type": "summary", "input": document, "output": "Pneumonia, treated, discharged."}).keep
    assert rule.check({"task_type": "other", "input": document, "output": document}).keep


def test_default_filters_check_codes_and_copying_where_the_taxonomy_asks() -> None:
    """`quality_checks` in the task YAML switch the ICD-10 and verbatim-copy rules on, with no config."""
    from mediflow.quality.config import FilterConfig
    from mediflow.quality.filter_stage import build_rules
    from mediflow.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    assert taxonomy.tasks["icd10cm_coding"].quality_checks == ("icd10_codes",)
    assert "verbatim_copy" in taxonomy.tasks["question_summarization"].quality_checks
    rules = {rule.name: rule for rule in build_rules(FilterConfig())}
    codes = rules["icd10_codes"]
    fake = {"task_type": "icd10cm_coding", "output_format": "json", "output": '{"codes": [{"code": "N9N", "description": "x", "role": "principal", "evidence": "y"}]}'}
    real = dict(fake, output=fake["output"].replace("N9N", "I10"))
    assert not codes.check(fake).keep
    assert codes.check(real).keep
    assert codes.check(dict(fake, task_type="keyword_extraction")).keep
    document = "the patient asks whether she can keep taking ibuprofen for knee pain while on lisinopril for blood pressure"
    copy = {"task_type": "question_summarization", "input": document, "output": document}
    assert not rules["verbatim_copy"].check(copy).keep
