"""Text helpers shared by the n-gram and duplicate checks: words, and the prose inside JSON outputs.

A JSON output's n-grams would otherwise be its keys and punctuation (``"code": "``); the audit
reads the string values a reader would read instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

_WORD = re.compile(r"[a-z0-9]+(?:[.'-][a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits; inner dots, hyphens and apostrophes kept: E11.22, 2.5, x-ray)."""
    return _WORD.findall(text.lower())


def json_strings(value: Any) -> Iterator[str]:
    """Every string value inside a parsed JSON value, depth first, in document order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_strings(item)


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
