"""Near-dedup with the clinical confirmation, shipped defaults: copies merge, same-template siblings do not.

Each case is two records through the whole ``find_duplicates`` path (exact hashes, MinHash-LSH
candidates, rapidfuzz, the clinical-token check). A copy (typos, whitespace and case, reordered
sentences, abbreviations, a few words changed) must merge with its original; a sibling written on
the same template for another patient, differing only in one age, sex, side, dose, negation,
value, drug, organ, code, lab or in what a negation negates, must not.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mediflow.cli import main
from mediflow.errors import ConfigError
from mediflow.quality.clinical import Lexicon, agree, same_case, text_facts, value_fingerprints
from mediflow.quality.config import DedupConfig
from mediflow.quality.dedup import find_duplicates

INSTRUCTION = "Summarize the key findings of this discharge summary for the primary care physician."
NOTE = (
    "The patient is a 67-year-old man admitted with community-acquired pneumonia after three days of fever. "
    "A chest X-ray showed a right lower lobe consolidation with no pleural effusion. "
    "He was treated with intravenous ceftriaxone 1 g daily for 5 days and improved steadily. "
    "Creatinine was 1.1 mg/dL on discharge and the white cell count was 14.2. "
    "He denies chest pain but reports mild fatigue. "
    "The encounter was coded J18.9. "
    "He was discharged home on oral amoxicillin 500 mg three times daily. "
    "Follow up with the primary care physician in 2 weeks with a repeat chest X-ray. "
    "He has a history of hypertension and gout, and his oxygen saturation was 94 percent on room air. "
    "Blood cultures were requested."
)

COPIES = {
    "typos": NOTE.replace("admitted", "admited").replace("consolidation", "consolidaiton").replace("steadily", "steadilly"),
    "typo in a drug and an organ": NOTE.replace("ceftriaxone", "ceftriaxnoe").replace("chest pain", "chset pain"),
    "whitespace and case": "  " + NOTE.upper().replace(". ", " .\n").replace(", ", " ,  "),
    "reordered sentences": ". ".join(reversed(NOTE.rstrip(".").split(". "))) + ".",
    "abbreviations": NOTE.replace("patient", "pt").replace("intravenous", "IV").replace("67-year-old", "67 y/o").replace("three times daily", "t.i.d.").replace("Follow up", "F/u"),
    "a few words changed": NOTE.replace("improved steadily", "got better").replace("The encounter was", "This encounter is"),
    # one test per kind of copy of issue 19's table
    "whitespace: line breaks and runs of spaces inside sentences": NOTE.replace(" admitted ", "\nadmitted  ").replace("lower lobe", "lower\r\n\tlobe").replace(" on discharge", "   on\ndischarge"),
    "all caps": NOTE.upper(),
    "all lower": NOTE.lower(),
    "punctuation spaced": NOTE.replace("1.1 mg", "1 .1 mg").replace("fever.", "fever .").replace("gout,", "gout ,").replace("(", "( "),
    "typo: a letter dropped": NOTE.replace("admitted", "admited"),
    "typo: a letter inserted": NOTE.replace("consolidation", "consollidation"),
    "typo: two letters transposed": NOTE.replace("ceftriaxone", "ceftriaxnoe"),
    "typo: a letter substituted": NOTE.replace("pneumonia", "pneumonja"),
    "typo: a transposition in a unit": NOTE.replace("mg/dL", "mg/Ld"),
    "typo: a letter dropped from a unit": NOTE.replace("mg/dL", "mg/d"),
    "typo: a side misspelled": NOTE.replace("right lower", "rihgt lower"),
    "two adjacent sentences swapped": NOTE.replace(
        "He was treated with intravenous ceftriaxone 1 g daily for 5 days and improved steadily. Creatinine was 1.1 mg/dL on discharge and the white cell count was 14.2. ",
        "Creatinine was 1.1 mg/dL on discharge and the white cell count was 14.2. He was treated with intravenous ceftriaxone 1 g daily for 5 days and improved steadily. ",
    ),
    "a filler word dropped": NOTE.replace("and the white cell count", "and white cell count"),
    "a word split in two": NOTE.replace("pneumonia", "pneu monia"),
    # human misspellings and keyboard slips beyond one edit per four letters: a word that is no fact, where the fact word stood
    "a misspelling that sounds the same: daily -> daylie": NOTE.replace("1 g daily", "1 g daylie"),
    "two letters wrong in a four-letter word: gout -> gowd": NOTE.replace("and gout", "and gowd"),
    "a keyboard slip in a two-letter negation: no -> nk": NOTE.replace("with no pleural", "with nk pleural"),
    "a letter dropped from a two-letter negation: no -> n": NOTE.replace("with no pleural", "with n pleural"),
    "a word cut where a letter was lost: ceftriaxone -> ceftri xone": NOTE.replace("ceftriaxone", "ceftri xone"),
    "two words run together": NOTE.replace("chest pain", "chestpain"),
    "a contraction": NOTE.replace("He denies chest pain", "He doesn't have chest pain").replace("denies", "does not have"),
    "Unicode: full-width digits, a ligature, a non-breaking space, a zero-width space": NOTE.replace("14.2", "\uff11\uff14.\uff12")
    .replace("effusion", "e\ufb00usion")
    .replace("fatigue", "fa\u200btigue")
    .replace("67-year-old man", "67-year-old\u00a0man"),
}

#: Each abbreviation or symbol of the table, written into the note one at a time (the copy abbreviates).
ABBREVIATIONS = [
    ("patient", "pt"),
    ("history", "hx"),
    (" with community", " w/ community"),
    (" and gout", " & gout"),
    ("94 percent", "94%"),
    ("intravenous", "IV"),
    ("67-year-old", "67 y/o"),
    ("three times daily", "t.i.d."),
    ("Follow up", "F/u"),
    ("requested", "ordered"),
    ("primary care physician in", "PCP in"),
]

SIBLINGS = {
    "age": NOTE.replace("67-year-old", "76-year-old"),
    "sex": NOTE.replace("67-year-old man", "67-year-old woman").replace("He ", "She "),
    "side": NOTE.replace("right lower lobe", "left lower lobe"),
    "dose": NOTE.replace("amoxicillin 500 mg", "amoxicillin 250 mg"),
    "frequency": NOTE.replace("1 g daily", "1 g twice daily"),
    "negation": NOTE.replace("with no pleural effusion", "with a pleural effusion"),
    "negated finding": NOTE.replace("no pleural effusion", "pleural effusion").replace("denies chest pain but reports mild fatigue", "reports chest pain but no mild fatigue"),
    "value": NOTE.replace("14.2", "4.2"),
    "drug": NOTE.replace("ceftriaxone", "cefepime"),
    "organ": NOTE.replace("chest X-ray showed", "abdominal X-ray showed").replace("lower lobe", "kidney"),
    "code": NOTE.replace("J18.9", "J15.9"),
    "lab": NOTE.replace("Creatinine was", "Lactate was"),
    "condition": NOTE.replace("community-acquired pneumonia", "community-acquired bronchitis"),
}

#: A fact dropped while a reworded sentence elsewhere brings an everyday word a letter or two from it: not that fact misspelled
#: (a misspelling must stand where the word stood), so still another case.
FACT_DROPPED_WORD_CLOSE_ELSEWHERE = {
    "negation dropped, 'to' elsewhere": NOTE.replace("with no pleural effusion", "with pleural effusion").replace("Follow up with", "Follow up to"),
    "side dropped, 'night' elsewhere": NOTE.replace("right lower lobe", "lower lobe").replace("on room air", "on night air"),
}


def _dropped(first: tuple[str, str], second: tuple[str, str], config: DedupConfig | None = None) -> int:
    table = pa.table({"id": ["a", "b"], "instruction": [first[0], second[0]], "input": [first[1], second[1]], "task_type": ["summarization"] * 2})
    return int(find_duplicates(table, config or DedupConfig()).drop.sum())


@pytest.mark.parametrize("kind", sorted(COPIES))
def test_copy_merges(kind: str) -> None:
    assert _dropped((INSTRUCTION, NOTE), (INSTRUCTION, COPIES[kind])) == 1


@pytest.mark.parametrize("long, short", ABBREVIATIONS, ids=[short.strip() for _, short in ABBREVIATIONS])
def test_an_abbreviation_or_symbol_merges_either_way(long: str, short: str) -> None:
    abbreviated = NOTE.replace(long, short, 1)
    assert abbreviated != NOTE
    assert _dropped((INSTRUCTION, NOTE), (INSTRUCTION, abbreviated)) == 1
    assert _dropped((INSTRUCTION, abbreviated), (INSTRUCTION, NOTE)) == 1  # and a copy that writes it out


def test_case_and_whitespace_copies_are_exact_duplicates() -> None:
    """A copy that differs only in whitespace, case, punctuation spacing or an abbreviation is the same text: an exact duplicate."""
    for kind in ("whitespace: line breaks and runs of spaces inside sentences", "all caps", "all lower", "punctuation spaced"):
        table = pa.table({"id": ["a", "b"], "instruction": [INSTRUCTION, INSTRUCTION], "input": [NOTE, COPIES[kind]], "task_type": ["s", "s"]})
        result = find_duplicates(table, DedupConfig())
        assert result.details["pair"]["exact_pairs"] == 1 and result.rule[1] == "exact:pair", kind


def test_negation_is_read_within_its_sentence() -> None:
    """Sentence order is free, but what a negation negates is read inside its own sentence."""
    lexicon = Lexicon.load()
    note = "Chest X-ray shows no effusion. Cough for three days. Denies fever."
    assert same_case(note, "Denies fever. Cough for three days. Chest X-ray shows no effusion.", lexicon)  # sentences moved
    assert not same_case(note, "Chest X-ray shows effusion. No cough for three days. Denies fever.", lexicon)  # the negation moved
    assert not same_case("The answer was no. Effusion noted.", "The answer was. No effusion noted.", lexicon)  # a cue ends its sentence


def test_values_strict_by_default_lenient_on_request() -> None:
    """A digit typo is another case by default; ``values: lenient`` merges a value one edit away."""
    typo = NOTE.replace("14.2", "14.3")
    assert _dropped((INSTRUCTION, NOTE), (INSTRUCTION, typo)) == 0
    assert _dropped((INSTRUCTION, NOTE), (INSTRUCTION, typo), DedupConfig(values="lenient")) == 1
    assert _dropped((INSTRUCTION, NOTE), (INSTRUCTION, NOTE.replace("14.2", "41.9")), DedupConfig(values="lenient")) == 0  # two edits: another value
    assert _dropped((INSTRUCTION, NOTE), (INSTRUCTION, SIBLINGS["side"]), DedupConfig(values="lenient")) == 0  # words stay strict


def test_canonical_words() -> None:
    """One normalisation for every comparison: Unicode, case, whitespace, punctuation spacing, numbers, the table."""
    from mediflow.quality.text import canonical_tokens

    lexicon = Lexicon.load()
    texts = ["Pt is a 67 y/o man w/ CAP & HTN, s/p CABG; Na 1,000 (7 .5%) b.i.d. He isn't well.", "PATIENT  is a 67 year old\nman with cap and htn , status post cabg ; na 1000 ( 7.50 percent ) twice daily . he is not well ."]
    tokens = canonical_tokens(pa.array(texts), lexicon.forms)
    first, second = tokens.texts().to_pylist()
    assert first == second == ("patient is a 67 year old man with cap and htn status post cabg na 1000 7.5 percent twice daily he is not well")
    assert tokens.record_hashes()[0] == tokens.record_hashes()[1]
    words, ends = tokens.record_words(0)
    assert [word for word, end in zip(words, ends) if end] == ["cabg", "well"]  # ";" and "." end sentences; "b.i.d."'s own full stop does not
    assert canonical_tokens(pa.array(["\uff21\uff22 \ufb01ne\u200b 7th\u00a0dose"]), lexicon.forms).texts().to_pylist() == ["ab fine 7 dose"]


@pytest.mark.parametrize("kind", sorted(SIBLINGS))
def test_sibling_differing_in_one_fact_is_kept(kind: str) -> None:
    assert _dropped((INSTRUCTION, NOTE), (INSTRUCTION, SIBLINGS[kind])) == 0


@pytest.mark.parametrize("kind", sorted(FACT_DROPPED_WORD_CLOSE_ELSEWHERE))
def test_a_misspelling_must_stand_where_the_word_stood(kind: str) -> None:
    assert _dropped((INSTRUCTION, NOTE), (INSTRUCTION, FACT_DROPPED_WORD_CLOSE_ELSEWHERE[kind])) == 0


def test_siblings_merge_without_the_clinical_check() -> None:
    """What the check is for: the same siblings are merged by text similarity alone."""
    merged = [kind for kind, sibling in SIBLINGS.items() if _dropped((INSTRUCTION, NOTE), (INSTRUCTION, sibling), DedupConfig(clinical=False))]
    assert len(merged) >= len(SIBLINGS) - 1


def test_the_forked_word_check_gives_the_in_process_answers() -> None:
    """``workers`` processes share a batch's word check (forked, from ``parallel_from`` pairs on): the same answer per pair."""
    from mediflow.quality.clinical import same_cases
    from mediflow.quality.text import canonical_tokens

    lexicon = Lexicon.load()
    texts = [NOTE, *COPIES.values(), *SIBLINGS.values()]
    tokens = canonical_tokens(pa.array(texts), lexicon.forms)
    pairs = np.array([[0, other] for other in range(1, len(texts))] * 3)
    alone = same_cases(tokens, pairs, lexicon)
    assert alone[: len(COPIES)].all() and not alone[len(COPIES) : len(texts) - 1].any()  # copies agree, siblings do not (the pairs repeat)
    for workers in (2, 3):
        assert (same_cases(tokens, pairs, lexicon, workers=workers, parallel_from=1) == alone).all()


