"""`ttspo sweep`: how a set would change with one parameter, without writing one.

Runs the recipe once per value of ONE parameter (the others at their defaults or
as given), over one DuckDB session, with the same contract checks as a build,
and reports for each value how many pairs, groups and prompts survive and which
margins they have: CER margin (cer_delta = rejected CER - chosen CER) and SSIM
margin (sim_delta = chosen SSIM - rejected SSIM), min / median / mean, and the
mean rejected reward. Optionally plots pairs and groups, and the median margins,
against the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.sets.build import count_pairs
from ttspo.builder.core.errors import InputError
from ttspo.builder.sets.recipes import Recipe, load_recipe, run_recipe, typed_value
from ttspo.builder.core.schemas import PAIR

COLUMNS = ("pairs", "train", "val", "groups", "prompts", "chosen_cer_mean", "rejected_cer_mean",
           "cer_margin_min", "cer_margin_median", "cer_margin_mean",
           "sim_margin_min", "sim_margin_median", "sim_margin_mean", "rejected_reward_mean")


def sweep(store, recipe: Recipe | str, param: str, values: Sequence[Any], *,
          params: dict[str, Any] | None = None,
          runs: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per value of PARAM: the set the recipe would build, summarised."""
    from ttspo.builder.core import query

    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    if param not in recipe.params:
        known = ", ".join(sorted(recipe.params)) or "none"
        raise InputError(f"recipe {recipe.name} has no parameter {param} (parameters: {known})")
    if not values:
        raise InputError(f"sweep {param}: give at least one value")
    fixed = dict(params or {})
    if param in fixed:
        raise InputError(f"--param {param} is the swept parameter; give it once, as a list")
    session = query.open_session(store, query.refs_in(recipe.sql))
    rows = []
    try:
        for value in values:
            typed = typed_value(recipe, param, value)
            out = run_recipe(store, recipe, {**fixed, param: typed}, runs, session=session)
            rows.append({param: typed, **summarise(out.table)})
    finally:
        session.con.close()
    return rows


def summarise(table: pa.Table) -> dict[str, Any]:
    counts = count_pairs(table)

    def stat(col: str, how: str) -> float | None:
        arr = table.column(col)
        if table.num_rows == 0:
            return None
        if how == "median":
            return pc.quantile(arr, q=0.5, interpolation="midpoint")[0].as_py()
        return getattr(pc, how)(arr).as_py()

    return {
        **counts,
        "chosen_cer_mean": stat(PAIR.chosen_cer, "mean"),
        "rejected_cer_mean": stat(PAIR.rejected_cer, "mean"),
        "cer_margin_min": stat(PAIR.cer_delta, "min"),
        "cer_margin_median": stat(PAIR.cer_delta, "median"),
        "cer_margin_mean": stat(PAIR.cer_delta, "mean"),
        "sim_margin_min": stat(PAIR.sim_delta, "min"),
        "sim_margin_median": stat(PAIR.sim_delta, "median"),
        "sim_margin_mean": stat(PAIR.sim_delta, "mean"),
        "rejected_reward_mean": stat(PAIR.rejected_reward, "mean"),
    }


def plot(rows: list[dict[str, Any]], param: str, path: str | Path, title: str = "") -> Path:
    """Pairs and groups (left) and median margins (right) against PARAM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r[param] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [r["pairs"] for r in rows], "o-", label="pairs")
    left.plot(xs, [r["groups"] for r in rows], "s--", label="groups")
    left.set_xlabel(param)
    left.set_ylabel("count")
    left.legend()
    right.plot(xs, [r["cer_margin_median"] for r in rows], "o-", label="CER margin (median)")
    right.plot(xs, [r["sim_margin_median"] for r in rows], "s--", label="SSIM margin (median)")
    right.set_xlabel(param)
    right.set_ylabel("margin")
    right.legend()
    numeric = all(isinstance(x, (int, float)) and x > 0 for x in xs)
    for ax in (left, right):
        if numeric and len(xs) > 1 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        if numeric:  # label the swept values themselves, nothing in between
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
    fig.suptitle(title or f"sweep over {param}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
