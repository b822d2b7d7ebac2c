"""`ttspo` preference-set commands: recipes, build, export, diff, sweep (thin over
ttspo.builder.api)."""

from __future__ import annotations

from typing import Any

import click

from ttspo.builder.cli.common import emit, format_option, get_store, lineage_for
from ttspo.builder.core.errors import InputError

BUILD_COLUMNS = ["set", "version", "recipe", "pairs", "train", "val", "groups", "prompts",
                 "generations", "recipe_sha256"]


# ---------------------------------------------------------------- recipes
@click.command()
@click.argument("recipe", required=False)
@format_option
def recipes(recipe: str | None, fmt: str) -> None:
    """List the built-in recipes, or the parameters of RECIPE.

    RECIPE is a built-in name (pareto, best_worst, refine) or a path ending in .sql.
    """
    from ttspo.builder.api import recipes as listing

    columns = (["recipe", "parameters", "sha256"] if recipe is None
               else ["parameter", "default", "required", "description"])
    emit(listing(recipe), fmt, columns)


# ------------------------------------------------------------------ build
@click.command()
@click.argument("recipe")
@click.option("--name", required=True, help="The preference set to write (a table in the store).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Recipe parameter (repeatable), typed like its default.")
@click.option("--run", "runs", multiple=True, metavar="RUN",
              help="Only these runs' generations (repeatable); default: all runs.")
@format_option
@click.pass_context
def build(ctx: click.Context, *, recipe: str, name: str, params: tuple[str, ...],
          runs: tuple[str, ...], fmt: str) -> None:
    """Run RECIPE and write its pairs as a new version of preference set NAME.

    RECIPE is a built-in (pareto, best_worst, refine; see `ttspo recipes`) or a path
    ending in .sql: one DuckDB SELECT over the store's views returning at least
    prompt_id, group_id, chosen_id, rejected_id, chosen_reward, rejected_reward
    and split. The output is checked (chosen reward 1, rejected reward < 1, no
    rejected better on both CER and SSIM, no generation on both sides, no pair
    twice or in both splits, known ids and columns) and nothing is written if a
    check fails. The version records the recipe, its SHA-256, the parameters,
    the runs and the generations version it read. What a later build or export
    of the same generations would compute again (a recipe's cached ranking, the
    checks' columns) is kept in STORE/.derived (safe to delete).
    """
    from ttspo.builder.core.params import parse_assignments

    result = get_store(ctx).build(recipe, name=name, params=parse_assignments(params), runs=runs,
                                  lineage=lineage_for(ctx))
    emit([result.summary()], fmt, BUILD_COLUMNS)


# ----------------------------------------------------------------- export
@click.group()
def export() -> None:
    """Write a preference set as files a trainer reads (nemo, trl)."""


@export.command("nemo")
@click.argument("ref", metavar="NAME[@VERSION|@TAG]")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for dpo_train_manifest.json and dpo_val_manifest.json.")
@click.option("--codes-dtype", type=click.Choice(["int32", "int64"]), default="int32", show_default=True,
              help="Integer type of the codes files the manifests name (NeMo's DPO step "
                   "crashes on the int16 its generation writes).")
@click.option("--copy-codes", is_flag=True,
              help="Copy the codes files into OUT/codes and name the copies: a folder to move "
                   "to another machine (each file checked against its SHA-256 on the way).")
@format_option
@click.pass_context
def export_nemo(ctx: click.Context, *, ref: str, out_dir: str, codes_dtype: str, copy_codes: bool,
                fmt: str) -> None:
    """Write NeMo DPO manifests: each pair as its chosen line then its rejected line.

    MagpieTTSDatasetDPO reads them unchanged and MagpieTTSModelOfflinePO trains on
    them. Set the dataset's min_duration / max_duration to the reported duration
    range (or wider): NeMo drops lines outside them before pairing lines, which
    would shift every later pair. The range is also printed to stderr.

    The manifests name each generation's codes file in STORE/codes, written there
    once by the first export that needs it: an export writes two manifests, not
    codes (codes_written counts the files new to the store). Keep the store where
    the trainer can read it, or pass --copy-codes. Copying again into the same OUT
    keeps the files an earlier copy wrote, untouched since (OUT/.ttspo-codes.json).
    """
    result = get_store(ctx).export_nemo(ref, out=out_dir, codes_dtype=codes_dtype, copy_codes=copy_codes)
    emit([_export_row(result)], fmt, list(_export_row(result)))
    if result.min_duration is not None:
        click.echo(f"set train_ds.datasets.min_duration <= {result.min_duration} and max_duration >= "
                   f"{result.max_duration}: NeMo drops lines outside them before pairing", err=True)


