"""`ttspo build`: run a recipe and write its pairs as a new version of a set.

A preference set is one Lance table named after the set, in the store beside the
core tables (so ``ttspo versions NAME``, ``ttspo tag NAME ...`` and
``ttspo sql "select * from NAME"`` work on it like on any table). Each build
REPLACES the rows (one Lance Overwrite commit): a version is a complete set,
sorted by its shuffle position.

Each version carries its build record twice: in the commit's lineage (with the
command line) and in the version's schema metadata (key ``ttspo.build``), which
travels with the data through ``ttspo restore``. The record names the recipe, the
SHA-256 of its SQL text, the parameters, the runs, the versions of the tables it
read (``generations`` above all), the seed and the row counts. Exports join
generation details from exactly that ``generations`` version.

Same recipe text, parameters, runs and generations version give the same rows,
bit for bit (the recipes are deterministic; see sql/pareto.sql).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ttspo.builder.core import query  # noqa: F401  (loaded with build_set, not on its first call)
from ttspo.builder.core.errors import StoreError
from ttspo.builder.sets.recipes import Recipe, load_recipe, run_recipe
from ttspo.builder.core.schemas import PAIR, PREFERENCES_SCHEMA
from ttspo.builder.core.store import Lineage, Store, as_lineage, make_lineage, parse_ref

BUILD_KEY = b"ttspo.build"


@dataclass(kw_only=True)
class BuildRecord:
    """What a set version was built from (schema metadata + lineage extras)."""

    recipe: str
    recipe_source: str
    recipe_sha256: str
    params: dict[str, Any]
    seed: Any
    runs: list[str]
    inputs: dict[str, int]  # table -> version read (generations always)
    prompts_version: int | None  # prompts at build time: exports read it
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class BuildResult:
    name: str
    version: int
    record: BuildRecord
    seconds: dict[str, float] = field(default_factory=dict)  # recipe, checks, write

    def summary(self) -> dict[str, Any]:
        c = self.record.counts
        return {"set": self.name, "version": self.version, "recipe": self.record.recipe,
                "pairs": c["pairs"], "train": c["train"], "val": c["val"],
                "groups": c["groups"], "prompts": c["prompts"],
                "generations": self.record.inputs["generations"],
                "recipe_sha256": self.record.recipe_sha256}


def build_set(store: Store, recipe: Recipe | str, name: str, params: dict[str, Any] | None = None,
              *, runs: Sequence[str] = (), lineage: Lineage | None = None) -> BuildResult:
    """Run RECIPE, check its output, and write it as a new version of set NAME.

    Writes nothing if the recipe fails or its output breaks an invariant.
    LINEAGE (default: a "build" lineage of these arguments; the CLI passes its
    command line) gets the versions read and the build record added.
    """
    Store.check_set_name(name)
    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    out = run_recipe(store, recipe, params, runs)
    record = BuildRecord(
        recipe=recipe.name, recipe_source=recipe.source, recipe_sha256=recipe.sha256,
        params=out.params, seed=out.params.get("seed"), runs=sorted(set(runs)),
        inputs=out.inputs, prompts_version=store.version("prompts") if store.exists("prompts") else None,
        counts=count_pairs(out.table))
    lineage = as_lineage(lineage) if lineage is not None else make_lineage("build", {
        "recipe": recipe.source, "name": name, "params": dict(params or {}), "runs": list(runs)})
    extra = {"set": name, "recipe": record.recipe, "recipe_sha256": record.recipe_sha256,
             "params": record.params, "seed": record.seed, "runs": record.runs,
             "counts": record.counts, "prompts_version": record.prompts_version}
    metadata = {BUILD_KEY: record.to_json().encode()}
    schema = PREFERENCES_SCHEMA.with_metadata(metadata)
    table = out.table.replace_schema_metadata(metadata)
    start = time.perf_counter()
    # "overwrite" creates a missing set: whether it exists is decided under the store's
    # lock, so two first builds cannot both "append" (a set holding every pair twice).
    version = store.write(name, table, schema, lineage.with_inputs(out.inputs).with_extra(**extra),
                          mode="overwrite")
    check_committed(store, name, version, table)
    return BuildResult(name, version, record, {**out.seconds, "write": time.perf_counter() - start})


def check_committed(store: Store, name: str, version: int, table: pa.Table) -> None:
    """The version committed holds what was sent (an overwrite under the store's
    lock: a second writer would show as extra rows). From the manifest: no data read."""
    held = store.open(name, version).count_rows()
    if held != table.num_rows:
        raise StoreError(f"set {name}@{version} holds {held} pairs, this build wrote "
                         f"{table.num_rows}: another command wrote the set at the same time; "
                         "build it again")


def count_pairs(table: pa.Table) -> dict[str, int]:
    split = table.column(PAIR.split)
    return {
        "pairs": table.num_rows,
        "train": pc.sum(pc.equal(split, "train")).as_py() or 0,
        "val": pc.sum(pc.equal(split, "val")).as_py() or 0,
        "groups": pc.count_distinct(table.column(PAIR.group_id)).as_py(),
        "prompts": pc.count_distinct(table.column(PAIR.prompt_id)).as_py(),
    }


# ------------------------------------------------------------------ reading
@dataclass
class SetVersion:
    """One version of a set, opened, with its build record."""

    name: str
    version: int
    dataset: Any  # lance.LanceDataset at that version
    record: BuildRecord

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def rows(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The pairs, in shuffle order."""
        table = self.dataset.to_table(columns=list(columns) if columns else None)
        if PAIR.position in table.column_names:
            table = table.sort_by(PAIR.position)
        return table


def open_set(store: Store, ref: str) -> SetVersion:
    """``NAME``, ``NAME@VERSION`` or ``NAME@TAG`` -> the set version and its build record."""
    name, version = parse_ref(ref)
    ds = store.open(name, version)
    return SetVersion(name, ds.version, ds, read_record(ds, ref))


def read_record(ds, ref: str) -> BuildRecord:
    raw = (ds.schema.metadata or {}).get(BUILD_KEY)
    if raw is None:
        raise StoreError(f"'{ref}' is not a preference set built by ttspo (no build record)")
    return BuildRecord(**json.loads(raw))