def test_facts_read_words_units_and_abbreviations() -> None:
    lexicon = Lexicon.load()
    note = text_facts("67 y/o woman, metformin 500 mg b.i.d., no edema of the left leg, HbA1c 7.50, code E11.9", lexicon)
    classes = Counter(lexicon.item(word) for word in note.words.elements())
    assert note.sexes == {"female"}
    assert classes[("numbers", "2")] == 1 and classes[("frequency", "daily")] == 1  # b.i.d. = twice daily
    assert classes[("units", "mg")] == 1 and classes[("units", "year")] == 1  # y/o = year old
    assert classes[("drugs", "metformin")] == 1 and classes[("laterality", "left")] == 1
    assert note.negations == (("no", "edema", "left"),)  # what "no" negates, in its own sentence ("of the" skipped)
    assert {"7.5", "e11.9"} <= set(note.words)  # values canonical: 7.50 is 7.5


def test_values_and_codes_must_be_equal() -> None:
    lexicon = Lexicon.load()
    note = "67 y/o woman, metformin 500 mg b.i.d., no edema of the left leg, HbA1c 7.50, glucose 1,200, code E11.9"
    assert same_case(note, "67-year-old female; Metformin 500 milligrams twice daily. No edema of the left leg. HbA1c 7.5; glucose 1200; E11.9", lexicon)
    for changed in ("E11.9", "E11.8"), ("7.50", "7.05"), ("500 mg", "50 mg"), ("67", "76"), ("1,200", "1,300"):
        assert not same_case(note, note.replace(*changed), lexicon), changed


