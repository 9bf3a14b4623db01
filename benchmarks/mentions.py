"""The mention filter on hand-labelled notes: precision and recall, per part of the split and per phenomenon.

The yardstick is ``benchmarks/data/mentions/notes.yaml``: 150 short clinical notes written and
labelled by hand before the matcher was tuned, then frozen (its README defines what counts as a
mention and how the notes are split into a dev and a held-out part). Two measures:

- **primary**: the filter's decision. Positive: the note mentions its case's primary condition
  (the record is kept). Precision: of the notes the matcher keeps, the share that do; recall: of
  the notes that do, the share it keeps.
- **codes**: every (note, case code) pair: does the note mention that code?

The baseline, measured in the same run on the same notes, is the matcher of the commit that froze
the set (its ``mediflow/cases/mentions.py`` and ``taxonomies/cases/synonyms.yaml``, read with
``git show``), i.e. the matcher before this work.

A yardstick we did not write: ``--negspacy`` reads every name the current matcher finds with
negspacy's NegEx (``pip install -e '.[bench]'``: spaCy's blank English pipeline and the library's
``en_clinical`` termset, no model download) instead of our context rules, and prints that
matcher's precision and recall and how often the two agree that a name is negated.

    python benchmarks/mentions.py              # both matchers, every part and phenomenon
    python benchmarks/mentions.py --errors     # and the current matcher's errors on the dev part
    python benchmarks/mentions.py --negspacy   # and NegEx's negation decisions on the same names
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).resolve().parent / "data" / "mentions"
ROOT = Path(__file__).resolve().parent.parent
#: The commit that froze the labelled set; its matcher is the baseline.
FROZEN = (DATA / "FROZEN").read_text().strip() if (DATA / "FROZEN").is_file() else None
SPLIT_SALT = "mediflow-mentions-v1:"
HELD_OUT_SHARE = 0.3
PHENOMENA = (
    "affirmed", "abbreviation", "ambiguous_abbreviation", "negation", "lay_term", "comorbidity_only", "family_history", "historical",
    "hedged", "hypothetical", "misspelling", "related_finding", "not_named", "section_header", "code", "dialogue", "population",
)  # fmt: skip

Mentioned = Callable[[str, list[str]], list[str]]


@dataclass(frozen=True)
class Note:
    id: str
    document_type: str
    codes: tuple[str, ...]
    mentioned: frozenset[str]
    phenomena: tuple[str, ...]
    text: str

    @property
    def part(self) -> str:
        return "held-out" if held_out(self.id) else "dev"


def held_out(note_id: str) -> bool:
    """The split rule of the README: a seeded hash of the id, about 30% held out."""
    digest = int(hashlib.sha256((SPLIT_SALT + note_id).encode()).hexdigest()[:8], 16)
    return digest < HELD_OUT_SHARE * 16**8


def load_notes(path: Path = DATA / "notes.yaml") -> list[Note]:
    """The labelled notes, checked: real billable codes, labels among the case codes, known phenomena."""
    from mediflow import terminology

    notes = []
    for entry in yaml.safe_load(path.read_text(encoding="utf-8"))["notes"]:
        note = Note(
            id=entry["id"],
            document_type=entry["document_type"],
            codes=tuple(entry["codes"]),
            mentioned=frozenset(entry["mentioned"]),
            phenomena=tuple(entry["phenomena"]),
            text=entry["text"],
        )
        problems = [f"{code} is not a billable ICD-10-CM code" for code in note.codes if not terminology.is_billable(code)]
        problems += [f"{code} is labelled mentioned but is not a case code" for code in note.mentioned - set(note.codes)]
        problems += [f"unknown phenomenon {name}" for name in note.phenomena if name not in PHENOMENA]
        if problems:
            raise SystemExit(f"{path}: note {note.id}: " + "; ".join(problems))
        notes.append(note)
    ids = [note.id for note in notes]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{path}: duplicate note ids")
    return notes


def frozen_split(path: Path = DATA / "split.txt") -> set[str]:
    """The held-out ids as frozen with the set."""
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def current_matcher() -> Mentioned:
    from mediflow.cases import load_case_book
    from mediflow.cases.mentions import MentionMatcher

    return MentionMatcher(load_case_book()).mentioned


def baseline_matcher(commit: str) -> Mentioned:
    """The matcher of ``commit``: its mentions.py run against its synonyms.yaml (a user taxonomy folder)."""
    from mediflow.cases import load_case_book

    def show(path: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], check=True, capture_output=True, text=True).stdout

    module = types.ModuleType("mediflow_baseline_mentions")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(show("mediflow/cases/mentions.py"), f"{commit[:10]}:mediflow/cases/mentions.py", "exec"), module.__dict__)
    folder = Path(tempfile.mkdtemp(prefix="mention-baseline-"))
    (folder / "cases").mkdir()
    (folder / "cases" / "synonyms.yaml").write_text(show("taxonomies/cases/synonyms.yaml"))
    matcher: Any = module.MentionMatcher(load_case_book(folder))
    return matcher.mentioned  # type: ignore[no-any-return]


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, truth: bool, said: bool) -> None:
        if truth and said:
            self.tp += 1
        elif said:
            self.fp += 1
        elif truth:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    def __str__(self) -> str:
        return f"P {self.precision:.2f}  R {self.recall:.2f}  (tp {self.tp}, fp {self.fp}, fn {self.fn}, tn {self.tn})"


def score(notes: Iterable[Note], found: dict[str, set[str]]) -> tuple[Counts, Counts]:
    """(primary, codes) counts of one matcher's answers ``found`` (note id -> codes) on ``notes``."""
    primary, codes = Counts(), Counts()
    for note in notes:
        primary.add(note.codes[0] in note.mentioned, note.codes[0] in found[note.id])
        for code in note.codes:
            codes.add(code in note.mentioned, code in found[note.id])
    return primary, codes


