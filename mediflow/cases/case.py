"""A clinical case: who the patient is and what they have, as written into the ``case`` column.

A case is about one patient (``age``, ``sex``, ``setting``, ``acuity``, conditions and medications)
or, for population-level documents (drug labels, guideline excerpts, research abstracts, patient
leaflets), about a topic and a ``population`` ("adults 40-75 with type 2 diabetes mellitus"): then
``age``, ``sex`` and ``acuity`` are ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The roles a condition plays in a case: the reason for the document, a chronic comorbidity, the
#: external cause of an injury, a code that always accompanies the primary (weeks of gestation,
#: outcome of delivery, long-term drug therapy), the obstetric code that carries a condition in a
#: pregnancy, and the drug code (T36-T50, 6th character 5) of an adverse effect.
ROLES: tuple[str, ...] = ("primary", "comorbidity", "external_cause", "companion", "obstetric", "adverse_effect")
#: Why a medication is in a case: it treats one of the case's conditions (``indication`` is that
#: code), it is the suspected cause of an adverse effect or the substance of a poisoning, an antidote
#: to it, or hospital prophylaxis (``indication`` empty).
MEDICATION_ROLES: tuple[str, ...] = ("treatment", "suspect", "antidote", "prophylaxis")


@dataclass(frozen=True)
class Condition:
    """One real billable ICD-10-CM code with its official description, its role and its clinical name."""

    code: str
    description: str
    role: str
    name: str = ""  # what a clinician writes ("type 2 diabetes with diabetic CKD"); the description when empty

    @property
    def clinical_name(self) -> str:
        return self.name or self.description


@dataclass(frozen=True)
class Medication:
    """A real drug (the vocabulary's generic name) and why the case has it."""

    name: str
    indication: str  # the code of the case it treats, causes or reverses; "" for prophylaxis
    role: str = "treatment"
    why: str = ""  # for prophylaxis: what it prevents


@dataclass(frozen=True)
class Case:
    """The patient (or population) a document is written about: drawn per plan item, checked against the rules."""

    profile: str
    age: int | None
    sex: str | None
    setting: str
    acuity: str | None
    conditions: tuple[Condition, ...]
    medications: tuple[Medication, ...] = ()
    population: str = ""  # set for population-level documents, which have no single patient
    age_months: int | None = None  # months of age under 2 years (infants are described in months)

    @property
    def drugs(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.medications)

    @property
    def primary(self) -> Condition:
        return self.conditions[0]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(condition.code for condition in self.conditions)

    @property
    def is_population(self) -> bool:
        return bool(self.population)

    def condition(self, code: str) -> Condition | None:
        return next((c for c in self.conditions if c.code == code), None)

    def to_row(self) -> dict[str, Any]:
        """The value of the ``case`` column (:data:`mediflow.records.CASE_TYPE`)."""
        return {
            "profile": self.profile,
            "age": self.age,
            "sex": self.sex,
            "setting": self.setting,
            "acuity": self.acuity,
            "conditions": [{"code": c.code, "description": c.description, "role": c.role, "name": c.name} for c in self.conditions],
            "drugs": list(self.drugs),
            "medications": [{"name": m.name, "indication": m.indication, "role": m.role, "why": m.why} for m in self.medications],
            "population": self.population or None,
            "age_months": self.age_months,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Case:
        """A case read back from the ``case`` column (older rows: no names, no indications, no population)."""
        medications = tuple(Medication(m["name"], m.get("indication") or "", m.get("role") or "treatment", m.get("why") or "") for m in row.get("medications") or []) or tuple(
            Medication(name, "", "treatment") for name in row.get("drugs") or ()
        )
        return cls(
            profile=row["profile"],
            age=None if row.get("age") is None else int(row["age"]),
            sex=row.get("sex"),
            setting=row["setting"],
            acuity=row.get("acuity"),
            conditions=tuple(Condition(c["code"], c["description"], c["role"], c.get("name") or "") for c in row["conditions"]),
            medications=medications,
            population=row.get("population") or "",
            age_months=row.get("age_months"),
        )
