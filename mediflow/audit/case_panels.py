"""The clinical cases seen as a clinician and a coder would: per document type, rules broken, sex and drugs per condition.

Four sections over the ``case`` column (folders without cases get "not available"):

- :func:`document_type_cases`: per document type, who the patients are (median age, under-18 and
  female shares, settings, acuity), what they have (the top primary conditions), whether they carry
  drugs, and, on an evenly spaced sample, the share of documents that mention their primary
  condition (the ``case_mentions`` filter's matcher).
- :func:`rule_violations`: every case checked again with the case rules (``Rules.broken`` of
  :mod:`mediflow.cases.rules`, whatever rules it reports: age/sex edits, Excludes1, gestation,
  guideline and prescribing rules), counted per rule, with examples.
- :func:`sex_by_condition`: the female share of the cases per primary condition category.
- :func:`drugs_by_condition`: per primary condition category, the share of cases with drugs, drugs a
  case, and the most frequent drugs.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from mediflow import terminology
from mediflow.audit.folder import AuditFolder
from mediflow.audit.plots import bounded, new_figure
from mediflow.audit.result import CheckResult
from mediflow.cases import Case, load_case_book
from mediflow.cases.mentions import MentionMatcher
from mediflow.cases.rules import Rules
from mediflow.errors import MediflowError

NO_CASES = "the records carry no clinical case (no 'case' values: made before cases, or released data)"
#: Cases per condition category below which a share is not shown in the plots (too few to read).
MIN_CASES_PLOTTED = 5
ADULT_AGE = 18


def _cases(folder: AuditFolder, columns: tuple[str, ...] = ()) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every record's case (with at least one condition) and the record's ``columns``."""
    if "case" not in folder.columns:
        return
    for table in folder.iter_tables(["case", *columns]):
        rows = table.to_pylist()
        for row in rows:
            case = row.pop("case")
            if case and case.get("conditions"):
                yield case, row


def _drugs(case: dict[str, Any]) -> list[str]:
    """The case's drug names (``medications``; older rows: ``drugs``)."""
    return [m["name"] for m in case.get("medications") or []] or list(case.get("drugs") or [])


def _category(code: str) -> str:
    return code[:3]


def _category_name(category: str) -> str:
    return terminology.description(category) if terminology.is_valid(category) else "(unknown)"


def document_type_cases(folder: AuditFolder, *, mention_sample: int = 2_000, taxonomy: str | Path | None = None) -> CheckResult:
    """Per document type: records, ages, sexes, settings, acuity, top primaries, drugs, and the primary mentioned (sample)."""
    title = "Cases per document type"
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case, row in _cases(folder, ("input_data",)):
        groups[row["input_data"] or "(missing)"].append(case)
    if not groups:
        return CheckResult.not_available("case_document_types", title, NO_CASES)
    mentioned = _mentioned_primary(folder, mention_sample, taxonomy)
    rows = []
    for document_type, cases in sorted(groups.items()):
        ages = [int(c["age"]) for c in cases if c.get("age") is not None]  # population-level documents have no patient
        sexes = [c["sex"] for c in cases if c.get("sex")]
        primaries = Counter(c["conditions"][0]["code"] for c in cases)
        settings = Counter(c["setting"] for c in cases)
        acuities = Counter(c["acuity"] for c in cases)
        hits = mentioned.get(document_type, [])
        rows.append(
            {
                "document_type": document_type,
                "cases": len(cases),
                "population_level": sum(bool(c.get("population")) for c in cases),
                "median_age": statistics.median(ages) if ages else None,
                "under_18": sum(a < ADULT_AGE for a in ages) / len(ages) if ages else None,
                "female": sum(sex == "female" for sex in sexes) / len(sexes) if sexes else None,
                "settings": ", ".join(f"{name} {n / len(cases):.0%}" for name, n in settings.most_common(3)),
                "acuity": ", ".join(f"{name} {n / len(cases):.0%}" for name, n in acuities.most_common(3)),
                "top_primary": "; ".join(f"{code} ({n})" for code, n in primaries.most_common(3)),
                "with_drugs": sum(bool(_drugs(c)) for c in cases) / len(cases),
                "primary_mentioned": sum(hits) / len(hits) if hits else None,
                "mention_sample": len(hits),
            }
        )
    table = pd.DataFrame(rows)
    sampled = table["mention_sample"].sum()
    share = (table["primary_mentioned"].fillna(0) * table["mention_sample"]).sum() / sampled if sampled else None
    summary = f"{len(table)} document types; under-18 share ranges {table['under_18'].min():.0%}-{table['under_18'].max():.0%}"
    if table["population_level"].sum():
        summary += f"; {int(table['population_level'].sum())} population-level cases (no patient)"
    if share is not None:
        summary += f"; documents that mention their primary condition: {share:.0%} of a sample of {sampled}"
    figure = new_figure(12, bounded(0.18 * len(table), 4, 30))
    axes = figure.add_subplot(1, 1, 1)
    positions = range(len(table))
    axes.barh([p - 0.2 for p in positions], table["under_18"].fillna(0), height=0.4, color="#d95f02", label="under 18")
    axes.barh([p + 0.2 for p in positions], table["female"].fillna(0), height=0.4, color="#2b7bba", label="female")
    axes.set_yticks(list(positions), list(table["document_type"]), fontsize=6)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_title("share of cases under 18 and female, per document type")
    axes.legend(fontsize=7)
    return CheckResult(
        key="case_document_types",
        title=title,
        summary=summary,
        numbers={"document_types": len(table), "primary_mentioned": share, "mention_sample": int(sampled)},
        tables={"Cases per document type": table},
        figure=figure,
    )