def run(matcher: Mentioned, notes: list[Note]) -> tuple[dict[str, set[str]], float]:
    """Each note's mentioned codes, and the seconds a note took (a second pass, names already worked out)."""
    answers = {note.id: set(matcher(note.text, list(note.codes))) for note in notes}
    started = time.perf_counter()
    for note in notes:
        matcher(note.text, list(note.codes))
    return answers, (time.perf_counter() - started) / len(notes)


#: The reasons of :class:`mediflow.cases.mentions.Occurrence` that are context decisions (NegEx may overrule them).
CONTEXT_REASONS = ("negated:", "hedged:", "family:", "hypothetical:")


def negspacy_yardstick(notes: list[Note], parts: dict[str, list[Note]]) -> None:
    """Our names, NegEx's context: P/R per part, and negation agreement per name occurrence."""
    try:
        import negspacy
        import spacy
        from negspacy.negation import Negex
        from negspacy.termsets import termset
    except ImportError:
        print("\nnegspacy is not installed: pip install -e '.[bench]'")
        return
    from importlib.metadata import version

    from mediflow.cases import load_case_book
    from mediflow.cases.mentions import MentionMatcher

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    negex = Negex(nlp, "negex", neg_termset=termset("en_clinical").get_patterns())

    def negated(text: str, start: int, end: int) -> bool:
        doc = nlp(text)
        span = doc.char_span(start, end, label="CONDITION", alignment_mode="expand")
        doc.ents = [span]
        negex(doc)
        return bool(doc.ents[0]._.negex)

    matcher = MentionMatcher(load_case_book())
    answers: dict[str, set[str]] = {}
    agreement = Counter()
    for note in notes:
        answers[note.id] = set()
        for code, finding in matcher.find(note.text, list(note.codes)).items():
            for occurrence in finding.occurrences:
                ours = occurrence.why_not is not None and occurrence.why_not.startswith("negated:")
                theirs = negated(note.text, occurrence.start, occurrence.end)
                agreement[(ours, theirs)] += 1
                context_only = occurrence.why_not is None or occurrence.why_not.startswith(CONTEXT_REASONS)
                if context_only and not theirs:
                    answers[note.id].add(code)
    print(f"\n== yardstick: negspacy {getattr(negspacy, '__version__', None) or version('negspacy')} (NegEx, en_clinical termset, spaCy {spacy.__version__}) on the current matcher's names")
    for part, members in parts.items():
        primary, codes = score(members, answers)
        print(f"  {part:9s} names ours + NegEx context   primary: {primary}")
        print(f"  {'':9s} {'':27s} codes:   {codes}")
    total = sum(agreement.values())
    observed = (agreement[(True, True)] + agreement[(False, False)]) / total
    ours_rate = (agreement[(True, True)] + agreement[(True, False)]) / total
    theirs_rate = (agreement[(True, True)] + agreement[(False, True)]) / total
    expected = ours_rate * theirs_rate + (1 - ours_rate) * (1 - theirs_rate)
    kappa = (observed - expected) / (1 - expected) if expected < 1 else float("nan")
    print(
        f"  negation of {total} name occurrences: both negated {agreement[(True, True)]}, ours only {agreement[(True, False)]}, "
        f"NegEx only {agreement[(False, True)]}, neither {agreement[(False, False)]}; agreement {observed:.2f}, Cohen's kappa {kappa:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=FROZEN, help="the commit whose matcher is the baseline (default: the one that froze the set)")
    parser.add_argument("--errors", action="store_true", help="print the current matcher's errors on the dev part (never the held-out part's)")
    parser.add_argument("--negspacy", action="store_true", help="also read the current matcher's names with negspacy's NegEx (the bench extra)")
    args = parser.parse_args()

    notes = load_notes()
    split = frozen_split()
    if split != {note.id for note in notes if held_out(note.id)}:
        raise SystemExit("split.txt does not match the split rule: the set or the rule changed after it was frozen")
    parts = {"dev": [n for n in notes if n.part == "dev"], "held-out": [n for n in notes if n.part == "held-out"], "all": notes}
    matchers: dict[str, Mentioned] = {"current": current_matcher()}
    if args.baseline:
        matchers[f"baseline {args.baseline[:10]}"] = baseline_matcher(args.baseline)
    runs = {name: run(matcher, notes) for name, matcher in matchers.items()}
    answers = {name: found for name, (found, _) in runs.items()}

    print(f"{len(notes)} notes ({len(parts['dev'])} dev, {len(parts['held-out'])} held-out), {sum(len(n.codes) for n in notes)} case codes")
    print("time a note: " + ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, (_, seconds) in runs.items()))
    for part, members in parts.items():
        print(f"\n== {part}: {len(members)} notes, {sum(n.codes[0] in n.mentioned for n in members)} mention their primary")
        for name, found in answers.items():
            primary, codes = score(members, found)
            print(f"  {name:20s} primary: {primary}")
            print(f"  {'':20s} codes:   {codes}")
    for part in ("dev", "held-out"):
        print(f"\n== per phenomenon, {part} (notes; code level: P / R, false positives and negatives)")
        for phenomenon in PHENOMENA:
            members = [n for n in parts[part] if phenomenon in n.phenomena]
            if not members:
                continue
            cells = []
            for found in answers.values():
                _, codes = score(members, found)
                cells.append(f"{codes.precision:5.2f} / {codes.recall:4.2f} (fp {codes.fp}, fn {codes.fn})")
            print(f"  {phenomenon:24s} {len(members):3d}   " + "   ".join(f"{name.split()[0]} {cell}" for name, cell in zip(answers, cells)))
    if args.negspacy:
        negspacy_yardstick(notes, parts)
    if args.errors:
        print("\n== current matcher's errors on the dev part")
        for note in parts["dev"]:
            found = answers["current"][note.id]
            if found != note.mentioned:
                extra, missed = sorted(found - note.mentioned), sorted(note.mentioned - found)
                print(f"- {note.id} {note.document_type} {list(note.codes)}: said {sorted(found)}; extra {extra}, missed {missed}")
                print("    " + note.text.strip().replace("\n", "\n    "))


if __name__ == "__main__":
    sys.exit(main())
