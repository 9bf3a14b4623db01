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
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import Counter


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

    def off_profile(document_type: str, code: str) -> bool:
        profile = book.profiles[sampler.profile_name(document_type)]
        return not any(terminology.covers(spec, code) for spec in profile.primary.values)

    def injury_free(document_type: str) -> bool:
        return book.profiles[sampler.profile_name(document_type)].external_causes is None

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
    ages = Counter(case.age // 20 * 20 for case in cases)
    print("age bands of the cases: " + ", ".join(f"{band}-{band + 19}: {ages[band] / n:.0%}" for band in sorted(ages)))
    print("cases per profile: " + ", ".join(f"{name} {count}" for name, count in Counter(c.profile for c in cases).most_common(8)) + ", ...")


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
    count = conditions = 0
    for item in plan.items():
        conditions += len(sampler.case_for(item.document_type, item.seed).conditions)
        count += 1
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"items": count, "conditions": conditions, "seconds": seconds, "extra_mib": (peak - before) / 1024, "peak_mib": peak / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2_500_000, help="plan size of part 2 (0: skip it)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child)
        return
    _part1()
    if args.items:
        out = subprocess.run([sys.executable, __file__, "--child", str(args.items)], check=True, capture_output=True, text=True).stdout
        result = json.loads(out)
        print(
            f"sampling {result['items']:,} cases: {result['seconds']:.0f} s ({result['seconds'] / result['items'] * 1e6:.0f} us a case, "
            f"{result['conditions'] / result['items']:.2f} conditions a case), +{result['extra_mib']:.1f} MiB above the loaded sampler "
            f"(peak RSS {result['peak_mib']:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
