"""What values a config key allows: the rule kinds of ``config.RULES`` and their check.

A rule is data (a table beside the dataclasses, so the docs can be generated from
it), never an ``if`` in a loop: :class:`Span` (a numeric interval written as in the
docs, ``"[0, 1)"``, whose bounds may name another key: ``"[0, train.max_steps]"``),
:class:`OneOf` (a choice), :class:`Terms` (weighted terms ``"NAME=WEIGHT,..."``, the one
syntax of loss and reward weights), :class:`Free` (any value of the field's type: a bool,
or a name another part resolves before anything is written). A list field's rule holds
for each item; ``length`` fixes how many items (a number, or another list key's length).
Every float must be finite, whatever its rule: nan and inf pass no comparison a
trainer makes correctly.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from ttspo.builder.core.errors import ConfigError

Resolve = Callable[[str], Any]  # a dotted key -> its value in the config being checked
_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])$")


@dataclass(frozen=True)
class Span:
    """A closed/open interval ``"[lo, hi)"``; a bound is a number, ``inf`` or a dotted key."""

    interval: str
    length: Optional[Union[int, str]] = None  # list fields: how many items (or another list's count)
    min_length: int = 0

    def __post_init__(self) -> None:
        if not _INTERVAL.match(self.interval):
            raise ValueError(f"not an interval: {self.interval!r}")

    def bounds(self, resolve: Resolve) -> tuple[str, float, float, str]:
        left, lo, hi, right = _INTERVAL.match(self.interval).groups()
        return left, _bound(lo, resolve, -math.inf), _bound(hi, resolve, math.inf), right

    def problem(self, value: Any, resolve: Resolve) -> Optional[str]:
        left, lo, hi, right = self.bounds(resolve)
        above = value > lo if left == "(" else value >= lo
        below = value < hi if right == ")" else value <= hi
        if above and below and _finite(value):
            return None
        named = [b for b in _INTERVAL.match(self.interval).groups()[1:3] if _is_key(b)]
        where = "".join(f"; {k} is {_show(resolve(k))}" for k in named)
        return f"{_show(value)} is not in {self.interval}{where}"


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]
    length: Optional[Union[int, str]] = None
    min_length: int = 0

    @property
    def interval(self) -> str:
        return " | ".join(self.choices)

    def problem(self, value: Any, resolve: Resolve) -> Optional[str]:
        if value in self.choices:
            return None
        return f"{_show(value)} is not one of {', '.join(self.choices)}"


@dataclass(frozen=True)
class Free:
    """Any value of the field's type; WHAT says what is allowed and who checks it."""

    what: str
    length: Optional[Union[int, str]] = None
    min_length: int = 0

    @property
    def interval(self) -> str:
        return self.what

    def problem(self, value: Any, resolve: Resolve) -> Optional[str]:
        return f"{_show(value)} is not finite" if not _finite(value) else None


