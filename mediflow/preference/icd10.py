"""ICD-10-CM codes in answers: finding them, checking them, and swapping one for a real sibling.

A "wrong code" error is only useful to DPO if the wrong code looks right: an invented code is
caught by any validity filter, a real code of a neighbouring condition is not. So the
``wrong_icd10_code`` kind substitutes a real sibling (same parent, different condition) from
:mod:`mediflow.terminology` instead of asking the teacher, who might invent one. Only dotted
tokens (``E11.9``) are read as codes: undotted three-character tokens (``B12``, ``T12``) are too
often vitamins or vertebrae in clinical prose.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from mediflow import terminology

_DOTTED_CODE = re.compile(r"(?<![A-Za-z0-9.])([A-Z][0-9][0-9A-Z]\.[0-9A-Z]{1,4})(?![A-Za-z0-9]|\.[0-9A-Za-z])")


def code_tokens(text: str) -> list[str]:
    """Dotted code-shaped tokens in order of first appearance, without repeats."""
    return list(dict.fromkeys(match.group(1) for match in _DOTTED_CODE.finditer(text)))


def valid_codes_in(text: str) -> list[str]:
    """The real ICD-10-CM codes written in ``text``."""
    return [code for code in code_tokens(text) if terminology.is_valid(code)]


def invalid_codes_in(text: str) -> list[str]:
    """Code-shaped tokens of ``text`` that are not ICD-10-CM codes (invented ones)."""
    return [code for code in code_tokens(text) if not terminology.is_valid(code)]


@dataclass(frozen=True)
class CodeSwap:
    """A substitution of one real code by a real sibling, with both descriptions for the record."""

    original: str
    replacement: str
    text: str

    def describe(self) -> str:
        return f"replaced ICD-10-CM {self.original} ({terminology.description(self.original)}) with its sibling {self.replacement} ({terminology.description(self.replacement)})"


def swap_for_sibling(text: str, key: str, seed: int) -> CodeSwap | None:
    """Replace every occurrence of one real code in ``text`` by a seeded choice among its siblings."""
    candidates = [(code, sorted(terminology.siblings(code))) for code in valid_codes_in(text)]
    candidates = [(code, siblings) for code, siblings in candidates if siblings]
    if not candidates:
        return None
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{key}:icd10".encode()).digest()[:8], "big")
    code, siblings = candidates[digest % len(candidates)]
    replacement = siblings[(digest // len(candidates)) % len(siblings)]
    pattern = re.compile(rf"(?<![A-Za-z0-9.]){re.escape(code)}(?![A-Za-z0-9]|\.[0-9A-Za-z])")
    return CodeSwap(code, replacement, pattern.sub(replacement, text))
