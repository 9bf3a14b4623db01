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
