"""The dedup stage on a crafted clinical set: precision and recall, order independence, scope, keeper, idempotence.

The set has known near-duplicates (paraphrase-level edits, reordered sentences, typos, case and
punctuation changes) of five clinical notes, each written for three different patients on the same
template (different findings, values and laterality): those are distinct-but-similar and must stay.
"""

from __future__ import annotations

import hashlib
import random
from itertools import combinations
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mediflow.errors import MediflowError
from mediflow.quality.config import DedupConfig
from mediflow.quality.dedup_stage import run_dedup

TEMPLATES = {
    "summarization": (
        "Summarize this discharge summary for the primary care physician.",
        "The patient is a {age}-year-old {sex} admitted with {dx}. A chest X-ray showed a {side} lower lobe {image}. "
        "{pronoun} was treated with intravenous {drug} for {days} days and improved. Creatinine was {cr} mg/dL on discharge "
        "and the white cell count was {wbc}. {pronoun} was discharged home on oral {drug2}. Follow up with the primary care "
        "physician in {weeks} weeks with a repeat chest X-ray.",
    ),
    "radiology_qa": (
        "What does the impression of this CT report say, and which side is affected?",
        "CT of the head without contrast, {age}-year-old {sex} with sudden {symptom}. Findings: there is an acute infarct in "
        "the {side} {territory} territory measuring {size} cm. There is {bleed}. The ventricles are {ventricles}. The "
        "basal cisterns are patent. Impression: acute {side} {territory} infarct with {mass_effect}. Recommend {followup}.",
    ),
    "lab_interpretation": (
        "Which laboratory results in this note are abnormal? Explain their significance.",
        "{age}-year-old {sex} seen in clinic for {symptom}. Laboratory studies showed sodium {na} mmol/L, potassium {k} "
        "mmol/L, creatinine {cr} mg/dL and hemoglobin {hb} g/dL. The thyroid stimulating hormone was {tsh}. Urinalysis "
        "showed {ua}. Plan: repeat the basic metabolic panel in {days} days and start {drug}.",
    ),
    "medication_extraction": (
        "Extract every medication with dose and frequency from this admission note as JSON.",
        "Admission note. {age}-year-old {sex} with {dx} and a history of {hx}. Home medications include {drug} {dose} mg "
        "daily, {drug2} {dose2} mg twice daily and {drug3} as needed for pain. On admission {drug} was held because of "
        "{reason}. {pronoun} was started on {drug4} {dose3} mg every eight hours. Allergies: {allergy}.",
    ),
    "handover": (
        "Write a short handover note from this progress note for the night team.",
        "Progress note, hospital day {days}. {age}-year-old {sex} with {dx}. Overnight {pronoun_lower} had {event}. Vital "
        "signs: heart rate {hr}, blood pressure {sbp}/{dbp}, oxygen saturation {spo2} percent on {o2}. Exam notable for "
        "{finding} on the {side}. Plan: continue {drug}, check {lab} at midnight, and call the resident if {trigger}.",
    ),
}

