"""Keys of configs written before the one weighted-terms syntax, and their mapping.

``loss.types`` with ``loss.weights`` (two parallel lists) became ``loss.terms``, and
``grpo.reward_weights`` became ``grpo.rewards``, both ``"NAME=WEIGHT,..."``
(config_rules.split_terms).
"""

from __future__ import annotations

from typing import Any

from ttspo.builder.core.errors import ConfigError
from ttspo.trainer.run.config_rules import canonical_terms, parse_terms

# Keys of configs written before loss.terms and grpo.rewards. A run folder made with
# them still resumes: its command may spell them the old way (mapped here), and its
# run.json is mapped the same way before the identity comparison (map_old_sections).
# A new run spelling them so is refused, the new key named.
OLD_KEYS = {"loss.types": "loss.terms", "loss.weights": "loss.terms",
            "grpo.reward_weights": "grpo.rewards"}
_EXAMPLES = {"loss.terms": "loss.terms=dpo=1,rpo=0.5", "grpo.rewards": "grpo.rewards=cer=0.5,ssim=0.5"}


def map_old_keys(items: list[tuple[str, Any, str]], *, allowed: bool) -> list[tuple[str, Any, str]]:
    """ITEMS (key, value, where given) with OLD_KEYS mapped to the new keys if ALLOWED,
    else a ConfigError naming the new key."""
    old = {key: (value, where) for key, value, where in items if key in OLD_KEYS}
    if old and not allowed:
        key, (_, where) = next(iter(old.items()))
        new = OLD_KEYS[key]
        raise ConfigError(f"{where}: config key '{key}' is now '{new}' (e.g. {_EXAMPLES[new]}); "
                          "the old key only resumes a run folder made with it")
    out = [item for item in items if item[0] not in OLD_KEYS]
    if "grpo.reward_weights" in old:
        out.append(("grpo.rewards", *old["grpo.reward_weights"]))
    if "loss.types" in old or "loss.weights" in old:
        types, where = old.get("loss.types", (["dpo"], None))
        weights, where_w = old.get("loss.weights", ([1.0], None))
        out.append(("loss.terms", old_loss_terms(_items(types, "loss.types", where or where_w),
                                                 _items(weights, "loss.weights", where or where_w)),
                    where or where_w))
    return out


def _items(value: Any, key: str, where: str) -> list:
    """An old list value: [a, b] or "a,b" (as load_config read lists)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: config {key} wants list, got {value!r}")
    if key == "loss.weights":
        try:
            return [float(v) for v in value]
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: config {key} wants list, got {value!r}") from None
    return [str(v) for v in value]


def old_loss_terms(types: list[str], weights: list[float]) -> str:
    """loss.types and loss.weights (parallel lists) as loss.terms; a type listed twice
    had its weights summed (combine adds one term per entry), and still does."""
    if len(types) != len(weights):
        raise ConfigError(f"config loss.weights has {len(weights)} values for {len(types)} loss.types")
    terms: dict[str, float] = {}
    for name, weight in zip(types, weights):
        terms[name] = terms.get(name, 0.0) + float(weight)
    return canonical_terms(terms)


def map_old_sections(conf: dict[str, Any]) -> dict[str, Any]:
    """A saved config's sections (run.json) with OLD_KEYS mapped, as load_config maps them."""
    conf = {section: dict(values) if isinstance(values, dict) else values
            for section, values in conf.items()}
    loss, grpo = conf.get("loss"), conf.get("grpo")
    if isinstance(loss, dict) and ("types" in loss or "weights" in loss):
        loss["terms"] = old_loss_terms(list(loss.pop("types", ["dpo"])), list(loss.pop("weights", [1.0])))
    if isinstance(grpo, dict) and "reward_weights" in grpo:
        grpo["rewards"] = canonical_terms(parse_terms(grpo.pop("reward_weights"), "grpo.reward_weights"))
    return conf


def uses_old_keys(conf: dict[str, Any]) -> bool:
    """Whether a saved config's sections hold any of OLD_KEYS."""
    return any(isinstance(conf.get(section), dict) and name in conf[section]
               for section, name in (key.split(".") for key in OLD_KEYS))
