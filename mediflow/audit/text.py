"""Text helpers shared by the n-gram and duplicate checks: words, and the prose inside JSON outputs.

A JSON output's n-grams would otherwise be its keys and punctuation (``"code": "``); the audit
reads the string values a reader would read instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mediflow.quality.text import json_strings

__all__ = ["instruction_opening", "json_strings", "readable_output", "words"]

_WORD = re.compile(r"[a-z0-9]+(?:[.'-][a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits; inner dots, hyphens and apostrophes kept: E11.22, 2.5, x-ray)."""
    return _WORD.findall(text.lower())


def instruction_opening(text: str, length: int = 4) -> str:
    """The first ``length`` words of an instruction: how stock phrasing ("You are a clinical coder") shows."""
    return " ".join(words(text)[:length])


def readable_output(output: Any, output_format: Any) -> str:
    """The text of an output as a reader sees it: a JSON output's string values joined, else the text."""
    if not isinstance(output, str):
        return ""
    if output_format == "json":
        try:
            return "\n".join(json_strings(json.loads(output)))
        except json.JSONDecodeError:
            return output
    return output
