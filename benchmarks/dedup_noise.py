"""Planted copies made by noise libraries we did not write: the yardstick our own copy kinds are not.

Our own copy kinds (``dedup_set.OUR_COPY_KINDS``) were written by the same people who wrote the
dedup stage's lexicon, so a benchmark made only of them measures what we thought of. Here the
copies come from two third-party augmentation libraries, each from PyPI and fully offline (the
``bench`` extra of ``pyproject.toml``; neither is a runtime dependency of mediflow):

* **nlpaug** (``nlpaug.augmenter.char`` / ``.word``): the augmenters that need no download only.
  ``KeyboardAug`` (a neighbouring key), ``RandomCharAug`` (a letter swapped, deleted or inserted),
  ``SpellingAug`` (real human misspellings from the list the package ships, in words of four
  letters or more: its list also holds real-word errors of short words, "on" -> "no",
  "man" -> "mom", "no" -> "now", which make another case, not a copy), ``RandomWordAug``
  (one word deleted), ``SplitAug`` (a word split in two). ``SynonymAug``/``AntonymAug`` (WordNet,
  NLTK data), the contextual and back-translation augmenters (models) and ``TfIdfAug`` (a model
  trained first) need downloads and are not used. Its tokenizer also respaces the text it
  rebuilds ("67 - year - old", "mg / dL", "1. 1" for "1.1"): noise too, on every nlpaug copy.
* **AugLy** (``augly.text``, Meta): ``simulate_typos`` (its own misspelling list plus keyboard
  and character typos), ``change_case``, ``split_words``, ``merge_words``, ``contractions``.
  AugLy's text augmenters are built on nlpaug 1.1.3, which is why the ``bench`` extra pins that
  version through ``augly[text]``. Its adversarial augmenters (upside-down text, fun fonts,
  homoglyphs, a character between every two letters) are not copies a teacher or a copy-paste makes.

Every copy keeps its case's facts: each augmenter touches at most a few words, a word deletion
never deletes a word of the case's values (the generator knows them), and ``dedup_set.synthetic``
draws a copy again when its numbers (digit runs) differ from its original's.

nlpaug and AugLy draw from Python's and numpy's global generators; ``synthetic`` seeds both, so
one seed gives one set. The held-out split is ``--noise augly`` and any noise at another seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache
from typing import Any

NLPAUG_KINDS = ("nlpaug:keyboard", "nlpaug:char-swap", "nlpaug:char-delete", "nlpaug:char-insert", "nlpaug:spelling", "nlpaug:word-delete", "nlpaug:split")
AUGLY_KINDS = ("augly:typos", "augly:case", "augly:split", "augly:merge", "augly:contractions")
NOISES = {"nlpaug": NLPAUG_KINDS, "augly": AUGLY_KINDS}
NOISE_KINDS = (*NLPAUG_KINDS, *AUGLY_KINDS)

Copier = Callable[[str, str, random.Random, frozenset[str]], tuple[str, str]]


def _text(result: Any) -> str:
    """nlpaug returns a string or a one-element list, depending on its version."""
    return result[0] if isinstance(result, list) else result


@cache
def _char_augmenter(kind: str) -> Any:
    import nlpaug.augmenter.char as nac

    one_letter = {"aug_char_min": 1, "aug_char_max": 1, "aug_word_min": 1, "aug_word_max": 3, "aug_word_p": 0.3, "min_char": 4}
    if kind == "nlpaug:keyboard":
        return nac.KeyboardAug(include_numeric=False, include_special_char=False, include_upper_case=False, **one_letter)
    action = kind.removeprefix("nlpaug:char-")
    return nac.RandomCharAug(action=action, include_numeric=False, include_upper_case=False, spec_char="", **one_letter)


@cache
def _spelling_augmenter() -> Any:
    import nlpaug.augmenter.word as naw

    # real-word errors in short words ("on" -> "no", "man" -> "mom") make another case: words of four letters or more only
    return naw.SpellingAug(aug_min=1, aug_max=3, aug_p=0.3, stopwords_regex=r"^\w{1,3}$")


def _nlpaug(kind: str, document: str, protected: frozenset[str]) -> str:
    import nlpaug.augmenter.word as naw

    if kind == "nlpaug:spelling":
        return _text(_spelling_augmenter().augment(document))
    if kind == "nlpaug:word-delete":
        keep = sorted(protected | {word.capitalize() for word in protected})
        return _text(naw.RandomWordAug(action="delete", aug_min=1, aug_max=1, stopwords=keep).augment(document))
    if kind == "nlpaug:split":
        return _text(naw.SplitAug(aug_min=1, aug_max=2, min_char=4).augment(document))
    return _text(_char_augmenter(kind).augment(document))


def _augly(kind: str, instruction: str, document: str, rng: random.Random) -> tuple[str, str]:
    import augly.text as textaugs

    if kind == "augly:case":
        case = rng.choice(("upper", "lower"))
        return (_text(textaugs.change_case(instruction, case=case, granularity="all", seed=rng.randrange(2**31))), _text(textaugs.change_case(document, case=case, granularity="all", seed=rng.randrange(2**31))))
    if kind == "augly:typos":
        document = textaugs.simulate_typos(document, aug_word_p=0.05, aug_word_min=1, aug_word_max=3, aug_char_max=1, typo_type="all")
    elif kind == "augly:split":
        document = textaugs.split_words(document, aug_word_p=0.05, aug_word_min=1, aug_word_max=2)
    elif kind == "augly:merge":
        document = textaugs.merge_words(document, aug_word_p=0.05, aug_word_min=1, aug_word_max=2)
    else:
        document = textaugs.contractions(document, aug_p=1.0, seed=rng.randrange(2**31))
    return instruction, _text(document)


def noise_copier(kind: str) -> Copier:
    """The function that makes a copy of ``kind`` (one of :data:`NOISE_KINDS`) from an instruction and its document."""
    if kind in NLPAUG_KINDS:
        return lambda instruction, document, rng, protected: (instruction, _nlpaug(kind, document, protected))
    if kind in AUGLY_KINDS:
        return lambda instruction, document, rng, protected: _augly(kind, instruction, document, rng)
    raise ValueError(f"unknown noise kind {kind!r}")