def test_value_fingerprints_are_order_free_multisets_read_per_text() -> None:
    texts = ["7.5 cm and 5.7 cm", "5.7 cm, then 7.50 cm.", "7.5 cm and 7.5 cm", "glucose 1,200 on day 3", "day 3: glucose 1200", "", None, "no values here", "NO VALUES HERE", "7. 5 cm and 5 .7 cm", "7.5 cm and 57 cm"]
    together = value_fingerprints(pa.array(texts, pa.string()))
    one_by_one = [value_fingerprints(pa.array([text], pa.string()))[0] for text in texts]
    assert together.tolist() == one_by_one  # a batch shares one token dictionary; each text's value is its own
    assert together[0] == together[1] == together[9]  # order-free, 7.50 = 7.5, "7. 5" = "7 .5" = "7.5"
    assert together[0] != together[10]  # digit runs: 5.7 is not 57
    assert together[3] == together[4]  # 1,200 = 1200
    assert together[5] == together[6] == together[7] == together[8] == 0
    lexicon = Lexicon.load()  # the fingerprint reads digit runs; the check reads the values themselves
    assert together[0] == together[2] and not same_case(texts[0], texts[2], lexicon)  # a multiset: 5.7 is not 7.5
    assert same_case(texts[0], texts[9], lexicon) and same_case(texts[0], texts[1], lexicon)


