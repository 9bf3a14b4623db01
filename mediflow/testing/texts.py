"""Deterministic plain-text answers that read like short clinical text.

The test teacher answers plain-text requests with a few sentences assembled from the prompt's
hash, plus content words taken from the prompt itself, so that answers differ across prompts the
way real ones do (length, wording, numbers) and downstream text filters and dedup behave as they
would on real data, not on one repeated string. Like a real teacher following the document prompt,
it names the main problem of the clinical case the prompt gives.
"""

from __future__ import annotations

import hashlib
import re

_OPENINGS = (
    "{age}-year-old {sex} presenting with {finding} for {days} days.",
    "Patient is a {age}-year-old {sex} seen for {finding}, onset {days} days ago.",
    "{sex_cap}, {age}, admitted with {finding} after {days} days of symptoms.",
    "Follow-up visit: {age}-year-old {sex} with a history of {history}.",
)
_MIDDLES = (
    "Vitals: BP {sys}/{dia} mmHg, HR {hr} bpm, SpO2 {spo2}% on room air, temperature {temp} C.",
    "Labs notable for hemoglobin {hb} g/dL and creatinine {cr} mg/dL.",
    "Examination showed {exam}; no focal neurological deficit.",
    "Past medical history includes {history}; current medications include {drug} {dose} mg daily.",
    "Imaging reported {imaging}.",
    "The assessment considered {finding} in the context of {history}.",
)
_CLOSINGS = (
    "Plan: continue {drug}, repeat labs in {days} days and review in clinic.",
    "Discharged home in stable condition with instructions to return if symptoms worsen.",
    "Referred to {service} for further evaluation; patient agreed with the plan.",
    "Counselled on warning signs; follow-up arranged with primary care in {weeks} weeks.",
)
_FINDINGS = ("chest pain", "shortness of breath", "productive cough", "abdominal pain", "fatigue", "dizziness", "lower-extremity swelling", "fever and chills", "headache", "palpitations", "polyuria")
_HISTORY = ("type 2 diabetes", "hypertension", "COPD", "atrial fibrillation", "chronic kidney disease stage 3", "asthma", "hyperlipidemia", "heart failure with reduced ejection fraction", "hypothyroidism")
_DRUGS = ("metformin", "lisinopril", "atorvastatin", "apixaban", "furosemide", "levothyroxine", "amlodipine")
_EXAMS = ("bibasilar crackles", "mild pitting edema", "a regular rhythm without murmurs", "a soft, non-tender abdomen", "expiratory wheezing", "clear lungs bilaterally")
_IMAGING = ("no acute cardiopulmonary process", "a small right pleural effusion", "mild cardiomegaly", "a 6 mm pulmonary nodule", "no evidence of obstruction")
_SERVICES = ("cardiology", "nephrology", "pulmonology", "endocrinology", "gastroenterology")
_WORD = re.compile(r"[A-Za-z][a-z]{5,}")
_CASE_PRIMARY = re.compile(r"^- (.+?) \(ICD-10-CM [0-9A-Z.]+\) - the main problem", re.MULTILINE)


def clinical_text(prompt: str, digest: bytes | None = None) -> str:
    """A short clinical-looking paragraph, the same for the same prompt."""
    digest = digest or hashlib.sha256(prompt.encode("utf-8")).digest()
    numbers = iter(digest * 4)

    def pick(options: tuple[str, ...]) -> str:
        return options[next(numbers) % len(options)]

    fields = {
        "age": 18 + next(numbers) % 75,
        "sex": pick(("male", "female")),
        "days": 1 + next(numbers) % 14,
        "weeks": 1 + next(numbers) % 6,
        "finding": pick(_FINDINGS),
        "history": pick(_HISTORY),
        "drug": pick(_DRUGS),
        "dose": (1 + next(numbers) % 20) * 5,
        "sys": 100 + next(numbers) % 70,
        "dia": 55 + next(numbers) % 40,
        "hr": 55 + next(numbers) % 60,
        "spo2": 88 + next(numbers) % 12,
        "temp": f"{36.0 + (next(numbers) % 30) / 10:.1f}",
        "hb": f"{8.0 + (next(numbers) % 80) / 10:.1f}",
        "cr": f"{0.6 + (next(numbers) % 30) / 10:.1f}",
        "exam": pick(_EXAMS),
        "imaging": pick(_IMAGING),
        "service": pick(_SERVICES),
    }
    fields["sex_cap"] = str(fields["sex"]).capitalize()
    middle_count = 2 + next(numbers) % 3
    start = next(numbers)
    middles = [_MIDDLES[(start + i) % len(_MIDDLES)] for i in range(middle_count)]
    sentences = [pick(_OPENINGS), *middles, pick(_CLOSINGS)]
    text = " ".join(sentence.format(**fields) for sentence in sentences)
    primary = _CASE_PRIMARY.search(prompt)
    if primary:
        text += f" Assessment: {primary.group(1)}."
    topic = sorted(set(_WORD.findall(prompt)), key=lambda w: hashlib.md5(w.encode()).digest())[:3]
    if topic:
        text += " Note addresses: " + ", ".join(word.lower() for word in topic) + "."
    return text
