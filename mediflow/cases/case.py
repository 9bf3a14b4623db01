"""A clinical case: who the patient is and what they have, as written into the ``case`` column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The roles a condition plays in a case: the reason for the document, a chronic comorbidity, the
#: external cause of an injury, or a code that always accompanies the primary (weeks of gestation).
ROLES: tuple[str, ...] = ("primary", "comorbidity", "external_cause", "companion")


@dataclass(frozen=True)
class Condition:
    """One real billable ICD-10-CM code with its official description and its role in the case."""

    code: str
    description: str
    role: str


@dataclass(frozen=True)
class Case:
    """The patient a document is written about: drawn per plan item, checked against the rules."""

    profile: str
    age: int
    sex: str
    setting: str
    acuity: str
    conditions: tuple[Condition, ...]
    drugs: tuple[str, ...]

    @property
    def primary(self) -> Condition:
        return self.conditions[0]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(condition.code for condition in self.conditions)

    def to_row(self) -> dict[str, Any]:
        """The value of the ``case`` column (:data:`mediflow.records.CASE_TYPE`)."""
        return {
            "profile": self.profile,
            "age": self.age,
            "sex": self.sex,
            "setting": self.setting,
            "acuity": self.acuity,
            "conditions": [{"code": c.code, "description": c.description, "role": c.role} for c in self.conditions],
            "drugs": list(self.drugs),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Case:
        """A case read back from the ``case`` column."""
        return cls(
            profile=row["profile"],
            age=int(row["age"]),
            sex=row["sex"],
            setting=row["setting"],
            acuity=row["acuity"],
            conditions=tuple(Condition(c["code"], c["description"], c["role"]) for c in row["conditions"]),
            drugs=tuple(row.get("drugs") or ()),
        )
