"""The prescribing model: which drugs a case carries, each for one of its conditions (``drugs.yaml``).

:meth:`Prescriber.choose` gives a case its medications: for the primary condition and then each
comorbidity, agents of the condition's treatment drawn by their first-line weights, never a drug the
patient may not have (a second drug of a class already given unless the pair is standard combination
therapy, a contraindication by a condition or another drug, an age below the label's, a drug avoided
in pregnancy, a hospital-only drug outside hospital); then the hospital's prophylaxis. The suspect of
an adverse reaction, the substance of a poisoning and its antidote come from :meth:`suspect` and
:meth:`antidote`. :meth:`Prescriber.breaks` names every prescribing rule a case breaks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from mediflow import terminology
from mediflow.cases.book import CaseBook, DrugFacts, Treatment, Weighted
from mediflow.cases.case import Medication

#: Setting kinds where hospital-only drugs are never given.
OUTSIDE_HOSPITAL = ("outpatient", "infusion", "remote", "laboratory")
_SKIP_ROLES = ("external_cause", "adverse_effect")


@dataclass(frozen=True)
class Patient:
    """What the prescriber needs to know about the case."""

    age: int
    codes: tuple[str, ...]
    kind: str  # the setting's kind ("other" when unknown)
    setting: str
    antepartum: bool  # pregnant and not delivered
    weeks: int | None
    contraindicated: frozenset[str] = frozenset()  # the drugs the codes rule out (Prescriber.patient fills it)


class Prescriber:
    """The prescribing model of one :class:`CaseBook`."""

    def __init__(self, book: CaseBook) -> None:
        self.book = book
        self.model = book.prescribing
        self.drugs: dict[str, DrugFacts] = self.model.drugs
        self._interactions: dict[frozenset[str], tuple[str, tuple[str, ...]]] = {}
        for rule in self.model.interactions:
            for first in rule.first:
                for second in rule.second:
                    if first != second:
                        self._interactions.setdefault(frozenset((first, second)), (rule.why, rule.allowed))
        self._treatments: dict[tuple[str, str], Treatment | None] = {}
        self._duplicates: dict[tuple[str, str], str | None] = {}
        self._pair_interactions: dict[tuple[str, str], tuple[str, tuple[str, ...]] | None] = {}
        self._by_spec: dict[str, list[Treatment]] = {}
        for treatment in self.model.treatments:
            for spec in treatment.specs:
                self._by_spec.setdefault(spec, []).append(treatment)
        self._contra_by_spec: dict[str, dict[str, str]] = {}
        for contraindication in self.model.contraindications:
            for spec in contraindication.specs:
                for drug in contraindication.drugs:
                    self._contra_by_spec.setdefault(spec, {}).setdefault(drug, contraindication.why)

    # --- lookups ----------------------------------------------------------------------------------

    def kind(self, setting: str) -> str:
        found = self.book.settings.get(setting)
        return found.kind if found else "other"

    def treatment(self, code: str, kind: str) -> Treatment | None:
        """The most specific treatment of ``code`` that applies in a setting of ``kind``."""
        key = (code, kind)
        if key not in self._treatments:
            found = None
            for spec in (code, *terminology.ancestors(code)):  # the most specific spec with a treatment for this kind of setting
                here = [t for t in self._by_spec.get(spec, ()) if not t.where or kind in t.where]
                if here:
                    found = max(here, key=lambda t: bool(t.where))
                    break
            self._treatments[key] = found
        return self._treatments[key]

    @cache  # noqa: B019 - one Prescriber per case data version
    def treats(self, drug: str, code: str) -> bool:
        """Whether any treatment of ``code`` (in any setting) lists ``drug``."""
        return any(drug in treatment.drugs.values for spec in (code, *terminology.ancestors(code)) for treatment in self._by_spec.get(spec, ()))

    def _by_code(self, table: dict[str, Weighted], code: str) -> Weighted | None:
        found = [(len(spec), weights) for spec, weights in table.items() if terminology.covers(spec, code)]
        return max(found, key=lambda item: item[0])[1] if found else None

    def suspects(self, code: str) -> Weighted | None:
        """The drugs a poisoning or adverse-effect code names (its T36-T50 subcategory)."""
        return self._by_code(self.model.suspects, code)

    def antidotes(self, code: str) -> Weighted | None:
        return self._by_code(self.model.antidotes, code)

    def contraindicated(self, drug: str, code: str) -> str | None:
        return self._contraindications(code).get(drug)

    @cache  # noqa: B019
    def _contraindications(self, code: str) -> dict[str, str]:
        """The drugs ``code`` contraindicates, with why."""
        found: dict[str, str] = {}
        for spec in (code, *terminology.ancestors(code)):
            for drug, why in self._contra_by_spec.get(spec, {}).items():
                found.setdefault(drug, why)
        return found

    def interaction(self, first: str, second: str, kind: str) -> str | None:
        key = (first, second)
        if key not in self._pair_interactions:
            self._pair_interactions[key] = self._interactions.get(frozenset(key))
        found = self._pair_interactions[key]
        if found is None or kind in found[1]:
            return None
        return found[0]

    def duplicate(self, first: str, second: str) -> str | None:
        key = (first, second)
        if key not in self._duplicates:
            shared = set(self.drugs[first].classes) & set(self.drugs[second].classes)
            self._duplicates[key] = sorted(shared)[0] if shared and frozenset(key) not in self.model.combinations else None
        return self._duplicates[key]

    def pregnancy_limit(self, drug: str, patient: Patient) -> str | None:
        limit = self.drugs[drug].pregnancy
        if not patient.antepartum or limit is None:
            return None
        if limit == "avoid_from_20_weeks":
            return limit if patient.weeks is None or patient.weeks >= 20 else None
        return limit

    # --- choosing ---------------------------------------------------------------------------------

    def patient(self, age: int, codes: tuple[str, ...], setting: str, antepartum: bool, weeks: int | None) -> Patient:
        """The prescriber's view of a case, with the drugs its conditions rule out worked out once."""
        ruled_out = frozenset().union(*map(self._ruled_out, codes))
        return Patient(age, codes, self.kind(setting), setting, antepartum, weeks, ruled_out)

    @cache  # noqa: B019
    def _ruled_out(self, code: str) -> frozenset[str]:
        return frozenset(self._contraindications(code))

    def allowed(self, drug: str, patient: Patient, chosen: Sequence[Medication], suspect: bool = False) -> bool:
        facts = self.drugs[drug]
        if patient.age < facts.min_age or (facts.hospital and patient.kind in OUTSIDE_HOSPITAL):
            return False
        if not suspect and (drug in patient.contraindicated or (patient.antepartum and self.pregnancy_limit(drug, patient))):
            return False
        duplicates = self._duplicates
        for other in chosen:
            name = other.name
            if name == drug:
                return False
            key = (drug, name)
            shared = duplicates[key] if key in duplicates else self.duplicate(drug, name)
            if shared:
                return False
            if not suspect and other.role != "suspect" and self.interaction(drug, name, patient.kind):
                return False
        return True

    def pick(self, rng: random.Random, weighted: Weighted, patient: Patient, chosen: Sequence[Medication], count: int = 1, suspect: bool = False) -> list[str]:
        """Up to ``count`` drugs of ``weighted``, by weight, without replacement, each allowed with those before it."""
        names = list(weighted.values)
        weights = list(weighted.weights)
        picked: list[str] = []
        taken = list(chosen)
        while names and len(picked) < count:
            total = sum(weights)
            point = rng.random() * total
            i = 0
            for i, weight in enumerate(weights):  # noqa: B007 - i is the pick
                point -= weight
                if point < 0:
                    break
            name = names.pop(i)
            weights.pop(i)
            if self.allowed(name, patient, taken, suspect):
                picked.append(name)
                taken.append(Medication(name, "", "suspect" if suspect else "treatment"))
        return picked

    def choose(self, rng: random.Random, coded: Sequence[tuple[str, str]], patient: Patient, given: Sequence[Medication] = ()) -> tuple[Medication, ...]:
        """The medications of a case: ``given`` (suspects, antidotes) first, then treatments, then prophylaxis."""
        chosen = list(given)
        limit = self.model.limit
        for code, role in coded:
            if len(chosen) >= limit:
                break
            if role in _SKIP_ROLES or code.startswith(("Z3A", "Z37", "Z79")):
                continue
            treatment = self.treatment(code, patient.kind)
            if treatment is None:
                continue
            count = int(treatment.counts.draw(rng))
            if role != "primary":
                if rng.random() > self.model.treated:
                    continue
                count = min(count, 2)
            for name in self.pick(rng, treatment.drugs, patient, chosen, min(count, limit - len(chosen))):
                chosen.append(Medication(name, code, "treatment"))
                adjunct = self.model.adjuncts.get(name)
                if adjunct and len(chosen) < limit and self.allowed(adjunct, patient, chosen):
                    chosen.append(Medication(adjunct, code, "treatment"))
        for rule in self.model.prophylaxis:
            if len(chosen) >= limit:
                break
            applies = patient.kind in rule.where or patient.setting in rule.settings
            if applies and patient.age >= rule.min_age and rng.random() < rule.chance:
                for name in self.pick(rng, rule.drugs, patient, chosen):
                    chosen.append(Medication(name, "", "prophylaxis", rule.why))
        return tuple(chosen)

    # --- what a case breaks ------------------------------------------------------------------------

    def breaks(self, medications: Sequence[Medication], patient: Patient) -> list[str]:
        """Every prescribing rule the medications break for ``patient``, one line each."""
        out: list[str] = []
        codes = patient.codes
        for m in medications:
            if m.name not in self.drugs:
                out.append(f"prescribing_unknown_drug: {m.name} is not a drug of drugs.yaml")
                continue
            adjunct = any(self.model.adjuncts.get(other.name) == m.name and other.indication == m.indication for other in medications)
            if adjunct:
                pass  # given with another drug for the same condition (folate with methotrexate)
            elif m.role == "treatment" and m.indication:
                if m.indication not in codes:
                    out.append(f"prescribing_indication: {m.name} is given for {m.indication}, which the case does not have")
                elif not self.treats(m.name, m.indication):
                    out.append(f"prescribing_indication: {m.name} does not treat {m.indication}")
            elif m.role == "treatment":
                if not any(self.treats(m.name, code) for code in codes):
                    out.append(f"prescribing_indication: {m.name} treats none of {', '.join(codes)}")
            elif m.role in ("suspect", "antidote"):
                table = self.suspects if m.role == "suspect" else self.antidotes
                weighted = table(m.indication) if m.indication in codes else None
                if weighted is None or m.name not in weighted.values:
                    out.append(f"prescribing_{m.role}: {m.name} is not a {m.role} of {m.indication or 'any code of the case'}")
            elif m.role == "prophylaxis" and not any(m.name in rule.drugs.values and (patient.kind in rule.where or patient.setting in rule.settings) for rule in self.model.prophylaxis):
                out.append(f"prescribing_prophylaxis: {m.name} is not prophylaxis in {patient.setting}")
            facts = self.drugs[m.name]
            if patient.age < facts.min_age:
                out.append(f"prescribing_age: {m.name} from age {facts.min_age}, not {patient.age}")
            if facts.hospital and patient.kind in OUTSIDE_HOSPITAL:
                out.append(f"prescribing_setting: {m.name} is hospital-only, not for {patient.setting}")
            if m.role != "suspect":
                limit = self.pregnancy_limit(m.name, patient)
                if limit:
                    out.append(f"prescribing_pregnancy: {m.name} ({limit})")
                hit = next(((code, why) for code in codes if (why := self.contraindicated(m.name, code))), None)
                if hit:
                    out.append(f"prescribing_contraindication: {m.name} with {hit[0]}: {hit[1]}")
        known = [m for m in medications if m.name in self.drugs]
        for i, first in enumerate(known):
            for second in known[i + 1 :]:
                shared = self.duplicate(first.name, second.name)
                if shared:
                    out.append(f"prescribing_duplicate_class: {first.name} and {second.name} ({shared})")
                if "suspect" not in (first.role, second.role):
                    why = self.interaction(first.name, second.name, patient.kind)
                    if why:
                        out.append(f"prescribing_interaction: {first.name} with {second.name}: {why}")
        return out