def test_siblings_differing_in_a_value_never_become_candidates() -> None:
    """Values salt the LSH band keys, so only records writing the same values are compared at all."""
    for kind in ("age", "dose", "value", "code"):
        table = pa.table({"id": ["a", "b"], "instruction": [INSTRUCTION] * 2, "input": [NOTE, SIBLINGS[kind]], "task_type": ["summarization"] * 2})
        assert find_duplicates(table, DedupConfig()).details["pair"]["candidate_pairs"] == 0, kind
        assert find_duplicates(table, DedupConfig(clinical=False)).details["pair"]["candidate_pairs"] == 1, kind
    table = pa.table({"id": ["a", "b"], "instruction": [INSTRUCTION] * 2, "input": [NOTE, COPIES["typos"]], "task_type": ["summarization"] * 2})
    assert find_duplicates(table, DedupConfig()).details["pair"]["candidate_pairs"] == 1


def test_a_brand_name_is_its_generic() -> None:
    lexicon = Lexicon.load()
    assert same_case("Started Lipitor 40 mg at night.", "Started atorvastatin 40 mg at night.", lexicon)


def test_a_lexicon_of_your_own(tmp_path: Path) -> None:
    custom = tmp_path / "tokens.yaml"
    custom.write_text("laterality:\n  left: [left, sinistra]\n  right: [right, dextra]\n")
    lexicon = Lexicon.load(custom)
    assert not agree(text_facts("the sinistra kidney", lexicon), text_facts("the dextra kidney", lexicon), lexicon)
    assert DedupConfig(clinical_tokens=str(custom)).clinical_tokens == str(custom)


