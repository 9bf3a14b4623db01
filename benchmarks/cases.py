"""Case sampler measures over the full default plan, against today's uniform draw in the same cells.

Part 1 takes every item of the full default plan (every compatible cell, every difficulty) and
draws its case, then counts, independently of the sampler's own redraw loop:

- cases that break a coherence rule (age/sex table and description words, Excludes1, never
  together, one code per category, gestation),
- primary conditions outside their document type's profile,
- external-cause primary conditions in document types whose profile has no injuries,
- distinct primary three-character categories and blocks.

The baseline, measured in the same run on the same items, is what ``generate`` drew before cases
existed: two billable codes uniformly over the three-character categories
(``terminology.sample_billable_codes(2, seed=item.seed)``), the first taken as the primary. It has
no age or sex, so only its code rules can be checked.

Part 2 streams a plan of about ``--items`` items (2.5M by default) and draws every case, in a fresh
child process: the wall time, the time per case and the peak memory above the loaded sampler.

    flock /tmp/mediflow-heavy.lock python benchmarks/cases.py --items 2500000

Part 3 (``--review``) is the clinician-and-coder review: every item of a dry-run plan of every
document type at ``per_cell`` 5 gets its case drawn, and ``case_review.py`` (an independent reviewer
written from the ICD-10-CM Official Guidelines, the tabular notes of ``simple-icd-10-cm``, the CMS MCE
age/sex categories and FDA labels; its tables, ``case_review.yaml``, were written before the sampler
was tuned and are frozen) counts drug problems, coding-guideline violations, pregnancy coding
errors, age/sex edits and document misfits, and compares the sex ratio per condition and the
under-18 share per setting with their published sources. The plan splits in three: ``tune`` (seed 0,
the document types not held out) is what the sampler was tuned on; ``held-out`` is seed 0 on the
held-out document types (about a fifth, chosen by a hash of the name) plus seed 1 on every type,
never looked at while tuning. ``plan`` is every document type at one ``--seed`` (seed 0 is the plan
the issue's review was made on; seed 2 or any other was never drawn while tuning).

    python benchmarks/cases.py --items 0 --review --split tune --examples 5
    python benchmarks/cases.py --items 0 --review --split held-out
    python benchmarks/cases.py --items 0 --review --split plan --seed 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from collections import Counter, defaultdict
from typing import Any


def _part1() -> None:
    from mediflow import terminology
    from mediflow.cases import CaseSampler
    from mediflow.config import load_config
    from mediflow.pipeline.plan import build_plan
    from mediflow.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    sampler = CaseSampler(taxonomy)
    book, rules = sampler.book, sampler.rules
    items = list(build_plan(load_config({}), taxonomy).items())
    started = time.perf_counter()
    cases = [sampler.case_for(item.document_type, item.seed) for item in items]
    seconds = time.perf_counter() - started
    baseline = [terminology.sample_billable_codes(2, seed=item.seed) for item in items]

    def profiles(document_type: str) -> list[Any]:
        assignment = book.assignment(document_type, taxonomy.document_types[document_type].category)
        return [book.profiles[name] for name in assignment.profiles.values]

    def off_profile(document_type: str, code: str) -> bool:
        """Outside every profile the type draws from (a guideline's combination code first-listed counts as off: I12.9 for N18)."""
        return not any(terminology.covers(spec, code) for profile in profiles(document_type) for spec in profile.primary.values)

    def injury_free(document_type: str) -> bool:
        return all(profile.external_causes is None for profile in profiles(document_type))

    def external(code: str) -> bool:
        return terminology.chapter_of(code) == "20"

    def code_rules(codes: list[str]) -> bool:
        return any(rules.pair_breaks(a, b) for i, a in enumerate(codes) for b in codes[i + 1 :])

    ours = {
        "broken": sum(bool(rules.broken(case)) for case in cases),
        "off_profile": sum(off_profile(item.document_type, case.primary.code) for item, case in zip(items, cases)),
        "external_primary": sum(injury_free(item.document_type) and external(case.primary.code) for item, case in zip(items, cases)),
        "categories": len({terminology.category_of(case.primary.code) for case in cases}),
        "blocks": len({terminology.block_of(case.primary.code) for case in cases}),
    }
    base_primary = [codes[0].code for codes in baseline]
    base = {
        "broken": sum(code_rules([c.code for c in codes]) for codes in baseline),
        "off_profile": sum(off_profile(item.document_type, code) for item, code in zip(items, base_primary)),
        "external_primary": sum(injury_free(item.document_type) and external(code) for item, code in zip(items, base_primary)),
        "categories": len({terminology.category_of(code) for code in base_primary}),
        "blocks": len({terminology.block_of(code) for code in base_primary}),
    }
    in_profile = {terminology.category_of(code) for item, code in zip(items, base_primary) if not off_profile(item.document_type, code)}
    n = len(items)
    print(f"full default plan: {n:,} items over {len({i.document_type for i in items})} document types; {seconds / n * 1e6:.0f} us a case")
    print(f"{'measure':58s} {'cases':>12s} {'uniform draw':>14s}")
    print(f"{'cases breaking a coherence rule (age/sex: cases only)':58s} {ours['broken'] / n:12.2%} {base['broken'] / n:14.2%}")
    print(f"{'primary outside its document type profile':58s} {ours['off_profile'] / n:12.2%} {base['off_profile'] / n:14.2%}")
    print(f"{'external-cause primary in a non-injury type':58s} {ours['external_primary'] / n:12.2%} {base['external_primary'] / n:14.2%}")
    print(f"{'distinct primary categories':58s} {ours['categories']:12,d} {base['categories']:14,d}")
    print(f"{'distinct primary categories inside the type profile':58s} {ours['categories']:12,d} {len(in_profile):14,d}")
    print(f"{'distinct primary blocks':58s} {ours['blocks']:12,d} {base['blocks']:14,d}")
    ages = Counter(case.age // 20 * 20 for case in cases if case.age is not None)
    print("age bands of the patients: " + ", ".join(f"{band}-{band + 19}: {ages[band] / n:.0%}" for band in sorted(ages)) + f"; population-level documents {sum(case.age is None for case in cases) / n:.1%}")
    print("cases per profile: " + ", ".join(f"{name} {count}" for name, count in Counter(c.profile for c in cases).most_common(8)) + ", ...")


def held_out(document_type: str) -> bool:
    """About a fifth of the document types, by a hash of the name: never looked at while tuning."""
    return hashlib.sha256(document_type.encode()).digest()[0] % 5 == 0


def _review(split: str, examples: int, plan_seed: int = 0) -> None:
    from case_review import Reviewer, is_pregnancy_case

    from mediflow.cases import CaseSampler
    from mediflow.config import load_config
    from mediflow.pipeline.plan import build_plan
    from mediflow.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    sampler = CaseSampler(taxonomy)
    reviewer = Reviewer()
    items = []
    for seed in (plan_seed,) if split == "plan" else (0, 1):
        for item in build_plan(load_config({"per_cell": 5, "seed": seed}), taxonomy).items():
            part = "tune" if seed == 0 and not held_out(item.document_type) else "held-out"
            if split in (part, "all", "plan"):
                items.append(item)
    rows: list[tuple[str, dict[str, Any], list[Any]]] = []
    for item in items:
        case = sampler.case_for(item.document_type, item.seed).to_row()
        rows.append((item.document_type, case, reviewer.review(case, item.document_type)))
    n = len(rows)
    types = {t for t, _, _ in rows}
    print(f"review of the {split} split: {n:,} cases over {len(types)} document types (per_cell 5; seeds {plan_seed if split == 'plan' else '0' if split == 'tune' else '0-1'})")

    def share(hits: int, total: int) -> str:
        return f"{hits:,} / {total:,} = {hits / total:.2%}" if total else "n/a"

    with_drugs = [(t, c, f) for t, c, f in rows if c.get("drugs")]
    drug_cases = sum(any(x.kind == "drug" for x in f) for _, _, f in with_drugs)
    entries = sum(len(c["drugs"]) for _, c, _ in with_drugs)
    print(f"drug-bearing cases with any drug problem: {share(drug_cases, len(with_drugs))}")
    by_rule: Counter[str] = Counter()
    for _, _, findings in with_drugs:
        for rule in {x.rule for x in findings if x.kind == "drug"}:
            by_rule[rule] += 1
    print("  cases per problem: " + ", ".join(f"{rule} {count / len(with_drugs):.2%}" for rule, count in by_rule.most_common()))
    no_indication = sum(sum(x.rule == "indication" for x in f) for _, _, f in with_drugs)
    print(f"  drug entries without an indication in the case: {share(no_indication, entries)}")
    t2 = [c for _, c, _ in with_drugs if any(x["code"].startswith("E11") for x in c["conditions"])]
    insulin = sum(any(d.lower().startswith(("insulin", "human insulin")) for d in c["drugs"]) for c in t2)
    metformin = sum("metformin" in [d.lower() for d in c["drugs"]] for c in t2)
    glp1 = sum(any(d.lower() in ("semaglutide", "liraglutide", "dulaglutide") for d in c["drugs"]) for c in t2)
    print(f"  type 2 diabetics (n={len(t2)}): on insulin {insulin / max(1, len(t2)):.1%}, on metformin {metformin / max(1, len(t2)):.1%}, on a GLP-1 agonist {glp1 / max(1, len(t2)):.1%}")
    adr = [(c, f) for t, c, f in rows if t == "adverse_drug_reaction_report"]
    named = sum(any(reviewer.suspect(d.lower(), [x["code"] for x in c["conditions"]]) for d in c.get("drugs") or []) for c, _ in adr)
    print(f"  adverse drug reaction reports naming the suspect drug: {share(named, len(adr))}")

    coding_cases = sum(any(x.kind == "coding" for x in f) for _, _, f in rows)
    print(f"cases with a coding-guideline violation: {share(coding_cases, n)}")
    by_rule = Counter()
    for _, _, findings in rows:
        for rule in {x.rule for x in findings if x.kind == "coding"}:
            by_rule[rule] += 1
    print("  cases per rule: " + ", ".join(f"{rule} {count}" for rule, count in by_rule.most_common()))
    pregnancy = [(c, f) for _, c, f in rows if is_pregnancy_case(c)]
    wrong = sum(any(x.kind == "coding" for x in f) for _, f in pregnancy)
    print(f"pregnancy cases with a coding error: {share(wrong, len(pregnancy))}")
    age_sex = sum(any(x.kind == "age_sex" for x in f) for _, _, f in rows)
    print(f"cases breaking an age/sex edit: {share(age_sex, n)}")
    fit = Counter(x.rule for _, _, f in rows for x in f if x.kind == "fit")
    print(f"document and setting misfits: {share(sum(any(x.kind == 'fit' for x in f) for _, _, f in rows), n)}: " + ", ".join(f"{r} {c}" for r, c in fit.most_common(10)))

    epidemiology = reviewer.tables["epidemiology"]
    patients = [(t, c) for t, c, _ in rows if c.get("age") is not None]
    print("sex ratio per condition (primary condition; share female, cases; source; within 10 points):")
    within = measured = 0
    for entry in epidemiology["sex_ratio"]:
        sexes = [c["sex"] for _, c in patients if any(c["conditions"][0]["code"].startswith(spec) for spec in entry["codes"])]
        if len(sexes) < 30:
            print(f"  {'/'.join(entry['codes']):14s} n={len(sexes):4d} (under 30 cases: not measured); source {entry['female']:.0%}")
            continue
        female = sexes.count("female") / len(sexes)
        ok = abs(female - entry["female"]) <= 0.10
        measured += 1
        within += ok
        print(f"  {'/'.join(entry['codes']):14s} n={len(sexes):4d} female {female:5.0%} vs {entry['female']:4.0%} {'ok' if ok else 'OFF'}  ({entry['source']})")
    print(f"  conditions within 10 points: {within} / {measured}")
    young = 0
    for _, c in patients:
        codes = [x["code"] for x in c["conditions"]]
        if any(any(code.startswith(spec.split("-")[0][:3]) and reviewer_covers(spec, code) for spec in e["codes"]) and c["age"] < e["age"] for e in epidemiology["age_floor"] for code in codes):
            young += 1
    print(f"cases carrying a condition of later life below its age floor: {share(young, len(patients))}")
    infants = [c for _, c in patients if c["age"] == 0]
    adult_chronic = sum(any(any(x["code"].startswith(s) for s in epidemiology["not_in_infants"]) for x in c["conditions"]) for c in infants)
    print(f"infants (age 0) carrying a chronic condition not diagnosed in the first year: {share(adult_chronic, len(infants))}")
    for entry in epidemiology["within_category"]:
        drawn = [x["code"] for _, c in patients for x in c["conditions"] if x["code"].startswith(entry["category"])]
        common = sum(any(code.startswith(s) for s in entry["common"]) for code in drawn)
        print(f"  {entry['category']}: {common / max(1, len(drawn)):.0%} of {len(drawn)} codes are {'/'.join(entry['common'])} (at least {entry['least']:.0%}: {entry['source']})")
    kinds: dict[str, list[int]] = defaultdict(list)
    for _, c in patients:
        kinds[reviewer.setting_kind(c["setting"])].append(c["age"])
    print("under-18 share per kind of setting, all document types written there (cases; source):")
    for kind, ages in sorted(kinds.items()):
        source = epidemiology["under_18"].get(kind)
        target = f" vs {source['share']:.0%} ({source['source']})" if source else ""
        print(f"  {kind:10s} {sum(a < 18 for a in ages) / len(ages):6.1%} of {len(ages):,}{target}")
    # the sources count visits and stays: the documents written once per visit or stay compare directly
    visit_notes = {
        "emergency": ("emergency_department_note", "ed_triage_note"),
        "outpatient": ("soap_note", "clinic_visit_dialogue", "after_visit_summary"),
        "inpatient": ("admission_history_and_physical", "discharge_summary", "progress_note"),
    }
    print("under-18 share of the notes written once per visit or stay:")
    for kind, names in visit_notes.items():
        ages_of = [c["age"] for t, c in patients if t in names]
        source = epidemiology["under_18"][kind]
        if ages_of:
            print(f"  {kind:10s} {sum(a < 18 for a in ages_of) / len(ages_of):6.1%} of {len(ages_of):,} ({', '.join(names)}) vs {source['share']:.0%}")
    if examples:
        print("examples:")
        shown: Counter[str] = Counter()
        for document_type, case, findings in rows:
            for finding in findings:
                if shown[finding.rule] < examples:
                    shown[finding.rule] += 1
                    codes = " ".join(x["code"] for x in case["conditions"])
                    print(f"  [{finding.kind}/{finding.rule}] {document_type}: {case.get('age')}{(case.get('sex') or '-')[:1]} {codes} | {', '.join(case.get('drugs') or [])} -> {finding.detail}")


def reviewer_covers(spec: str, code: str) -> bool:
    from case_review import covers

    return covers(spec, code)


def _child(items: int) -> None:
    from mediflow.cases import CaseSampler
    from mediflow.config import load_config
    from mediflow.pipeline.plan import build_plan
    from mediflow.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    sampler = CaseSampler(taxonomy)
    unit = len(build_plan(load_config({"per_cell": 1000}), taxonomy)) / 1000
    plan = build_plan(load_config({"per_cell": max(1, round(items / unit))}), taxonomy)
    for document_type in taxonomy.document_types:  # every profile's draws built before the clock starts
        sampler.case_for(document_type, 0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    cpu = time.process_time()
    count = conditions = 0
    for item in plan.items():
        conditions += len(sampler.case_for(item.document_type, item.seed).conditions)
        count += 1
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"items": count, "conditions": conditions, "seconds": seconds, "cpu": cpu, "extra_mib": (peak - before) / 1024, "peak_mib": peak / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2_500_000, help="plan size of part 2 (0: skip it)")
    parser.add_argument("--review", action="store_true", help="part 3: the independent clinician-and-coder review")
    parser.add_argument("--split", choices=["tune", "held-out", "all", "plan"], default="tune", help="which part of the review plan (default: tune; plan: every type at --seed)")
    parser.add_argument("--seed", type=int, default=0, help="the plan seed of --split plan (default 0, the issue's review plan)")
    parser.add_argument("--examples", type=int, default=0, help="print up to this many findings per rule")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child)
        return
    if args.review:
        _review(args.split, args.examples, args.seed)
        if not args.items:
            return
    _part1()
    if args.items:
        out = subprocess.run([sys.executable, __file__, "--child", str(args.items)], check=True, capture_output=True, text=True).stdout
        result = json.loads(out)
        print(
            f"sampling {result['items']:,} cases: {result['seconds']:.0f} s wall, {result['cpu']:.0f} s CPU ({result['seconds'] / result['items'] * 1e6:.0f} us a case, "
            f"{result['conditions'] / result['items']:.2f} conditions a case), +{result['extra_mib']:.1f} MiB above the loaded sampler "
            f"(peak RSS {result['peak_mib']:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