#: Three patients per template: same structure, different findings, values and laterality.
PATIENTS = [
    dict(
        age=67,
        sex="man",
        pronoun="He",
        pronoun_lower="he",
        dx="community-acquired pneumonia",
        side="right",
        image="consolidation",
        drug="ceftriaxone",
        drug2="amoxicillin",
        drug3="acetaminophen",
        drug4="heparin",
        days=5,
        cr=1.1,
        wbc=14.2,
        weeks=2,
        symptom="left arm weakness",
        territory="middle cerebral artery",
        size=3.2,
        bleed="no hemorrhage",
        ventricles="normal in size",
        mass_effect="mild mass effect",
        followup="MRI and vascular imaging",
        na=131,
        k=5.8,
        hb=9.1,
        tsh="0.02",
        ua="large blood and no protein",
        hx="atrial fibrillation",
        dose=10,
        dose2=500,
        dose3=5000,
        reason="acute kidney injury",
        allergy="penicillin causing rash",
        event="a fever to 38.9",
        hr=112,
        sbp=96,
        dbp=58,
        spo2=91,
        o2="two liters nasal cannula",
        finding="crackles",
        lab="lactate",
        trigger="the systolic pressure falls below 90",
    ),
    dict(
        age=45,
        sex="woman",
        pronoun="She",
        pronoun_lower="she",
        dx="aspiration pneumonitis",
        side="left",
        image="infiltrate with a small effusion",
        drug="piperacillin-tazobactam",
        drug2="amoxicillin-clavulanate",
        drug3="oxycodone",
        drug4="insulin lispro",
        days=7,
        cr=0.7,
        wbc=18.9,
        weeks=4,
        symptom="aphasia",
        territory="posterior cerebral artery",
        size=1.4,
        bleed="petechial hemorrhagic transformation",
        ventricles="mildly enlarged",
        mass_effect="no midline shift",
        followup="neurology consultation",
        na=144,
        k=3.1,
        hb=13.8,
        tsh="8.4",
        ua="nitrite positive with white cells",
        hx="type 2 diabetes mellitus",
        dose=20,
        dose2=1000,
        dose3=4,
        reason="hypoglycemia",
        allergy="no known drug allergies",
        event="chest pain relieved by nitroglycerin",
        hr=54,
        sbp=178,
        dbp=102,
        spo2=97,
        o2="room air",
        finding="pitting edema",
        lab="troponin",
        trigger="the chest pain recurs",
    ),
    dict(
        age=82,
        sex="man",
        pronoun="He",
        pronoun_lower="he",
        dx="hospital-acquired pneumonia",
        side="right",
        image="cavitary lesion",
        drug="vancomycin",
        drug2="linezolid",
        drug3="tramadol",
        drug4="furosemide",
        days=10,
        cr=2.4,
        wbc=3.1,
        weeks=1,
        symptom="vertigo and ataxia",
        territory="posterior inferior cerebellar artery",
        size=2.1,
        bleed="no hemorrhage",
        ventricles="compressed",
        mass_effect="early hydrocephalus",
        followup="urgent neurosurgical review",
        na=125,
        k=4.4,
        hb=7.2,
        tsh="2.1",
        ua="no abnormality",
        hx="heart failure with reduced ejection fraction",
        dose=40,
        dose2=25,
        dose3=40,
        reason="hypotension",
        allergy="sulfonamides causing hives",
        event="a fall without head strike",
        hr=88,
        sbp=132,
        dbp=74,
        spo2=89,
        o2="four liters by mask",
        finding="a tender swollen calf",
        lab="hemoglobin",
        trigger="the oxygen need rises above six liters",
    ),
]

PARAPHRASES = [
    ("was treated with", "received"),
    ("improved", "got better"),
    ("Follow up with", "See"),
    ("showed", "revealed"),
    ("Recommend", "Suggest"),
    ("Plan:", "The plan is to"),
    ("include", "are"),
    ("notable for", "significant for"),
    ("was held because of", "was stopped due to"),
    ("there is", "we see"),
]


def paraphrase(text: str) -> str:
    """Paraphrase-level edits: up to three phrase substitutions and one dropped adverb."""
    done = 0
    for old, new in PARAPHRASES:
        if old in text and done < 3:
            text = text.replace(old, new, 1)
            done += 1
    return text.replace(" intravenous ", " IV ").replace(" acute ", " ", 1)


def reorder(text: str) -> str:
    """The same sentences in another order (first and last swapped, the middle reversed)."""
    sentences = text.rstrip(".").split(". ")
    return ". ".join([sentences[-1], *reversed(sentences[1:-1]), sentences[0]]) + "."


def typos(text: str, seed: int) -> str:
    """Three character-level typos (a letter dropped or two letters swapped) in words of five letters or more."""
    rng = random.Random(seed)
    words = text.split(" ")
    for index in rng.sample([i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()], 3):
        word = words[index]
        at = rng.randrange(1, len(word) - 2)
        words[index] = word[:at] + word[at + 1] + word[at] + word[at + 2 :] if index % 2 else word[:at] + word[at + 1 :]
    return " ".join(words)


def surface(text: str) -> str:
    """Case, punctuation and whitespace only: an exact duplicate once normalised."""
    return "  " + text.upper().replace(". ", " .\n").replace(",", " ,")


