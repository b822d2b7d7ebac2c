"""The notebook API's data half: one object per store, with the data operations the CLI offers.

    import ttspo
    store = ttspo.Store("ttspo-store")
    store.sql("SELECT run, avg(cer) AS cer FROM generations GROUP BY run")  # polars
    store.build("pareto", name="prefs", params={"cer_threshold": 0.01})

Every ``ttspo`` command is a thin layer over a method here: options are
keyword-only, results are the dataclasses the builder returns (``BuildResult``,
``IngestResult`` ...), and query results are polars DataFrames (``query`` gives
the Arrow table). What the CLI and a notebook must agree on lives here, once:
resolving a tag or a version, typing parameters (``ttspo.builder.core.params``),
refusing outputs inside the store's tables, writing result files atomically,
and refusing to read a store that does not exist (a typo would otherwise read as
an empty store). Writers record lineage: the CLI passes its command line, a
notebook call records the method's name and arguments.

``store.core`` is the underlying ``ttspo.builder.core.store.Store`` (open a
table at a version as a Lance dataset, read its lineage, ...). ``ttspo.Store`` is
this class with the trainer's methods mixed in (generate, precompute_ref,
train_dpo, train_grpo: ``ttspo.trainer.api``), assembled by ``ttspo/__init__.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ttspo.builder.core.errors import InputError, StoreError
from ttspo.builder.core.store import Lineage, as_lineage, default_store_path, make_lineage
from ttspo.builder.core.store import Store as CoreStore
from ttspo.builder.scoring.options import DEFAULTS as SCORE

RESULT_FORMATS = (".parquet", ".csv", ".json")


class Store:
    """A ttspo store (a folder of versioned Lance tables), for notebooks and scripts.

    PATH defaults to the CLI's: $TTSPO_STORE, else ./ttspo-store. Constructing one
    touches nothing: writers create the folder, readers refuse a folder that does
    not exist.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.core = CoreStore(default_store_path() if path is None else path)

    @property
    def root(self) -> Path:
        return self.core.root

    def __repr__(self) -> str:
        return f"ttspo.Store({str(self.root)!r})"

    def __getattr__(self, name: str):
        # Code written against the core store (open, write, lineage ...) gets told where it is.
        if not name.startswith("_") and hasattr(CoreStore, name):
            raise AttributeError(f"ttspo.Store has no '{name}'; the core store's is "
                                 f"store.core.{name} (ttspo.builder.core.store.Store)")
        if type(self) is Store:  # the data half alone, not ttspo.Store
            raise AttributeError(f"ttspo.builder.api.Store has no '{name}': it is the data half; "
                                 "ttspo.Store adds the trainer's methods (ttspo.trainer.api)")
        raise AttributeError(f"'ttspo.Store' object has no attribute '{name}'")

    # ------------------------------------------------------------ reading
    def sql(self, query: str, /, **params: Any):
        """Run a read-only DuckDB query over the store: a polars DataFrame.

        ``$name`` placeholders take the keyword arguments. Tables are views at
        their latest version; ``"generations@12"`` / ``"generations@v1"`` (quoted)
        reach an older version or a tag.
        """
        import polars as pl

        return pl.from_arrow(self.query(query, params))

    def query(self, query: str, params: dict[str, Any] | None = None):
        """:meth:`sql` as a pyarrow Table (column names made distinct)."""
        from ttspo.builder.core import query as q
        from ttspo.builder.core.params import checked_value

        self._require()
        values = {k: checked_value(k, v) for k, v in (params or {}).items()}  # typed already
        return q.run(self.core, query, values)[0]

    def save_sql(self, query: str, out: str | os.PathLike, /, **params: Any) -> int:
        """Write a query's result to OUT (.parquet, .csv or .json, atomically);
        returns the number of rows."""
        path = self.check_output(out, suffixes=RESULT_FORMATS)
        result = self.query(query, params)
        write_result(result, path)
        return result.num_rows

    def tables(self) -> list[dict[str, Any]]:
        """One row per table: table, rows, version (latest), tags."""
        self._require()
        rows = []
        for name in self.core.tables():
            ds = self.core.open(name)
            rows.append({"table": name, "rows": ds.count_rows(), "version": ds.version,
                         "tags": sorted(self.core.tags(name))})
        return rows

    def versions(self, table: str) -> list[dict[str, Any]]:
        """One row per version of TABLE: version, time (UTC), command, rows, tags, lineage."""
        self._require()
        tags = self.core.tags(table)
        out = []
        for v in self.core.versions(table):
            here = sorted(name for name, ver in tags.items() if ver == v["version"])
            out.append({**{k: v[k] for k in ("version", "time", "command", "rows")},
                        "tags": here, "lineage": v["lineage"]})
        return out

    def resolve(self, table: str, version: int | str) -> int:
        """A version number or a tag of TABLE -> the version number (StoreError if unknown)."""
        self._require()
        text = str(version)
        if not text.isdigit():
            return self.core.open(table, text).version  # a tag
        known = [v["version"] for v in self.core.open(table).versions()]
        if int(text) not in known:
            raise StoreError(self.core.removed_by_gc(table, int(text)) or
                             f"table '{table}' has no version {text} (latest is {max(known)})")
        return int(text)

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """What changed from ref A to ref B (two set versions, or two of generations)."""
        from ttspo.builder.sets.diff import diff

        self._require()
        return diff(self.core, a, b)

    def sweep(self, recipe: str, *, param: str, values: Sequence[Any],
              params: dict[str, Any] | None = None, runs: Sequence[str] = ()) -> list[dict[str, Any]]:
        """For each value of PARAM, the set RECIPE would build, summarised (nothing written)."""
        from ttspo.builder.sets.sweep import sweep

        self._require()
        return sweep(self.core, recipe, param, list(values), params=params, runs=runs)

    # ------------------------------------------------------------ writing
    def tag(self, table: str, version: int | str, name: str) -> int:
        """Name VERSION (a number or an existing tag) of TABLE; returns the version number."""
        number = self.resolve(table, version)
        self.core.tag(table, number, name)
        return number

    def restore(self, table: str, version: int | str, *, lineage: Lineage | None = None) -> int:
        """Make VERSION the latest again, as a new version (history is kept); returns it."""
        number = self.resolve(table, version)
        lineage = lineage or make_lineage("restore", {"table": table, "version": str(version)})
        return self.core.restore(table, number, as_lineage(lineage).with_inputs({table: number}))

    def prompts(self, *, challenging_texts=None, regular_texts_for_audiocontext=None,
                regular_texts_for_textcontext=None, audio_contexts=None, text_contexts=None,
                reference_audios=None, counts=None, seed: int = 0, manifest_out=None,
                nsamples_perpair: int = 6, lineage: Lineage | None = None):
        """Step 1: draw text-context pairs into `prompts` (and the NeMo manifest MANIFEST_OUT).
        COUNTS is a ``PairCounts`` (default: NeMo's counts). Returns (PromptsWrite, the
        manifest written or None, the drawn records)."""
        from ttspo.builder.prompts import draw

        given = dict(challenging_texts=challenging_texts,
                     regular_texts_for_audiocontext=regular_texts_for_audiocontext,
                     regular_texts_for_textcontext=regular_texts_for_textcontext,
                     audio_contexts=audio_contexts, text_contexts=text_contexts,
                     reference_audios=reference_audios)
        paths = {k: v for k, v in given.items() if v is not None}
        counts = counts or draw.PairCounts()
        lineage = lineage or make_lineage("prompts", {
            **{k: str(v) for k, v in paths.items()}, **vars(counts), "seed": seed,
            "manifest_out": None if manifest_out is None else str(manifest_out),
            "nsamples_perpair": nsamples_perpair})
        if manifest_out is not None:
            self.check_output(manifest_out)
        pairs = draw.draw_pairs(paths, counts, seed)
        result, staged = draw.commit_draw(self.core, pairs, lineage, manifest_out,
                                          nsamples_perpair=nsamples_perpair)
        return result, staged, pairs.records

    def ingest_nemo(self, gen_dir: str | os.PathLike, *, manifest: str | os.PathLike,
                    run: str | None = None, group_size: int | None = None,
                    on_error: str = "fail", embed_audio: bool = False,
                    workers: int | None = None, progress: bool = False,
                    lineage: Lineage | None = None):
        """Ingest a NeMo generation folder against its text-context manifest (IngestResult).
        With workers > 1 a script needs ``if __name__ == "__main__":`` (spawned readers)."""
        from ttspo.builder.ingest.run import ingest_nemo

        return ingest_nemo(self.core, gen_dir, manifest, run=run, group_size=group_size,
                           on_error=on_error, embed_audio=embed_audio, lineage=lineage,
                           workers=workers, progress=progress)

    def ingest_jsonl(self, file: str | os.PathLike, *, run: str | None = None,
                     on_error: str = "fail", embed_audio: bool = False,
                     progress: bool = False, lineage: Lineage | None = None,
                     codec: str | None = None):
        """Ingest one generation per JSON line (IngestResult). CODEC (``nemo:PATH.nemo``)
        encodes the audio of lines that have no codes_path."""
        from ttspo.builder.ingest.run import ingest_jsonl

        return ingest_jsonl(self.core, file, run=run, on_error=on_error,
                            embed_audio=embed_audio, lineage=lineage, progress=progress,
                            codec=load_codec(codec) if codec else None)

    def score(self, *, metrics: str | Sequence[str] = SCORE.metrics, asr: str = SCORE.asr,
              sv: str = SCORE.sv, squim: str | None = SCORE.squim,
              normalizer: str = SCORE.normalizer, where: str | None = SCORE.where,
              rescore: bool = SCORE.rescore, batch_size: int = SCORE.batch_size,
              workers: int = 1, lineage: Lineage | None = None):
        """Score generations that lack METRICS, in ONE new version (ScoreSummary).
        Defaults are ScoreOptions' (the CLI's too)."""
        from ttspo.builder.scoring.options import options_from
        from ttspo.builder.scoring.run import score

        options = options_from(metrics, asr=asr, sv=sv, squim=squim, normalizer=normalizer,
                               where=where, rescore=rescore, batch_size=batch_size)
        return score(self.core, options, workers=workers, lineage=lineage)

    def build(self, recipe: str, *, name: str, params: dict[str, Any] | None = None,
              runs: Sequence[str] = (), lineage: Lineage | None = None):
        """Run RECIPE (a built-in name or a .sql path) and write its checked pairs as
        a new version of set NAME (BuildResult). PARAMS may be text (typed like the
        recipe's defaults) or values."""
        from ttspo.builder.sets.build import build_set

        return build_set(self.core, recipe, name, params, runs=runs, lineage=lineage)

    def export_nemo(self, ref: str, *, out: str | os.PathLike, codes_dtype: str = "int32",
                    copy_codes: bool = False):
        """Write set REF (NAME, NAME@VERSION, NAME@TAG) as NeMo DPO manifests in folder OUT,
        naming every generation's codes as a CODES_DTYPE (int32 | int64) file in
        STORE/codes (written once, by the first export that needs it). COPY_CODES: copy
        them into OUT/codes and name the copies (a folder to move to another machine)."""
        from ttspo.builder.sets.export import export_nemo

        self._require()
        return export_nemo(self.core, ref, self.check_output(out), codes_dtype=codes_dtype,
                           copy_codes=copy_codes)

    def export_trl(self, ref: str, *, out: str | os.PathLike):
        """Write set REF as OUT.parquet or OUT.jsonl, one row per pair."""
        from ttspo.builder.sets.export import export_trl

        self._require()
        return export_trl(self.core, ref, self.check_output(out))

    # -------------------------------------------------------------- compare
    def compare(self, runs: Sequence[str], *, metrics: Sequence[str] | None = None,
                seed: int = 0, n_boot: int = 1000, n_perm: int = 1000,
                confidence: float = 0.95, generations: str = "generations",
                prompts: str | None = None, where: str | None = None,
                plot: str | os.PathLike | None = None, summary: bool = False):
        """Each run after the first against the first, per metric and breakdown: a
        polars DataFrame from the compare_runs SQL macro (ttspo.builder.analysis.compare).
        METRICS: registered names, or any numeric column as ``NAME:lower|higher``.
        PROMPTS (a prompts version, e.g. ``prompts@test-clean``) and WHERE (a condition
        on generations) narrow the rows to a test set. SUMMARY: instead, each run's mean
        and bootstrap interval per metric (the run_summary macro: a paper's table).
        PLOT: also draw the per-prompt differences to that PNG file."""
        from ttspo.builder.analysis import compare as c

        self._require()
        test_set = dict(generations=generations, prompts=prompts, where=where)
        if summary:
            return c.run_summaries(self.core, runs, metrics=metrics, seed=seed, n_boot=n_boot,
                                   confidence=confidence, **test_set)
        table = c.compare_runs(self.core, runs, metrics=metrics, seed=seed, n_boot=n_boot,
                               n_perm=n_perm, confidence=confidence, **test_set)
        if plot is not None:
            per_prompt = c.prompt_differences(self.core, runs, metrics=metrics, **test_set)
            c.plot_differences(per_prompt, self.check_output(plot))
        return table

    # ------------------------------------------------------------- checks
    def _require(self) -> None:
        """Reading a store that does not exist is an error, not an empty result."""
        if not self.root.is_dir():
            what = "not a folder" if self.root.exists() else "no such folder"
            raise StoreError(f"no store at {self.root} ({what}; check --store)")

    def check_output(self, out: str | os.PathLike, suffixes: Sequence[str] = ()) -> Path:
        """OUT, if a result may be written there: never inside one of the store's
        tables (a tag file or manifest overwritten would break the table)."""
        path = Path(out)
        if suffixes and path.suffix.lower() not in suffixes:
            raise InputError(f"{out}: unknown output format '{path.suffix}' "
                             f"(use {', '.join(suffixes)})")
        if suffixes and not path.parent.is_dir():
            raise InputError(f"{out}: directory {path.parent} does not exist")
        target, root = Path(os.path.realpath(path)), Path(os.path.realpath(self.root))
        if target == root or root in target.parents:
            inside = target.relative_to(root).parts
            if inside and inside[0].endswith(".lance"):
                raise InputError(f"{out}: is inside the store's table "
                                 f"'{inside[0][:-len('.lance')]}'; write outputs elsewhere")
        return path

    # ------------------------------------------------------------ lifecycle
    def compact(self, table: str | None = None, *, wait: float = 60.0,
                lineage: Lineage | None = None):
        """Merge TABLE's small fragments (every table's when None) into one new version
        each, carrying lineage; rows and row ids unchanged. A list of TableCompaction.
        Waits up to WAIT seconds for running writers of those tables, then refuses."""
        from ttspo.builder.core.lifecycle import compact

        self._require()
        lineage = lineage or make_lineage("compact", {"table": table, "wait": wait})
        return compact(self.core, table, wait=wait, lineage=as_lineage(lineage))

    def gc(self, table: str | None = None, *, keep_last: int | None = None,
           older_than: str | None = None, dry_run: bool = False, force: bool = False,
           wait: float = 60.0, lineage: Lineage | None = None):
        """Remove old versions of TABLE (every table's when None): a GcResult. Never the
        latest, a tagged version, or one a row or lineage names (FORCE: those too).
        Neither KEEP_LAST nor OLDER_THAN (``7d``, ``12h``, ``30m``): keep the last 10
        and any younger than 7 days; one of them alone is the whole rule."""
        from ttspo.builder.core import lifecycle as lc

        self._require()
        policy = lc.policy_of(keep_last, older_than)
        lineage = lineage or make_lineage("gc", {
            "table": table, "keep_last": keep_last, "older_than": older_than,
            "dry_run": dry_run, "force": force, "wait": wait})
        return lc.gc(self.core, table, policy=policy, dry_run=dry_run, force=force, wait=wait,
                     lineage=as_lineage(lineage))


