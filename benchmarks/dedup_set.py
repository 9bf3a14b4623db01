"""A near-dedup benchmark set with ground truth: templated clinical notes, same-template siblings, planted copies.

What real generated data has, and what makes near-dedup hard on it:

* **Note types**: eight (discharge summary, radiology report, ED note, progress note, lab report,
  medication list, operative note, clinic letter), each a bank of sentence templates with slots.
* **Shapes**: an original picks a note type, an instruction and a subset of its sentences in an
  order. Half of the originals (``sibling_share``) reuse the shape of a recent original, as a
  teacher reuses one instruction and layout over several documents.
* **Sibling kinds** (how much such a same-shape record shares with its parent's slot values):
  ``template`` (nothing: another patient), ``half`` (about half), ``most`` (all but two or three),
  and ``one-<slot>``: everything but one age, sex, side, dose, negation, value, drug, organ, code
  or finding. Every sibling is a distinct record: it must be kept.
* **Copy kinds** (``duplicate_share`` of all records are planted copies of an original or sibling):
  ``typo`` (letters dropped, swapped, doubled), ``surface`` (case, whitespace, punctuation),
  ``reorder`` (sentences shuffled), ``synonym`` (abbreviations and synonyms: pt, hx, IV, b.i.d.),
  ``words`` (a few non-clinical words changed or dropped), ``mixed`` (reorder + typo + synonym).
  A copy never changes a clinical value: one that did would be another case, not a copy.

The records are shuffled; each carries its true cluster (an original with its copies) and its kind.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from dedup_noise import NOISE_KINDS, NOISES, noise_copier

#: Copies our own generator makes: the kinds of the issue-13 set, then one kind per kind of noise of issue 19's table.
OUR_COPY_KINDS = ("typo", "surface", "reorder", "synonym", "words", "mixed", "whitespace", "case", "swap", "drop")
ONE_SLOT_KINDS = ("age", "sex", "side", "dose", "negation", "value", "drug", "organ", "code", "finding")
SIBLING_KINDS = ("template", "half", "most", *(f"one-{slot}" for slot in ONE_SLOT_KINDS))
#: Copies made by noise libraries we did not write (``benchmarks/dedup_noise.py``).
COPY_KINDS = (*OUR_COPY_KINDS, *NOISE_KINDS)
#: Every record's kind: an original is ``fresh`` or a sibling kind; a copy is a copy kind.
KINDS = ("fresh", *SIBLING_KINDS, *COPY_KINDS)

DRUGS = [
    "metformin",
    "lisinopril",
    "atorvastatin",
    "apixaban",
    "warfarin",
    "furosemide",
    "metoprolol",
    "amlodipine",
    "sertraline",
    "omeprazole",
    "prednisone",
    "ceftriaxone",
    "vancomycin",
    "gabapentin",
    "allopurinol",
    "baclofen",
    "tamoxifen",
    "sacubitril",
    "ivabradine",
    "ranolazine",
    "levetiracetam",
    "spironolactone",
    "clopidogrel",
    "hydroxychloroquine",
    "methotrexate",
    "nitrofurantoin",
    "doxycycline",
    "quetiapine",
    "tramadol",
    "enoxaparin",
]
ORGANS = ["spleen", "liver", "uterus", "pancreas", "thyroid", "prostate", "kidney", "gallbladder", "bladder", "ovary", "adrenal gland", "appendix", "aorta", "testis", "lung"]
FINDINGS = [
    "urinary retention",
    "weight gain",
    "a productive cough",
    "fever and chills",
    "intermittent palpitations",
    "exertional dyspnea",
    "a pruritic rash",
    "bilious vomiting",
    "melena",
    "new confusion",
    "a tremor at rest",
    "night sweats",
    "dysuria",
    "hemoptysis",
    "a syncopal episode",
    "blurred vision",
    "calf tenderness",
    "jaundice",
    "polyuria",
    "a painless lump",
]
DIAGNOSES = [
    "community-acquired pneumonia",
    "heart failure",
    "acute cholecystitis",
    "pyelonephritis",
    "a COPD exacerbation",
    "diabetic ketoacidosis",
    "cellulitis",
    "an ischemic stroke",
    "acute pancreatitis",
    "a pulmonary embolism",
    "sepsis",
    "atrial fibrillation",
    "a small bowel obstruction",
    "gout",
    "hyponatremia",
]
CODES = ["E11.9", "I10", "J18.9", "N39.0", "I48.91", "K35.80", "I21.4", "J44.1", "N17.9", "K85.90", "I50.9", "L03.115", "E87.1", "M10.9", "R55", "A41.9", "I63.9", "K56.609"]
LABS = ["sodium", "potassium", "creatinine", "hemoglobin", "troponin", "lactate", "lipase", "glucose", "bilirubin", "albumin"]
DOSES = ["2.5", "5", "10", "12.5", "20", "25", "40", "50", "100", "250", "500", "1000"]
FREQUENCIES = ["once daily", "twice daily", "three times daily", "at night", "every 8 hours", "every 12 hours"]
SERVICES = ["internal medicine", "cardiology", "general surgery", "the intensive care unit", "neurology", "nephrology"]
PROCEDURES = ["laparoscopic cholecystectomy", "appendectomy", "hernia repair", "knee arthroscopy", "colonoscopy", "thyroidectomy"]

#: Slot -> its kind (what a ``one-<kind>`` sibling changes); slots of one kind are resampled together only in template/half/most.
SLOT_KIND = {
    "age": "age",
    "sex": "sex",
    "side": "side",
    "side2": "side",
    "dose": "dose",
    "dose2": "dose",
    "neg": "negation",
    "neg2": "negation",
    "val": "value",
    "val2": "value",
    "hr": "value",
    "sbp": "value",
    "temp": "value",
    "size": "value",
    "drug": "drug",
    "drug2": "drug",
    "organ": "organ",
    "organ2": "organ",
    "code": "code",
    "code2": "code",
    "finding": "finding",
    "finding2": "finding",
    "dx": "finding",
    "lab": "finding",
    "lab2": "finding",
    "days": "value",
    "freq": "dose",
    "service": "finding",
    "procedure": "finding",
}


def _value(slot: str, rng: random.Random) -> str:
    pools: dict[str, Callable[[], str]] = {
        "age": lambda: str(rng.randint(1, 97)),
        "sex": lambda: rng.choice(["man", "woman"]),
        "side": lambda: rng.choice(["left", "right"]),
        "dose": lambda: rng.choice(DOSES),
        "neg": lambda: rng.choice(["", "no "]),
        "val": lambda: f"{rng.uniform(0.2, 180):.1f}",
        "hr": lambda: str(rng.randint(44, 150)),
        "sbp": lambda: str(rng.randint(80, 200)),
        "temp": lambda: f"{rng.uniform(35.5, 40.5):.1f}",
        "size": lambda: f"{rng.uniform(0.4, 15):.1f}",
        "drug": lambda: rng.choice(DRUGS),
        "organ": lambda: rng.choice(ORGANS),
        "code": lambda: rng.choice(CODES),
        "finding": lambda: rng.choice(FINDINGS),
        "dx": lambda: rng.choice(DIAGNOSES),
        "lab": lambda: rng.choice(LABS),
        "days": lambda: str(rng.randint(2, 21)),
        "freq": lambda: rng.choice(FREQUENCIES),
        "service": lambda: rng.choice(SERVICES),
        "procedure": lambda: rng.choice(PROCEDURES),
    }
    return pools[slot.rstrip("2")]()


NOTE_TYPES: dict[str, list[str]] = {
    "discharge summary": [
        "The patient is a {age}-year-old {sex} admitted with {dx} after presenting with {finding}.",
        "{Pronoun} has a history of {finding2} treated with {drug2} {dose2} mg {freq}.",
        "A CT scan showed a {size} cm lesion in the {side} {organ} with {neg}surrounding inflammation.",
        "{Pronoun} was treated with intravenous {drug} for {days} days and improved steadily.",
        "On discharge the {lab} was {val} mg/dL and the {lab2} was {val2} mmol/L.",
        "There was {neg2}evidence of recurrent {finding} at the time of discharge.",
        "Discharge diagnosis was coded as {code} with {code2} as a secondary diagnosis.",
        "{Pronoun} will continue {drug} {dose} mg {freq} and follow up with {service} in {days} days.",
        "The family was updated and agrees with the discharge plan.",
        "Vital signs at discharge were a heart rate of {hr} and a systolic pressure of {sbp}.",
    ],
    "radiology report": [
        "Ultrasound of the abdomen in a {age}-year-old {sex} with {finding}.",
        "The {organ} measures {size} cm with {neg}enlargement.",
        "There is {neg}free fluid in the {side} paracolic gutter.",
        "The {organ2} is normal in echotexture without focal lesion.",
        "The {side2} kidney shows {neg2}hydronephrosis.",
        "Doppler interrogation shows normal flow with a peak velocity of {val} cm per second.",
        "Comparison is made with the prior study from {days} days ago.",
        "Impression: findings are consistent with {dx}.",
        "Recommend clinical correlation and follow-up imaging with {service} review.",
    ],
    "emergency department note": [
        "{age}-year-old {sex} presenting to the emergency department with {finding} for {days} days.",
        "{Pronoun} reports {finding2} but {neg}chest pain.",
        "Home medications include {drug} {dose} mg {freq} and {drug2} {dose2} mg.",
        "Triage vitals: temperature {temp} C, heart rate {hr}, systolic blood pressure {sbp}.",
        "Examination showed tenderness over the {side} {organ} with {neg2}guarding.",
        "Initial {lab} was {val} and {lab2} was {val2}.",
        "The working diagnosis is {dx} and the encounter was coded {code}.",
        "{Pronoun} was given intravenous fluids and admitted to {service} for further care.",
        "The case was discussed with the attending physician who agrees with the plan.",
    ],
    "progress note": [
        "Hospital day {days} for this {age}-year-old {sex} with {dx}.",
        "Overnight {pronoun} had {finding} which has since settled.",
        "{Pronoun} denies {finding2} and is tolerating a regular diet.",
        "Current medications are {drug} {dose} mg {freq} and {drug2} {dose2} mg.",
        "Heart rate {hr}, systolic pressure {sbp}, temperature {temp} C.",
        "Exam shows {neg}edema of the {side} leg.",
        "This morning the {lab} is {val} mg/dL, down from {val2} yesterday.",
        "Plan: continue current therapy, repeat the {lab2} tomorrow, and review with {service}.",
        "Disposition is pending physical therapy assessment.",
    ],
    "laboratory report": [
        "Laboratory report for a {age}-year-old {sex} seen for {finding}.",
        "The {lab} is {val} mg/dL, which is above the reference range.",
        "The {lab2} is {val2} and within the reference range.",
        "Urinalysis shows {neg}protein and {neg2}blood.",
        "The sample was collected {days} days after starting {drug} {dose} mg {freq}.",
        "Results were communicated to the {service} team by telephone.",
        "Interpretation: the pattern is compatible with {dx} (code {code}).",
        "A repeat panel is suggested in {days} days.",
    ],
    "medication list": [
        "Medication reconciliation for a {age}-year-old {sex} with {dx}.",
        "{drug} {dose} mg by mouth {freq} for {finding}.",
        "{drug2} {dose2} mg by mouth daily, started {days} days ago.",
        "{Pronoun} reports {neg}side effects from the current regimen.",
        "Allergies: {neg2}known drug allergies.",
        "Renal function is stable with a {lab} of {val}.",
        "Diagnosis codes on file are {code} and {code2}.",
        "The list was reviewed with the patient and the pharmacist from {service}.",
    ],
    "operative note": [
        "Operative note: {procedure} on a {age}-year-old {sex} for {dx}.",
        "The {side} {organ} was exposed and inspected carefully.",
        "A {size} cm mass was found on the {side2} side with {neg}invasion of the {organ2}.",
        "Estimated blood loss was {val} mL and there were {neg2}complications.",
        "Antibiotic prophylaxis with {drug} {dose} mg was given before incision.",
        "The specimen was sent to pathology for analysis.",
        "Postoperative plan includes {drug2} {dose2} mg {freq} for pain and review by {service}.",
        "The patient was transferred to recovery in stable condition with a heart rate of {hr}.",
    ],
    "clinic letter": [
        "Dear colleague, thank you for referring this {age}-year-old {sex} with {finding}.",
        "{Pronoun} was diagnosed with {dx} {days} months ago and coded {code}.",
        "Since the last visit {pronoun} has had {neg}episodes of {finding2}.",
        "On examination there is {neg2}swelling of the {side} {organ}.",
        "Blood pressure today is {sbp} systolic with a heart rate of {hr}.",
        "The recent {lab} was {val}.",
        "I have increased {drug} to {dose} mg {freq} and stopped {drug2}.",
        "I will see {pronoun_obj} again in clinic with a repeat {lab2} in {days} weeks.",
        "Kind regards, the {service} team.",
    ],
}
#: Sentences any note type may hold: fresh shapes of one note type share few of them.
GENERAL = [
    "{Pronoun} has a history of {finding2} and {dx}.",
    "Home medications include {drug2}, {drug} and a multivitamin.",
    "{Pronoun} reports that the {finding} started {days} days ago and has been getting worse.",
    "{Pronoun} denies {finding2} but endorses intermittent fatigue.",
    "Vital signs showed a temperature of {temp} C and a heart rate of {hr}.",
    "The {lab2} was elevated at {val2} mmol/L on repeat testing.",
    "A chest radiograph was obtained and was reviewed with radiology.",
    "The working diagnosis is {dx}, with {finding2} also considered.",
    "Consults were placed to {service} given concern for {dx}.",
    "The family was updated at the bedside and agrees with the plan.",
    "Follow up with the primary care physician in {days} days with a repeat {lab}.",
    "Code status was confirmed as full code.",
    "Pain is controlled on the current regimen and {pronoun} is ambulating.",
    "Social history is notable for {neg}tobacco use and occasional alcohol.",
    "The patient was counseled on warning signs of {dx}.",
    "Nursing notes document {neg2}falls during the admission.",
    "Physical therapy recommends discharge home with outpatient services.",
    "A dietitian reviewed the meal plan with the patient.",
    "Oxygen saturation was {val} percent on room air.",
    "The case will be presented at the weekly multidisciplinary meeting.",
    "Advance directives were discussed and documented.",
    "Intake and output were recorded and are balanced.",
    "Skin examination is unremarkable apart from a healed scar on the {side} {organ2}.",
    "Immunizations are up to date according to the records.",
]
INSTRUCTIONS = [
    "Summarize the key findings of this {note} for the receiving team.",
    "List the active problems documented in this {note}.",
    "Extract every medication with dose and frequency from this {note} as JSON.",
    "What is the most likely diagnosis in this {note}, and why?",
    "Assign the ICD-10-CM codes supported by this {note}.",
    "Which results in this {note} are abnormal? Explain their significance.",
]
_SLOT = re.compile(r"\{(\w+)\}")

SYNONYMS = [
    ("patient", "pt"),
    ("history", "hx"),
    ("intravenous", "IV"),
    ("twice daily", "b.i.d."),
    ("three times daily", "t.i.d."),
    ("-year-old", " y/o"),
    ("emergency department", "ED"),
    ("blood pressure", "BP"),
    ("heart rate", "HR"),
    ("examination", "exam"),
    ("follow-up", "f/u"),
    ("follow up", "f/u"),
    ("without", "w/o"),
    ("showed", "demonstrated"),
    ("shows", "demonstrates"),
    ("diagnosis", "dx"),
    ("by mouth", "PO"),
    ("medications", "meds"),
    ("temperature", "temp"),
    ("laboratory", "lab"),
    ("improved", "got better"),
    ("reports", "states"),
    ("colleague", "doctor"),
    ("with", "w/"),
    ("and", "&"),
    ("percent", "%"),
    ("requested", "ordered"),
    ("suggested", "requested"),
    ("status post", "s/p"),
]
#: Non-clinical words a "words" copy may change or drop.
FILLER = {
    "the": "this",
    "was": "is",
    "and": "as well as",
    "carefully": "",
    "steadily": "",
    "further": "",
    "has": "had",
    "current": "present",
    "normal": "unremarkable",
    "agrees": "agreed",
    "stable": "good",
    "recent": "latest",
    "since": "now",
    "thank": "thanks",
    "which": "that",
    "today": "",
    "this": "the",
    "is": "was",
    "repeat": "new",
}

Case = dict[str, str]


@dataclass(frozen=True)
class Shape:
    """What siblings share: note type, instruction, and the sentences in their order (note type's, then general)."""

    note: str
    instruction: int
    sentences: tuple[str, ...]

    def slots(self) -> list[str]:
        found = {s for sentence in self.sentences for s in _SLOT.findall(sentence)}
        return sorted({s for s in found if s in SLOT_KIND} | {"sex"})


def new_shape(rng: random.Random) -> Shape:
    """A note type's opening sentence, some of its other sentences and some general ones, in a random order."""
    note = rng.choice(list(NOTE_TYPES))
    own = NOTE_TYPES[note]
    body = rng.sample(own[1:], rng.randint(3, 5)) + rng.sample(GENERAL, rng.randint(3, 5))
    rng.shuffle(body)
    return Shape(note, rng.randrange(len(INSTRUCTIONS)), (own[0], *body))


def new_case(shape: Shape, rng: random.Random) -> Case:
    return {slot: _value(slot, rng) for slot in shape.slots()}


def _other(slot: str, current: str, rng: random.Random) -> str:
    while (value := _value(slot, rng)) == current:
        pass
    return value


def sibling_case(shape: Shape, parent: Case, kind: str, rng: random.Random) -> Case | None:
    """A same-shape case sharing ``kind``'s amount of ``parent``'s values; ``None`` when the shape has no such slot."""
    case = dict(parent)
    slots = shape.slots()
    if kind == "template":
        return new_case(shape, rng)
    if kind in ("half", "most"):
        changed = rng.sample(slots, max(1, len(slots) // 2) if kind == "half" else min(len(slots), rng.randint(2, 3)))
    else:
        of_kind = [s for s in slots if SLOT_KIND[s] == kind.removeprefix("one-")]
        if not of_kind:
            return None
        changed = [rng.choice(of_kind)]
    for slot in changed:
        case[slot] = _other(slot, case[slot], rng)
    return case


def render(shape: Shape, case: Case) -> tuple[str, str]:
    """The (instruction, document) of ``case`` written on ``shape``."""
    male = case["sex"] == "man"
    values = {**case, "Pronoun": "He" if male else "She", "pronoun": "he" if male else "she", "pronoun_obj": "him" if male else "her"}
    sentences = [sentence.format(**values) for sentence in shape.sentences]
    sentences = [s[0].upper() + s[1:] for s in sentences]
    return INSTRUCTIONS[shape.instruction].format(note=shape.note), " ".join(sentences)


def _typos(text: str, rng: random.Random, count: int) -> str:
    """``count`` typos (a letter dropped, inserted, doubled, or two swapped) in words of five letters or more, or in a unit."""
    words = text.split(" ")
    eligible = [i for i, w in enumerate(words) if (len(w) >= 5 and w.isalpha()) or _UNIT.fullmatch(w)]
    for i in rng.sample(eligible, min(count, len(eligible))):
        word, at = words[i], rng.randrange(1, len(words[i]) - 1)
        edit = rng.choice(("drop", "swap", "double", "insert"))
        words[i] = (
            word[:at] + word[at + 1 :]
            if edit == "drop"
            else word[:at] + word[at + 1] + word[at] + word[at + 2 :]
            if edit == "swap"
            else word[:at] + word[at] + word[at:]
            if edit == "double"
            else word[:at] + rng.choice("aeiourstnl") + word[at:]
        )
    return " ".join(words)


_UNIT = re.compile(r"[a-zA-Z]+/[a-zA-Z]+")


def _reorder(text: str, rng: random.Random) -> str:
    sentences = text.split(". ")
    order = list(range(len(sentences)))
    while len(order) > 1 and order == sorted(order):
        rng.shuffle(order)
    return ". ".join(sentences[i].rstrip(".") for i in order) + "."


def _synonyms(text: str, rng: random.Random, count: int) -> str:
    present = [(old, new) for old, new in SYNONYMS if re.search(_whole(old), text)]
    for old, new in rng.sample(present, min(count, len(present))):
        text = re.sub(_whole(old), new, text, count=1)
    return text


def _whole(phrase: str) -> str:
    return rf"(?<![A-Za-z]){re.escape(phrase)}(?![A-Za-z])"


def _words(text: str, rng: random.Random, count: int) -> str:
    words = text.split(" ")
    eligible = [i for i, w in enumerate(words) if w in FILLER]
    for i in sorted(rng.sample(eligible, min(count, len(eligible))), reverse=True):
        replacement = FILLER[words[i]]
        if replacement:
            words[i] = replacement
        else:
            del words[i]
    return " ".join(words)


def _surface(text: str, rng: random.Random) -> str:
    if rng.random() < 0.3:
        text = text.upper()
    return "  " + text.replace(". ", " .\n").replace(", ", " ,  ") + " "


def _whitespace(text: str, rng: random.Random) -> str:
    """Line breaks and extra spaces inside sentences, a space before some full stops and commas, and inside a decimal ("7 .5")."""
    words = text.split(" ")
    for i in rng.sample(range(len(words) - 1), min(len(words) - 1, rng.randint(2, 6))):
        words[i] += rng.choice(("\n", "  ", " \n", "\n\n   ", "\t"))
    text = " ".join(words)
    if rng.random() < 0.5:
        text = re.sub(r"(\w)([.,]) ", lambda m: m.group(1) + " " + m.group(2) + " " if rng.random() < 0.5 else m.group(0), text)
    if rng.random() < 0.5:
        text = re.sub(r"(\d)\.(\d)", r"\1 .\2", text, count=1)
    return text


def _case(text: str, upper: bool) -> str:
    return text.upper() if upper else text.lower()


def _swap(text: str, rng: random.Random) -> str:
    """Two adjacent sentences swapped."""
    sentences = text.split(". ")
    if len(sentences) < 2:
        return text
    i = rng.randrange(len(sentences) - 1)
    sentences[i], sentences[i + 1] = sentences[i + 1].rstrip("."), sentences[i]
    return ". ".join(sentences).rstrip(".") + "."


def _drop(text: str, rng: random.Random, protected: frozenset[str]) -> str:
    """One word dropped that is not part of a clinical value of the case (which would make another case)."""
    words = text.split(" ")
    eligible = [i for i, w in enumerate(words) if w.isalpha() and w.lower() not in protected and i > 0]
    if eligible:
        del words[rng.choice(eligible)]
    return " ".join(words)


def copy_of(instruction: str, document: str, kind: str, rng: random.Random, protected: frozenset[str] = frozenset()) -> tuple[str, str]:
    """A planted copy of ``kind``: the same case written with typos, other spacing, order or wording.

    ``protected``: the words of the case's values (ages, sexes, sides, negations, drugs, organs, findings...), which a
    dropped-word copy must not drop. Noise kinds (``dedup_noise.NOISE_KINDS``) are made by their library.
    """
    if kind in NOISE_KINDS:
        return noise_copier(kind)(instruction, document, rng, protected)
    if kind == "typo":
        return instruction, _typos(document, rng, rng.randint(2, 4))
    if kind == "surface":
        return instruction.lower(), _surface(document, rng)
    if kind == "reorder":
        return instruction, _reorder(document, rng)
    if kind == "synonym":
        return _synonyms(instruction, rng, 1), _synonyms(document, rng, rng.randint(2, 4))
    if kind == "words":
        return instruction, _words(document, rng, rng.randint(1, 3))
    if kind == "whitespace":
        return instruction, _whitespace(document, rng)
    if kind == "case":
        upper = rng.random() < 0.5
        return _case(instruction, upper), _case(document, upper)
    if kind == "swap":
        return instruction, _swap(document, rng)
    if kind == "drop":
        return instruction, _drop(document, rng, protected)
    return instruction, _synonyms(_typos(_reorder(document, rng), rng, 2), rng, 2)  # mixed


def case_words(case: Case) -> frozenset[str]:
    """The words that state ``case``'s facts (slot values, pronouns, the negation cue): what a copy may misspell but not drop."""
    words = {word.lower() for value in case.values() for word in re.findall(r"[\w.]+", value)}
    return frozenset(words | {"he", "she", "him", "her", "his", "no", "not", "denies", "without"})


def digit_runs(text: str) -> list[str]:
    """The values a text writes: its alphanumeric runs holding a digit, case-, order- and spacing-free ("7 .5" and "7.5" both
    ["5", "7"]; "E11.9" ["9", "e11"]): what a copy must keep to be one ("11" misspelled "11pm" is another value)."""
    return sorted(re.findall(r"[^\W_]*\d[^\W_]*", text.lower()))


SIBLING_WEIGHTS = {"template": 0.3, "half": 0.2, "most": 0.2, **{f"one-{slot}": 0.03 for slot in ONE_SLOT_KINDS}}


def synthetic(
    n: int, duplicate_share: float = 0.1, seed: int = 7, sibling_share: float = 0.5, recent_roots: int = 40, chunk: int = 200_000, noise: str = "ours", stats: dict[str, int] | None = None
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """``n`` shuffled records, their true cluster and their kind (an index into :data:`KINDS`).

    A sibling's parent is one of the last ``recent_roots`` fresh originals, so a shape is written
    for a few patients (1.84 originals a shape on average at the defaults, up to ~10), as a teacher
    reuses one generated instruction and layout over several documents.

    ``noise`` picks who makes the planted copies: ``ours`` (:data:`OUR_COPY_KINDS`) or a noise
    library (``dedup_noise.NOISES``). A copy must write the same numbers as its original (its digit
    runs, order- and spacing-free): one that does not is another case, so it is drawn again (up to
    five times, then left out); ``stats`` counts both.
    """
    rng = random.Random(seed)
    random.seed(seed)  # the noise libraries draw from the global generators
    np.random.seed(seed % 2**32)
    copy_kinds = OUR_COPY_KINDS if noise == "ours" else NOISES[noise]
    counts = stats if stats is not None else {}
    counts.update(redrawn=0, left_out=0)
    kind_index = {kind: i for i, kind in enumerate(KINDS)}
    sibling_kinds, sibling_weights = list(SIBLING_WEIGHTS), list(SIBLING_WEIGHTS.values())
    columns: dict[str, list[str]] = {"instruction": [], "input": [], "task_type": []}
    chunks: list[pa.Table] = []
    clusters: list[int] = []
    kinds: list[int] = []
    recent: list[tuple[Shape, Case]] = []
    copies_per_original = duplicate_share / (1 - duplicate_share)
    clusters_started = 0
    seen: set[bytes] = set()  # every original's text: siblings are distinct cases by construction

    def emit(instruction: str, document: str, shape: Shape, cluster: int, kind: str) -> None:
        columns["instruction"].append(instruction)
        columns["input"].append(document)
        columns["task_type"].append(f"task{shape.instruction}")
        clusters.append(cluster)
        kinds.append(kind_index[kind])
        if len(columns["input"]) == chunk:  # Arrow strings take a third of Python's memory
            chunks.append(pa.table(columns))
            for values in columns.values():
                values.clear()

    while len(clusters) < n:
        case: Case | None = None
        kind = "fresh"
        if recent and rng.random() < sibling_share:
            shape, parent = rng.choice(recent)
            kind = rng.choices(sibling_kinds, sibling_weights)[0]
            case = sibling_case(shape, parent, kind, rng)
        if case is None:
            kind, shape = "fresh", new_shape(rng)
            case = new_case(shape, rng)
        instruction, document = render(shape, case)
        digest = hashlib.blake2b(f"{instruction}\n{document}".encode(), digest_size=8).digest()
        if digest in seen:  # two siblings of one parent can change the same slot to the same value: one case, not two
            continue
        seen.add(digest)
        if kind == "fresh":
            recent = [*recent[-(recent_roots - 1) :], (shape, case)]
        cluster = clusters_started
        clusters_started += 1
        emit(instruction, document, shape, cluster, kind)
        copies = rng.choice([1, 1, 1, 2, 3]) if rng.random() < copies_per_original / 1.6 else 0
        protected = case_words(case)
        for _ in range(copies):
            if len(clusters) < n:
                copy_kind = rng.choice(copy_kinds)
                for _attempt in range(5):
                    copied = copy_of(instruction, document, copy_kind, rng, protected)
                    if digit_runs(copied[1]) == digit_runs(document) and digit_runs(copied[0]) == digit_runs(instruction):
                        emit(*copied, shape, cluster, copy_kind)
                        break
                    counts["redrawn"] += 1
                else:
                    counts["left_out"] += 1
    if columns["input"]:
        chunks.append(pa.table(columns))
    table = pa.concat_tables(chunks)
    table = table.add_column(0, "id", pa.array([f"r{i:08d}" for i in range(n)]))
    order = np.random.default_rng(seed).permutation(n)  # copies are not next to their original
    return table.take(pa.array(order)), np.asarray(clusters, np.int64)[order], np.asarray(kinds, np.int8)[order]