def crafted() -> tuple[pa.Table, dict[str, int]]:
    """The records and their true cluster: originals, their planted near-duplicates, distinct look-alikes."""
    rows, truth = [], {}
    for task, (instruction, template) in TEMPLATES.items():
        for p, patient in enumerate(PATIENTS):
            document = template.format(**patient)
            cluster = len(set(truth.values()))
            variants = {"orig": (instruction, document)}
            if p < 2:  # two of the three patients get planted near-duplicates; the third stays a singleton
                variants |= {
                    "para": (instruction, paraphrase(document)),
                    "reorder": (instruction, reorder(document)),
                    "typos": (instruction, typos(document, seed=p)),
                    "surface": (instruction.lower().rstrip("?.") + " !", surface(document)),
                }
                if p == 0:
                    variants["para+reorder"] = (instruction.replace("this", "the"), reorder(paraphrase(document)))
            for kind, (inst, doc) in variants.items():
                record_id = f"{task}-{p}-{kind}"
                rows.append({"id": record_id, "instruction": inst, "input": doc, "output": f"answer for {record_id}", "task_type": task, "output_format": "plain_text"})
                truth[record_id] = cluster
    return pa.Table.from_pylist(rows), truth


def write(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def clusters_found(out: Path, ids: list[str]) -> dict[str, str]:
    """Each input record's predicted cluster: the kept record it was matched to, or itself when kept."""
    rejects = pq.read_table(out / "rejects.parquet", columns=["id", "match"]).to_pylist()
    matched = {row["id"]: row["match"] for row in rejects}
    return {record_id: matched.get(record_id, record_id) for record_id in ids}


def pairwise(truth: dict[str, int], predicted: dict[str, str]) -> tuple[float, float]:
    """Precision and recall over record pairs: a pair is positive when both records share a cluster."""
    true_pairs = {(a, b) for a, b in combinations(sorted(truth), 2) if truth[a] == truth[b]}
    found_pairs = {(a, b) for a, b in combinations(sorted(predicted), 2) if predicted[a] == predicted[b]}
    together = len(true_pairs & found_pairs)
    return (together / len(found_pairs) if found_pairs else 1.0), together / len(true_pairs)


def kept_ids(out: Path) -> set[str]:
    return set(pq.read_table(out / "data", columns=["id"]).column("id").to_pylist())


def test_precision_and_recall_on_the_crafted_set(tmp_path: Path) -> None:
    table, truth = crafted()
    report = run_dedup(write(table, tmp_path / "in.parquet"), tmp_path / "out")
    precision, recall = pairwise(truth, clusters_found(tmp_path / "out", table.column("id").to_pylist()))
    planted = table.num_rows - len(set(truth.values()))
    print(f"\ncrafted set: {table.num_rows} records, {planted} planted near-duplicates, {len(set(truth.values()))} true clusters; dropped {report.dropped}; pairwise precision {precision:.3f}, recall {recall:.3f}")
    assert precision == 1.0  # no distinct-but-similar note (same template, other patient) is merged
    assert recall == 1.0  # every paraphrase, reordering, typo and surface variant is found
    assert report.dropped == planted
    assert kept_ids(tmp_path / "out") == {f"{task}-{p}-orig" for task in TEMPLATES for p in range(3)}


def test_rejects_name_rule_similarity_and_kept_record(tmp_path: Path) -> None:
    table, _ = crafted()
    run_dedup(write(table, tmp_path / "in.parquet"), tmp_path / "out")
    rejects = {row["id"]: row for row in pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()}
    surface_row, typo_row = rejects["handover-0-surface"], rejects["handover-0-typos"]
    assert (surface_row["stage"], surface_row["rule"], surface_row["score"]) == ("dedup", "exact_duplicate:pair", 1.0)
    assert surface_row["match"] == "handover-0-orig" and "kept handover-0-orig" in surface_row["reason"]
    assert typo_row["rule"] == "near_duplicate:pair" and 0.85 <= typo_row["score"] < 1.0
    assert typo_row["output"] == "answer for handover-0-typos"  # rejects carry the whole record


def test_shuffled_input_gives_the_same_result(tmp_path: Path) -> None:
    table, _ = crafted()
    outcomes = set()
    for seed in range(3):
        order = list(range(table.num_rows))
        random.Random(seed).shuffle(order)
        source = write(table.take(pa.array(order)), tmp_path / f"in-{seed}" / "records.parquet")
        run_dedup(source, tmp_path / f"out-{seed}")
        rejects = pq.read_table(tmp_path / f"out-{seed}" / "rejects.parquet", columns=["id", "match", "rule"]).to_pylist()
        outcomes.add((frozenset(kept_ids(tmp_path / f"out-{seed}")), frozenset(tuple(r.values()) for r in rejects)))
    assert len(outcomes) == 1


def test_scope_within_task_keeps_the_same_text_under_two_tasks(tmp_path: Path) -> None:
    instruction, template = TEMPLATES["summarization"]
    document = template.format(**PATIENTS[0])
    table = pa.table({"id": ["a", "b", "c"], "instruction": [instruction] * 3, "input": [document, reorder(document), document], "task_type": ["summarization", "summarization", "coding"]})
    source = write(table, tmp_path / "in.parquet")
    run_dedup(source, tmp_path / "within")
    run_dedup(source, tmp_path / "across", DedupConfig(scope="across_tasks"))
    assert kept_ids(tmp_path / "within") == {"a", "c"}
    assert kept_ids(tmp_path / "across") == {"a"}


def test_best_scored_record_is_kept(tmp_path: Path) -> None:
    table, truth = crafted()
    quality = [5.0 if record_id.endswith("-typos") else 3.0 for record_id in table.column("id").to_pylist()]
    run_dedup(write(table.append_column("quality", pa.array(quality)), tmp_path / "in.parquet"), tmp_path / "out")
    kept = kept_ids(tmp_path / "out")
    assert {f"{task}-{p}-typos" for task in TEMPLATES for p in (0, 1)} <= kept
    assert {f"{task}-{p}-orig" for task in TEMPLATES for p in (0, 1)}.isdisjoint(kept)
    assert len(kept) == len(set(truth.values()))


def test_keys_instruction_and_input(tmp_path: Path) -> None:
    """``input`` clusters records with the same document whatever their instructions; ``instruction`` the reverse."""
    _, template = TEMPLATES["lab_interpretation"]
    document = template.format(**PATIENTS[1])
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "task_type": ["lab_interpretation"] * 3,
            "instruction": ["Which results are abnormal?", "List the abnormal laboratory values with their units.", "Which results are abnormal?"],
            "input": [document, reorder(document), template.format(**PATIENTS[2])],
        }
    )
    source = write(table, tmp_path / "in.parquet")
    run_dedup(source, tmp_path / "input", DedupConfig(keys=("input",)))
    run_dedup(source, tmp_path / "instruction", DedupConfig(keys=("instruction",)))
    run_dedup(source, tmp_path / "pair", DedupConfig(keys=("pair",)))
    assert kept_ids(tmp_path / "input") == {"a", "c"}
    assert kept_ids(tmp_path / "instruction") == {"a", "b"}
    assert kept_ids(tmp_path / "pair") == {"a", "b", "c"}


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.parquet"))}