def recipes(recipe: str | None = None) -> list[dict[str, Any]]:
    """The built-in recipes (recipe, parameters, sha256), or RECIPE's parameters
    (parameter, default, required, description); RECIPE: a name or a .sql path."""
    from ttspo.builder.sets import recipes as r

    if recipe is None:
        return [{"recipe": name, "parameters": ", ".join(sorted(rec.params)),
                 "sha256": rec.sha256[:12]}
                for name in r.builtin_names() for rec in [r.load_recipe(name)]]
    rec = r.load_recipe(recipe)
    return [{"parameter": p.name, "default": p.default if p.has_default else None,
             "required": not p.has_default, "description": p.description}
            for p in sorted(rec.params.values(), key=lambda p: p.name)]


def write_result(result, path: Path) -> None:
    """A query result as PATH (.parquet, .csv or .json), atomically."""
    from ttspo.builder.core.files import atomic_write, write_text_atomic
    from ttspo.builder.core.render import render

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        with atomic_write(path, "wb") as fh:
            pq.write_table(result, fh)
        return
    text = render(result.to_pylist(), "csv" if suffix == ".csv" else "json", result.column_names)
    write_text_atomic(path, text)


def load_codec(spec: str):
    """The codec SPEC names (``nemo:PATH.nemo``): codecs are the trainer's, so the
    loader is found through the registry, not imported."""
    import ttspo

    return ttspo.registered(ttspo.CODEC_LOADER)(spec)