def _mentioned_primary(folder: AuditFolder, sample: int, taxonomy: str | Path | None) -> dict[str, list[bool]]:
    """Document type -> whether each sampled document mentions its case's primary condition."""
    if sample <= 0 or "input" not in folder.columns:
        return {}
    matcher = MentionMatcher.for_taxonomy(taxonomy)
    found: dict[str, list[bool]] = defaultdict(list)
    frame = folder.sample(["case", "input", "input_data"], sample)
    for case, text, document_type in zip(frame["case"], frame["input"], frame["input_data"]):
        conditions = case.get("conditions") if isinstance(case, dict) else None  # pandas gives a list column as an array
        if conditions is None or len(conditions) == 0 or not isinstance(text, str):
            continue
        primary = conditions[0]["code"]
        found[document_type or "(missing)"].append(bool(matcher.mentioned(text, [primary])))
    return found


def rule_violations(folder: AuditFolder, *, taxonomy: str | Path | None = None, examples: int = 20) -> CheckResult:
    """Every case checked with the case rules of ``taxonomy``'s case book (the built-in one by default)."""
    title = "Case rule violations"
    try:
        rules = Rules(load_case_book(taxonomy))
    except MediflowError as exc:
        return CheckResult.not_available("case_rules", title, f"the case rules cannot be loaded: {exc}")
    per_rule: Counter[str] = Counter()
    per_type: dict[str, Counter[str]] = defaultdict(Counter)  # document type -> cases breaking each rule
    breaking_per_type: Counter[str] = Counter()  # document type -> cases breaking any rule
    shown: list[dict[str, Any]] = []
    cases = broken = 0
    for row_case, row in _cases(folder, ("id", "input_data")):
        cases += 1
        try:
            lines = rules.broken(Case.from_row(row_case))
        except (KeyError, ValueError, MediflowError) as exc:
            lines = [f"unreadable: {exc}"]
        if not lines:
            continue
        broken += 1
        names = {line.split(":", 1)[0] for line in lines}
        per_rule.update(names)
        per_type[row["input_data"] or "(missing)"].update(names)
        breaking_per_type[row["input_data"] or "(missing)"] += 1
        if len(shown) < examples:
            codes = ", ".join(c["code"] for c in row_case["conditions"])
            patient = row_case.get("population") or f"{row_case.get('age')} {row_case.get('sex')}"
            shown.append({"id": row["id"], "document_type": row["input_data"], "patient": patient, "codes": codes, "broken": "; ".join(lines)})
    if not cases:
        return CheckResult.not_available("case_rules", title, NO_CASES)
    by_rule = pd.DataFrame([{"rule": name, "cases": n, "share": n / cases} for name, n in per_rule.most_common()], columns=["rule", "cases", "share"])
    by_type = pd.DataFrame(
        [{"document_type": t, "cases_breaking": breaking_per_type[t], **dict(c)} for t, c in sorted(per_type.items(), key=lambda kv: (-breaking_per_type[kv[0]], kv[0]))],
        columns=["document_type", "cases_breaking", *per_rule],
    )
    by_type[list(per_rule)] = by_type[list(per_rule)].fillna(0).astype(int)  # a rule a document type does not break: 0 cases
    summary = f"{broken} of {cases} cases ({broken / cases:.2%}) break a case rule"
    if per_rule:
        summary += "; most often " + ", ".join(f"{name} ({n})" for name, n in per_rule.most_common(3))
    figure = None
    if len(by_rule):
        figure = new_figure(10, bounded(0.35 * len(by_rule), 2.5, 10))
        axes = figure.add_subplot(1, 1, 1)
        axes.barh(by_rule["rule"], by_rule["cases"], color="#c0392b")
        axes.invert_yaxis()
        axes.set_xlabel("cases breaking the rule")
        axes.set_title("case rule violations")
    return CheckResult(
        key="case_rules",
        title=title,
        summary=summary,
        numbers={"cases": cases, "broken": broken, "by_rule": dict(per_rule)},
        tables={"Cases breaking each rule": by_rule, "Rule violations per document type": by_type, "Examples": pd.DataFrame(shown)},
        figure=figure,
    )


