"""Named parameters given as text (``--param NAME=VALUE``): parsed and typed once.

The same typing serves ``ttspo sql``, recipes (build, sweep) and the notebook API:
a value is typed like the parameter's default when it has one (bool, int, float,
str), else it is an int if it reads as one, a finite float if it reads as one,
and text otherwise. A float parameter must be finite: ``cer_threshold=nan`` would
silently turn every comparison false and disable the threshold, and JSON (the
lineage, ``--format json``) has no NaN or infinity.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

from ttspo.builder.core.errors import InputError

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TRUE, FALSE = ("true", "1"), ("false", "0")


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> {"k": "v"}; the values stay text until typed."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not NAME.match(key.strip()):
            raise InputError(f"--param '{item}' is not NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """``["k=1", "x=a b"]`` -> {"k": 1, "x": "a b"} (no defaults to type by)."""
    return {k: typed_param(k, v) for k, v in parse_assignments(items).items()}


def typed_param(name: str, value: Any, like: Any = None, numbers_only: bool = False) -> Any:
    """VALUE typed like LIKE (a default), or guessed from the text when LIKE is None.
    Values that are not text are only checked (a non-finite float is refused).
    NUMBERS_ONLY (recipes): text spelling a non-finite number (``nan``, ``inf``) is
    refused rather than kept as text, since SQL would cast it back to NaN."""
    if not isinstance(value, str):
        return checked_value(name, value)
    if isinstance(like, bool):
        if value.lower() not in TRUE + FALSE:
            raise InputError(f"--param {name}={value} is not a bool")
        return value.lower() in TRUE
    if isinstance(like, int):
        try:
            return int(value)
        except ValueError:
            raise InputError(f"--param {name}={value} is not a int") from None
    if isinstance(like, float):
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"--param {name}={value} is not a float") from None
        if not math.isfinite(number):
            raise InputError(f"--param {name}={value} is not a finite number")
        return number
    if like is not None:
        return value
    guess = _guess(value)
    if numbers_only and isinstance(guess, str) and _non_finite(guess):
        raise InputError(f"--param {name}={value} is not a finite number")
    return guess


def _non_finite(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def checked_value(name: str, value: Any) -> Any:
    """A value given as a Python object (the notebook API), kept as it is: only a
    non-finite float is refused."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"--param {name}={value} is not a finite number")
    return value


def _guess(value: str) -> int | float | str:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value