@pytest.mark.parametrize("content, message", [(None, "cannot read"), ("- a list\n", "not a mapping"), ("organs: [liver]\n", "unknown section")])
def test_a_bad_lexicon_is_a_config_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "tokens.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        DedupConfig(clinical_tokens=str(path))


def test_cli_bad_lexicon_is_one_error_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "instruction": [INSTRUCTION], "input": [NOTE], "output": ["x"], "task_type": ["summarization"], "output_format": ["plain_text"]}), source)
    config = tmp_path / "curate.yaml"
    config.write_text(f"dedup:\n  clinical_tokens: {tmp_path / 'missing.yaml'}\n")
    assert main(["dedup", str(source), str(tmp_path / "out"), "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.yaml" in err[0]
    assert not (tmp_path / "out").exists()


def test_audit_does_not_report_siblings_as_near_duplicates(tmp_path: Path) -> None:
    """The audit's near-duplicate section confirms like the stage: a copy is a duplicate, siblings are not."""
    from mediflow.audit import near_duplicates
    from mediflow.audit.folder import AuditFolder

    documents = [NOTE, COPIES["typos"], *SIBLINGS.values()]
    (tmp_path / "data").mkdir()
    pq.write_table(
        pa.table({"id": [f"r{i}" for i in range(len(documents))], "instruction": [INSTRUCTION] * len(documents), "input": documents, "output": ["x"] * len(documents), "task_type": ["summarization"] * len(documents)}),
        tmp_path / "data" / "part-00000.parquet",
    )
    result = near_duplicates(AuditFolder.open(tmp_path))
    assert result.numbers["near"]["input"] == 2  # the note and its copy, no sibling
    assert result.numbers["siblings_kept_apart"]["input"] >= len(SIBLINGS) - 1