def sex_by_condition(folder: AuditFolder, *, top: int = 40) -> CheckResult:
    """The female share of the cases per primary condition category (three-character ICD-10-CM category)."""
    title = "Sex ratio per condition"
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for case, _ in _cases(folder):
        if case.get("sex"):  # population-level documents have no patient
            counts[_category(case["conditions"][0]["code"])][case["sex"]] += 1
    if not counts:
        return CheckResult.not_available("case_sex", title, NO_CASES)
    rows = [
        {
            "category": category,
            "condition": _category_name(category),
            "cases": sum(c.values()),
            "female": c["female"],
            "male": c["male"],
            "female_share": c["female"] / sum(c.values()),
        }
        for category, c in counts.items()
    ]
    table = pd.DataFrame(rows).sort_values(["cases", "category"], ascending=[False, True]).reset_index(drop=True)
    plotted = table[table["cases"] >= MIN_CASES_PLOTTED].head(top)
    one_sex = table[(table["cases"] >= MIN_CASES_PLOTTED) & table["female_share"].isin([0.0, 1.0])]
    summary = f"{len(table)} primary condition categories; {len(one_sex)} with {MIN_CASES_PLOTTED}+ cases are all one sex"
    figure = _category_bars(plotted, "female_share", "female share of the cases", "#d95f02", share=True)
    return CheckResult(
        key="case_sex",
        title=title,
        summary=summary,
        numbers={"categories": len(table), "one_sex_categories": len(one_sex)},
        tables={"Female share per primary condition category": table},
        figure=figure,
    )


def drugs_by_condition(folder: AuditFolder, *, top: int = 40, drugs_shown: int = 5) -> CheckResult:
    """Per primary condition category: cases, share with drugs, drugs a case, the most frequent drugs."""
    title = "Drugs per condition"
    cases_per: Counter[str] = Counter()
    with_drugs: Counter[str] = Counter()
    drug_count: Counter[str] = Counter()
    drugs_per: dict[str, Counter[str]] = defaultdict(Counter)
    for case, _ in _cases(folder):
        category = _category(case["conditions"][0]["code"])
        drugs = _drugs(case)
        cases_per[category] += 1
        with_drugs[category] += bool(drugs)
        drug_count[category] += len(drugs)
        drugs_per[category].update(drugs)
    if not cases_per:
        return CheckResult.not_available("case_drugs", title, NO_CASES)
    rows = [
        {
            "category": category,
            "condition": _category_name(category),
            "cases": n,
            "with_drugs": with_drugs[category] / n,
            "drugs_a_case": drug_count[category] / n,
            "top_drugs": ", ".join(f"{drug} ({k})" for drug, k in drugs_per[category].most_common(drugs_shown)),
        }
        for category, n in cases_per.items()
    ]
    table = pd.DataFrame(rows).sort_values(["cases", "category"], ascending=[False, True]).reset_index(drop=True)
    total = sum(cases_per.values())
    distinct = len({drug for c in drugs_per.values() for drug in c})
    summary = f"{sum(with_drugs.values()) / total:.0%} of {total} cases carry drugs ({sum(drug_count.values()) / total:.1f} a case, {distinct} distinct drugs)"
    plotted = table[table["cases"] >= MIN_CASES_PLOTTED].head(top)
    figure = _category_bars(plotted, "drugs_a_case", "drugs a case", "#2b7bba")
    return CheckResult(
        key="case_drugs",
        title=title,
        summary=summary,
        numbers={"cases": total, "with_drugs": sum(with_drugs.values()), "distinct_drugs": distinct},
        tables={"Drugs per primary condition category": table},
        figure=figure,
    )


def _category_bars(plotted: pd.DataFrame, column: str, label: str, color: str, share: bool = False) -> Any:
    """One bar of ``column`` per condition category (named, with its case count); None when nothing is plotted."""
    if not len(plotted):
        return None
    figure = new_figure(10, bounded(0.22 * len(plotted), 3, 14))
    axes = figure.add_subplot(1, 1, 1)
    axes.barh([f"{c} {n[:40]} (n={k})" for c, n, k in zip(plotted["category"], plotted["condition"], plotted["cases"])], plotted[column], color=color)
    if share:
        axes.axvline(0.5, color="#888888", linewidth=0.8)
        axes.set_xlim(0, 1)
    axes.invert_yaxis()
    axes.tick_params(axis="y", labelsize=6)
    axes.set_xlabel(label)
    axes.set_title(f"{label} per primary condition category ({MIN_CASES_PLOTTED}+ cases)")
    return figure