def test_rerun_is_idempotent(tmp_path: Path) -> None:
    table, _ = crafted()
    source = write(table, tmp_path / "in.parquet")
    first = run_dedup(source, tmp_path / "out")
    digest = _digest(tmp_path / "out")
    again = run_dedup(source, tmp_path / "out")  # same output folder: replaced, byte for byte the same
    assert _digest(tmp_path / "out") == digest and again.as_dict() == first.as_dict()
    second_pass = run_dedup(tmp_path / "out", tmp_path / "out2")  # deduping the deduped set removes nothing more
    assert second_pass.dropped == 0 and second_pass.kept == first.kept


@pytest.mark.parametrize("config", [DedupConfig(near=False), DedupConfig(exact=False)])
def test_exact_only_and_near_only(tmp_path: Path, config: DedupConfig) -> None:
    table, _ = crafted()
    run_dedup(write(table, tmp_path / "in.parquet"), tmp_path / "out", config)
    rules = set(pq.read_table(tmp_path / "out" / "rejects.parquet", columns=["rule"]).column("rule").to_pylist())
    assert rules == ({"exact_duplicate:pair"} if not config.near else {"near_duplicate:pair"})


def test_empty_input_is_refused_before_writing(tmp_path: Path) -> None:
    empty = pa.table({name: pa.array([], pa.string()) for name in ("id", "instruction", "input", "task_type")})
    with pytest.raises(MediflowError, match="no records"):
        run_dedup(write(empty, tmp_path / "in.parquet"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
