"""Case mix: which patients and conditions the documents are about (the ``case`` column).

A synthetic set is worth what its cases are worth: this section shows the ICD-10-CM chapter and
block mix of the primary conditions per document category, the age/sex pyramid, the most frequent
conditions, and the share of cases per condition profile against the share the plan asked for
(the plan's items per document type, mapped to profiles by ``taxonomies/cases/assignments.yaml``).
Folders without a ``case`` column (released data, runs made before cases existed) get a "not
available" section.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from mediflow import terminology
from mediflow.audit.folder import AuditFolder
from mediflow.audit.plots import new_figure
from mediflow.audit.result import CheckResult
from mediflow.cases import load_case_book

TITLE = "Case mix: conditions, ages and sexes, profiles"
AGE_BAND = 10


def case_mix(folder: AuditFolder, planned: pd.DataFrame | None = None, taxonomy: Any | None = None, *, top: int = 20) -> CheckResult:
    """The case mix of ``folder``; ``planned`` (task, input_data, planned) gives the profile shares the plan asked for."""
    missing = "the records carry no clinical case (no 'case' values: made before cases, or released data)"
    if "case" not in folder.columns:
        return CheckResult.not_available("case_mix", TITLE, missing)
    chapters: Counter[tuple[str, str]] = Counter()
    blocks: Counter[tuple[str, str]] = Counter()
    pyramid: Counter[tuple[int, str]] = Counter()
    conditions: Counter[str] = Counter()
    descriptions: dict[str, str] = {}
    profiles: Counter[str] = Counter()
    comorbidities = cases = 0
    for table in folder.iter_tables(["case", "document_category"]):
        for case, category in zip(table.column("case").to_pylist(), table.column("document_category").to_pylist()):
            if not case or not case.get("conditions"):
                continue
            cases += 1
            primary = case["conditions"][0]
            code, category = primary["code"], category or "(missing)"
            chapters[(category, _chapter(code))] += 1
            blocks[(category, _block(code))] += 1
            if case.get("age") is not None:  # population-level documents have no single patient
                pyramid[(int(case["age"]) // AGE_BAND * AGE_BAND, case["sex"])] += 1
            conditions[code] += 1
            descriptions[code] = primary["description"]
            profiles[case["profile"]] += 1
            comorbidities += sum(c["role"] == "comorbidity" for c in case["conditions"])
    if not cases:
        return CheckResult.not_available("case_mix", TITLE, missing)

    chapter_table = _shares(chapters, "document_category", "chapter")
    block_table = (
        pd.DataFrame(
            [
                {"document_category": category, "block": block, "cases": count, "share_of_category": count / sum(n for (c, _), n in blocks.items() if c == category)}
                for (category, block), count in sorted(blocks.items(), key=lambda kv: (kv[0][0], -kv[1]))
            ]
        )
        .groupby("document_category", group_keys=False)
        .head(5)
    )
    pyramid_table = pd.DataFrame([{"age_band": f"{band}-{band + AGE_BAND - 1}", "female": pyramid[(band, "female")], "male": pyramid[(band, "male")]} for band in sorted({b for b, _ in pyramid})])
    top_table = pd.DataFrame([{"code": code, "description": descriptions[code], "cases": count, "share": count / cases} for code, count in conditions.most_common(top)])
    profile_table = _profiles_vs_plan(profiles, cases, planned, taxonomy)
    summary = (
        f"{cases} cases: {len(conditions)} distinct primary codes in {len({_category(c) for c in conditions})} categories, "
        f"{comorbidities / cases:.1f} comorbidities a case, {sum(n for (_, s), n in pyramid.items() if s == 'female') / cases:.0%} female"
    )
    return CheckResult(
        key="case_mix",
        title=TITLE,
        summary=summary,
        numbers={
            "cases": cases,
            "distinct_primary_codes": len(conditions),
            "distinct_primary_categories": len({_category(c) for c in conditions}),
            "chapters": {f"{cat}/{ch}": n for (cat, ch), n in chapters.items()},
            "profiles": dict(profiles),
        },
        tables={
            "ICD-10-CM chapter of the primary condition per document category (share)": chapter_table,
            "Top blocks per document category": block_table,
            "Age/sex pyramid": pyramid_table,
            "Most frequent primary conditions": top_table,
            "Cases per profile against the plan": profile_table,
        },
        figure=_plot(chapter_table, pyramid_table, top_table, profile_table),
    )


def _category(code: str) -> str:
    return code[:3]


def _chapter(code: str) -> str:
    return terminology.chapter_of(code) if terminology.is_valid(code) else "(unknown)"


def _block(code: str) -> str:
    return terminology.block_of(code) if terminology.is_valid(code) else "(unknown)"


def _shares(counts: Counter[tuple[str, str]], row: str, column: str) -> pd.DataFrame:
    frame = pd.DataFrame([{row: r, column: c, "cases": n} for (r, c), n in counts.items()])
    table = frame.pivot_table(index=row, columns=column, values="cases", aggfunc="sum", fill_value=0)
    table.columns = [str(c) for c in table.columns]
    table = table[sorted(table.columns, key=_chapter_order)]
    return table.div(table.sum(axis=1), axis=0).round(3).reset_index()


def _chapter_order(name: object) -> tuple[bool, int, str]:
    """Chapters in number order ("2" before "10"), anything else after."""
    text = str(name)
    return (not text.isdigit(), int(text) if text.isdigit() else 0, text)


def _profiles_vs_plan(profiles: Counter[str], cases: int, planned: pd.DataFrame | None, taxonomy: Any | None) -> pd.DataFrame:
    expected: Counter[str] = Counter()
    if planned is not None and taxonomy is not None and len(planned):
        book = load_case_book()
        for document_type, count in planned.groupby("input_data")["planned"].sum().items():
            name = str(document_type)
            if name in taxonomy.document_types:
                expected[book.assignment(name, taxonomy.document_types[name].category).profile] += int(count)
    total = sum(expected.values())
    names = sorted(set(profiles) | set(expected), key=lambda p: -profiles[p])
    return pd.DataFrame(
        [
            {
                "profile": name,
                "cases": profiles[name],
                "share": profiles[name] / cases,
                "planned_share": expected[name] / total if total else None,
            }
            for name in names
        ]
    )


def _plot(chapters: pd.DataFrame, pyramid: pd.DataFrame, top: pd.DataFrame, profiles: pd.DataFrame) -> Any:
    figure = new_figure(14, 10)
    grid = figure.add_gridspec(2, 2)
    heat = figure.add_subplot(grid[0, 0])
    values = chapters.set_index("document_category")
    heat.imshow(values.to_numpy(dtype=float), aspect="auto", cmap="Blues", vmin=0, vmax=1)
    heat.set_xticks(range(len(values.columns)), [str(c) for c in values.columns], fontsize=7)
    heat.set_yticks(range(len(values.index)), list(values.index), fontsize=7)
    heat.set_xlabel("ICD-10-CM chapter of the primary condition")
    heat.set_title("chapter mix per document category")
    ages = figure.add_subplot(grid[0, 1])
    ages.barh(pyramid["age_band"], -pyramid["male"], color="#2b7bba", label="male")
    ages.barh(pyramid["age_band"], pyramid["female"], color="#d95f02", label="female")
    ages.set_xlabel("cases (male left, female right)")
    ages.set_title("age/sex pyramid")
    ages.legend(fontsize=7)
    bars = figure.add_subplot(grid[1, 0])
    labels = [f"{c} {d[:40]}" for c, d in zip(top["code"], top["description"])]
    bars.barh(labels, top["cases"], color="#2b7bba")
    bars.invert_yaxis()
    bars.tick_params(axis="y", labelsize=6)
    bars.set_title("most frequent primary conditions")
    share = figure.add_subplot(grid[1, 1])
    shown = profiles.head(20)
    positions = range(len(shown))
    share.barh([p - 0.2 for p in positions], shown["share"], height=0.4, color="#2b7bba", label="cases")
    share.barh([p + 0.2 for p in positions], shown["planned_share"].fillna(0), height=0.4, color="#bbbbbb", label="plan")
    share.set_yticks(list(positions), list(shown["profile"]), fontsize=7)
    share.invert_yaxis()
    share.set_title("share of cases per profile vs plan")
    share.legend(fontsize=7)
    return figure