@export.command("trl")
@click.argument("ref", metavar="NAME[@VERSION|@TAG]")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="FILE.parquet or FILE.jsonl.")
@format_option
@click.pass_context
def export_trl(ctx: click.Context, ref: str, out_file: str, fmt: str) -> None:
    """Write one row per pair: prompt (text), chosen and rejected (wav paths),
    metrics, rewards and split, as Parquet or JSON lines."""
    result = get_store(ctx).export_trl(ref, out=out_file)
    emit([_export_row(result)], fmt, list(_export_row(result)))


def _export_row(result) -> dict[str, Any]:
    s = result.summary()
    return {"files": " ".join(s["files"]), "train_pairs": s["train_pairs"], "val_pairs": s["val_pairs"],
            "codes_written": s["codes_written"], "codes_copied": s["codes_copied"],
            "codes_reused": s["codes_reused"], "min_duration": s["min_duration"],
            "max_duration": s["max_duration"]}


# ------------------------------------------------------------------- diff
@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@click.pass_context
def diff(ctx: click.Context, a: str, b: str, fmt: str) -> None:
    """What changed from A to B: two versions of a set, or of generations.

    A and B are NAME@VERSION or NAME@TAG (NAME alone: the latest version). Sets:
    pairs added, removed and kept, per split and record type; recipe, parameter
    and input changes; shifts in chosen/rejected CER, SSIM and reward.
    Generations: rows added, removed, kept and updated per run; metric shifts.
    """
    from ttspo.builder.core.render import strict_json
    from ttspo.builder.sets import diff as d

    result = get_store(ctx).diff(a, b)
    if fmt == "json":
        click.echo(strict_json(result, indent=2))
        return
    click.echo(d.render_text(result), nl=False)


# ------------------------------------------------------------------ sweep
SWEEP_COLUMNS = ["pairs", "train", "val", "groups", "prompts", "cer_margin_min", "cer_margin_median",
                 "cer_margin_mean", "sim_margin_min", "sim_margin_median", "sim_margin_mean",
                 "chosen_cer_mean", "rejected_cer_mean", "rejected_reward_mean"]


@click.command()
@click.argument("recipe")
@click.option("--param", "params", multiple=True, metavar="NAME=V1,V2,...",
              help="The swept parameter with its values (exactly one has a list); "
                   "other --param NAME=VALUE are fixed.")
@click.option("--run", "runs", multiple=True, metavar="RUN", help="Only these runs (repeatable).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also plot pairs, groups and median margins against the value (PNG).")
@format_option
@click.pass_context
def sweep(ctx: click.Context, *, recipe: str, params: tuple[str, ...], runs: tuple[str, ...],
          plot_path: str | None, fmt: str) -> None:
    """How many pairs, groups and which CER/SSIM margins survive for each value
    of one RECIPE parameter, without writing a set.

    Example: ttspo sweep pareto --param cer_threshold=0.005,0.01,0.02,0.05
    """
    from ttspo.builder.core.params import parse_assignments
    from ttspo.builder.sets import recipes as r
    from ttspo.builder.sets import sweep as s

    rec = r.load_recipe(recipe)
    name, values, fixed = _swept(parse_assignments(params))
    rows = get_store(ctx).sweep(rec, param=name, values=values, params=fixed, runs=runs)
    emit(rows, fmt, [name, *SWEEP_COLUMNS])
    if plot_path:
        s.plot(rows, name, plot_path, title=f"{rec.name}: sweep over {name}")
        click.echo(f"wrote plot {plot_path}", err=True)


def _swept(assignments: dict[str, str]) -> tuple[str, list[str], dict[str, str]]:
    lists = [k for k, v in assignments.items() if "," in v]
    if len(lists) != 1:
        raise InputError("give exactly one --param NAME=V1,V2,... to sweep "
                         f"(got {len(lists)} lists)")
    name = lists[0]
    values = [v.strip() for v in assignments[name].split(",") if v.strip()]
    fixed = {k: v for k, v in assignments.items() if k != name}
    return name, values, fixed


COMMANDS = [recipes, build, export, diff, sweep]