@dataclass(frozen=True)
class Terms:
    """Weighted terms ``"NAME=WEIGHT,..."`` (``loss.terms``, ``grpo.rewards``): each NAME
    one of NAMES (or, with CALLABLES, a Python callable ``pkg.mod:fn``), given once,
    each WEIGHT in the interval WEIGHTS. See :func:`parse_terms`."""

    names: tuple[str, ...]
    weights: str = "[0, inf)"
    callables: bool = False
    length = None
    min_length = 0

    @property
    def interval(self) -> str:
        extra = " or pkg.module:function" if self.callables else ""
        return f"NAME=WEIGHT,...: NAME {' | '.join(self.names)}{extra}; WEIGHT {self.weights}"

    def problem(self, value: Any, resolve: Resolve) -> Optional[str]:
        try:
            terms = split_terms(value)
        except ValueError as exc:
            return str(exc)
        for name, weight in terms.items():
            if name not in self.names and not (self.callables and ":" in name):
                close = difflib.get_close_matches(name, self.names, n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'? " if close else ""
                return (f"unknown term '{name}' in {_show(value)} "
                        f"({hint}choose {', '.join(self.names)})")
            problem = Span(self.weights).problem(weight, resolve)
            if problem is not None:
                return f"{name}={problem}"
        return None


Rule = Union[Span, OneOf, Free, Terms]


# One syntax for weighted terms, losses and rewards alike: "dpo=1,rpo=0.5". Text, not
# a YAML mapping: it reads the same in a config file and after -o, and a name given
# twice can be refused (a YAML mapping keeps the last of a repeated key, silently).
def split_terms(text: Any) -> dict[str, float]:
    """``"cer=0.5, ssim=0.5"`` -> {"cer": 0.5, "ssim": 0.5}, in the order given; a
    ValueError (one line) for anything else. A name given twice is refused: which
    weight was meant is not ours to guess."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{_show(text)} is not NAME=WEIGHT,... (e.g. dpo=1,rpo=0.5)")
    terms: dict[str, float] = {}
    for item in (p.strip() for p in text.split(",")):
        name, sep, value = item.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"'{item}' is not NAME=WEIGHT")
        if name in terms:
            raise ValueError(f"'{name}' is weighted twice in '{text}': give each term once")
        try:
            terms[name] = float(value)
        except ValueError:
            raise ValueError(f"'{item}': '{value.strip()}' is not a number") from None
    return terms


def parse_terms(text: str, key: str) -> dict[str, float]:
    """TEXT's terms (see split_terms); a problem is a ConfigError naming KEY."""
    try:
        return split_terms(text)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def canonical_terms(terms: dict[str, float]) -> str:
    """The one spelling of TERMS (``dpo=1,rpo=0.5``): equal terms, equal text, so a
    run's identity does not change with how its weights were written."""
    return ",".join(f"{name}={_number(weight)}" for name, weight in terms.items())


def _number(weight: float) -> str:
    text = repr(float(weight))
    return text[:-2] if text.endswith(".0") else text


def check_rules(rules: dict[str, Rule], resolve: Resolve) -> None:
    """The first key (in RULES' order) whose value breaks its rule: a ConfigError
    naming the key, the value and what is allowed. None (an Optional unset) passes.
    Rules bounded by other keys go last: those keys are then known to be in range."""
    for key, rule in sorted(rules.items(), key=lambda item: _refers(item[1])):
        value = resolve(key)
        if value is None:
            continue
        items = value if isinstance(value, list) else None
        if items is not None:
            _check_length(key, items, rule, resolve)
        for i, item in enumerate(items if items is not None else [value]):
            problem = rule.problem(item, resolve)
            if problem is not None:
                name = f"{key}[{i}]" if items is not None else key
                raise ConfigError(f"config {name}: {problem}")


def _check_length(key: str, items: list, rule: Rule, resolve: Resolve) -> None:
    want = rule.length
    if isinstance(want, str):  # as many as another list key holds
        other = resolve(want)
        if other is not None and len(items) != len(other):
            raise ConfigError(f"config {key} has {len(items)} values for {len(other)} {want}")
    elif want is not None and len(items) != want:
        raise ConfigError(f"config {key} has {len(items)} value(s); it takes {want}")
    if len(items) < rule.min_length:
        raise ConfigError(f"config {key} is empty; it takes at least {rule.min_length} value")


def _refers(rule: Rule) -> bool:
    return isinstance(rule, Span) and any(
        _is_key(b) for b in _INTERVAL.match(rule.interval).groups()[1:3])


def _bound(text: str, resolve: Resolve, unset: float) -> float:
    if _is_key(text):
        value = resolve(text)
        return unset if value is None else value  # an unset Optional bound: no bound
    return float(text)


def _is_key(text: str) -> bool:
    return "." in text and text[0].isalpha()


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def allowed(rule: Rule) -> str:
    """What RULE allows, as the docs say it: ``[0, 1); 2 values``."""
    count = (f"; {rule.length} values" if isinstance(rule.length, int) else
             f"; as many as {rule.length}" if rule.length else
             f"; at least {rule.min_length}" if rule.min_length else "")
    return rule.interval + count


def markdown(rules: dict[str, Rule]) -> str:
    """RULES as a markdown table (key | allowed), for the docs."""
    lines = ["| key | allowed |", "|---|---|"]
    for key, rule in rules.items():
        lines.append(f"| `{key}` | {allowed(rule).replace('|', '&#124;')} |")
    return "\n".join(lines)
