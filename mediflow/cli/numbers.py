"""argparse types for numeric flags: a value out of range is one ``error:`` line naming the flag."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(value: str, cast: Callable[[str], float], noun: str) -> float:
    """``value`` read with ``cast``; a value that does not read is an argparse error naming ``noun``."""
    try:
        return cast(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not {noun}") from None


def positive_int(value: str) -> int:
    """An integer >= 1."""
    number = int(_number(value, int, "a whole number"))
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return number


def non_negative_int(value: str) -> int:
    """An integer >= 0."""
    number = int(_number(value, int, "a whole number"))
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return number


def positive_float(value: str) -> float:
    """A finite number > 0."""
    number = _number(value, float, "a number")
    if not number > 0 or math.isinf(number):
        raise argparse.ArgumentTypeError(f"{value} must be a number above 0")
    return number


def fraction(value: str) -> float:
    """A number in [0, 1]."""
    number = _number(value, float, "a number")
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1")
    return number
