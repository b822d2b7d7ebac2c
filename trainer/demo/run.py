"""`ttspo demo`: the whole workflow on the bundled corpus, saying what each step does.

The corpus (``trainer/demo/corpus``, shipped as package data) is real speech in
NeMo's layout: 20 text-context pairs x 6 espeak-ng generations with the
failures real TTS makes, their codec codes and metrics (see its
``make_corpus.py``). The demo copies it into ``<store>/demo/`` (so the store
and the audio it points at stay together), rewrites the context paths to
absolute ones there, and runs the steps in :data:`STEPS` in order.

Each step is a small function taking the :class:`Demo` state: it prints what it
does and the equivalent ``ttspo`` command, then records what later steps need in
``demo.facts``. Later capabilities add their step to :data:`STEPS` (score,
build, export, tag, diff ...: demo_sets.py), after the ones whose facts they read.

Re-running on the same store is safe and shows ttspo's idempotence: prompts and
ingest find everything present and make no new version.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ttspo.trainer.demo import grpo as demo_grpo
from ttspo.trainer.demo import loop as demo_loop
from ttspo.trainer.demo import review as demo_review
from ttspo.trainer.demo import sets as demo_sets
from ttspo.trainer.demo import train as demo_train
from ttspo.builder.core.errors import InputError

CORPUS = Path(__file__).resolve().parent / "corpus"
DEFAULT_STORE = "ttspo-demo-store"
WORK_DIR = "demo"  # inside the store folder: the corpus copy and the manifest
RUN = "base"  # the run name of the bundled generations (a base checkpoint's samples)
# Files and folders of the corpus that the steps read (make_corpus.py is not needed).
CORPUS_ITEMS = ("challenging_texts.txt", "regular_texts_for_audiocontext.txt",
                "regular_texts_for_textcontext.txt", "text_contexts.txt",
                "audio_contexts.jsonl", "reference_audios.jsonl", "manifest.json",
                "corpus.json", "variants.jsonl", "contexts", "references", "generations")
# Manifest fields that hold corpus-relative paths in the committed files.
PATH_FIELDS = ("audio_filepath", "context_audio_filepath", "context_audio_codes_path",
               "target_audio_codes_path", "reference_audio_filepath")


@dataclass(kw_only=True)
class Demo:
    """What the steps share: where things are, how to print, what earlier steps found."""

    store: Any  # ttspo.builder.core.store.Store
    corpus: Path  # the demo's copy of the corpus, under the store
    config: dict  # corpus.json
    echo: Callable[[str], None]
    facts: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str = "") -> None:
        self.echo(text)

    def command(self, *args: str) -> None:
        """Print the ttspo command line that does what the step just did."""
        words = ["ttspo", "--store", str(self.store.root), *args]
        self.echo("  $ " + " ".join(shell_quote(w) for w in words))

    def path(self, name: str) -> Path:
        return self.corpus / name


# ------------------------------------------------------------------- steps
def step_corpus(demo: Demo) -> None:
    """Copy the bundled corpus under the store and make its context paths absolute."""
    src = demo.facts["source"]
    copy_corpus(src, demo.corpus)
    for name in ("audio_contexts.jsonl", "reference_audios.jsonl"):
        absolutize_jsonl(demo.path(name), demo.corpus)
    manifest = read_jsonl(demo.path("manifest.json"))
    contexts = read_jsonl(demo.path("audio_contexts.jsonl"))
    gens = sorted(demo.path("generations/audios").glob("*.wav"))
    size = sum(p.stat().st_size for p in demo.corpus.rglob("*") if p.is_file())
    demo.say(f"copied the bundled corpus ({size / 1e6:.1f} MB) to {demo.corpus}")
    demo.say(f"  {len(contexts)} audio contexts (espeak-ng voices), "
             f"{len(manifest) // demo.config['nsamples_perpair']} text-context pairs, "
             f"{len(gens)} generated wavs with codes and metrics in NeMo's layout "
             f"({demo.config['ranks']} ranks)")
    demo.say(f"  metrics by {demo.config['asr']} (CER/WER) and {demo.config['speaker_model']} "
             f"(SSIM); codes by the built-in codec {demo.config['codec']['fingerprint']}")
    demo.say("  context paths rewritten to absolute paths in audio_contexts.jsonl and "
             "reference_audios.jsonl")


def step_prompts(demo: Demo) -> None:
    """Step 1: draw the text-context pairs (seeded) into `prompts` and write the manifest."""
    from ttspo.builder.prompts import draw as api
    from ttspo.builder.core.store import make_lineage

    cfg = demo.config
    files = {k: demo.path(v) for k, v in PROMPT_FILES.items()}
    draw = api.draw_pairs(files, api.PairCounts(**cfg["counts"]), cfg["seed"])
    check_reproduces(draw.records, cfg["nsamples_perpair"], demo.corpus,
                     demo.path("manifest.json"))
    manifest = demo.corpus / "pairs.json"
    args = {"seed": cfg["seed"], "nsamples_perpair": cfg["nsamples_perpair"], **cfg["counts"],
            **{k: str(v) for k, v in files.items()}, "manifest_out": str(manifest)}
    result, staged = api.commit_draw(demo.store, draw,
                                     make_lineage("prompts", args, demo=True),
                                     manifest, nsamples_perpair=cfg["nsamples_perpair"])
    lines = staged.lines
    demo.command("prompts", *prompt_cli_args(files, cfg, manifest))
    where = (f"prompts@{result.version}" if result.version is not None
             else "no new version (all present)")
    demo.say(f"drew {result.pairs} pairs with seed {cfg['seed']} ({result.distinct} distinct): "
             f"{result.new} new rows -> {where}")
    demo.say(f"wrote the NeMo manifest {manifest} ({lines} lines); it reproduces the "
             "committed manifest.json line for line")
    demo.facts.update(manifest=manifest, pairs=result.pairs, prompts_version=result.version)


def step_ingest(demo: Demo) -> None:
    """Step 2 in: ingest NeMo's generation folder against the manifest."""
    from ttspo.builder.ingest.run import ingest_nemo
    from ttspo.builder.core.store import make_lineage

    gen_dir, manifest = demo.path("generations"), demo.facts["manifest"]
    group = demo.config["nsamples_perpair"]
    lineage = make_lineage("ingest nemo", {"gen_dir": str(gen_dir), "manifest": str(manifest),
                                           "run": RUN, "group_size": group}, demo=True)
    result = ingest_nemo(demo.store, gen_dir, manifest, run=RUN, group_size=group,
                         lineage=lineage)
    demo.command("ingest", "nemo", str(gen_dir), "--manifest", str(manifest), "--run", RUN,
                 "--group-size", str(group))
    if result.ingested:
        demo.say(f"ingested {result.ingested} generations ({result.groups} groups) of run "
                 f"{RUN} into generations@{result.version}: audio path, int16 codes, metrics "
                 "and transcripts per row, in one commit")
    else:
        demo.say(f"nothing to ingest: the {result.present} generations of run {RUN} are "
                 f"already in generations@{result.version}")
    demo.facts.update(run=RUN, generations_version=result.version)


def step_summaries(demo: Demo) -> None:
    """A few DuckDB queries over the tables (the kind `ttspo sql` runs)."""
    from ttspo.builder.core import query
    from ttspo.builder.core.render import render_table

    for title, sql, note in SUMMARIES:
        table, versions = query.run(demo.store, sql)
        read = ", ".join(f"{k}@{v}" for k, v in sorted(versions.items()))
        demo.say(f"{title} (read {read}):")
        demo.command("sql", " ".join(sql.split()))
        demo.echo(render_table(table.to_pylist(), table.column_names).rstrip("\n"))
        if note:
            demo.say(note)
        demo.say()


# SQL summaries: (title, query, note printed under the table). Invalid rows
# (NeMo's "<INVALID>" ASR failures) carry placeholder metrics, so means leave
# them out and count them instead.
SUMMARIES = (
    ("Mean CER and SSIM per record type (invalid rows left out of the means)", """
        SELECT record_type,
               CASE WHEN context_text IS NULL THEN 'audio' ELSE 'text' END AS context,
               count(*) AS generations,
               count(*) FILTER (WHERE invalid) AS invalid,
               round(avg(cer) FILTER (WHERE NOT invalid), 3) AS mean_cer,
               round(avg(ssim) FILTER (WHERE NOT invalid), 3) AS mean_ssim,
               round(avg(duration), 2) AS mean_duration
        FROM generations GROUP BY ALL ORDER BY ALL""",
     "(as in NeMo, a text-context generation's SSIM compares it with the manifest's dummy "
     "audio_filepath, the first audio context)"),
    ("Worst five generations by CER", """
        SELECT generation_id, round(cer, 3) AS cer, round(ssim, 3) AS ssim,
               round(duration, 2) AS duration, text, pred_transcript
        FROM generations WHERE NOT invalid
        ORDER BY cer DESC, generation_id LIMIT 5""", None),
    ("Groups with invalid rows (NeMo's recipe skips the whole group)", """
        SELECT group_id, any_value(text) AS text, count(*) FILTER (WHERE invalid) AS invalid,
               count(*) AS samples
        FROM generations GROUP BY group_id HAVING bool_or(invalid) ORDER BY group_id""", None),
    ("Exact (CER, SSIM) ties inside a group (NeMo's Pareto loop never ends on these)", """
        SELECT group_id, round(cer, 3) AS cer, round(ssim, 3) AS ssim, count(*) AS tied,
               string_agg(CAST(sample_index AS VARCHAR), ',' ORDER BY sample_index) AS samples
        FROM generations WHERE NOT invalid
        GROUP BY group_id, cer, ssim HAVING count(*) > 1 ORDER BY group_id""",
     "(ttspo's recipes rank tied samples on one Pareto front)"),
)

# The steps, in order; a step reads what earlier ones left in demo.facts. Later
# capabilities keep their steps in their own module (demo_sets.py: score, build,
# rebuild) and list them here.
STEPS: list[tuple[str, Callable[[Demo], None]]] = [
    ("corpus", step_corpus),
    ("prompts", step_prompts),
    ("ingest", step_ingest),
    ("summaries", step_summaries),
    ("score", demo_sets.step_score),
    ("build", demo_sets.step_build),
    ("train", demo_train.step_train),
    ("review", demo_review.step_review),
    ("rebuild", demo_sets.step_rebuild),
    ("grpo", demo_grpo.step_grpo),
    # last: its generated runs would otherwise be in the generations the rebuild reads
    ("loop", demo_loop.step_loop),
]


# ----------------------------------------------------------------- running
def run_demo(store_dir: str | Path = DEFAULT_STORE, echo: Callable[[str], None] = print,
             steps: list[tuple[str, Callable[[Demo], None]]] | None = None) -> Demo:
    """Run STEPS (default: all) on the bundled corpus into the store at STORE_DIR."""
    from ttspo.builder.core.store import Store

    store = Store(store_dir)
    demo = Demo(store=store, corpus=store.root / WORK_DIR, config=load_config(CORPUS),
                echo=echo, facts={"source": CORPUS})
    steps = STEPS if steps is None else steps
    echo(f"ttspo demo: store {store.root}")
    start = time.monotonic()
    for number, (name, step) in enumerate(steps, start=1):
        echo("")
        echo(f"== {number}/{len(steps)} {name}: {(step.__doc__ or '').strip().splitlines()[0]}")
        began = time.monotonic()
        step(demo)
        demo.facts.setdefault("seconds", {})[name] = time.monotonic() - began
    echo(f"demo done in {time.monotonic() - start:.1f} s; explore it with "
         f"ttspo --store {shlex.quote(str(store.root))} tables | sql | versions")
    return demo


# ----------------------------------------------------------------- helpers
PROMPT_FILES = {
    "challenging_texts": "challenging_texts.txt",
    "regular_texts_for_audiocontext": "regular_texts_for_audiocontext.txt",
    "regular_texts_for_textcontext": "regular_texts_for_textcontext.txt",
    "audio_contexts": "audio_contexts.jsonl",
    "text_contexts": "text_contexts.txt",
    "reference_audios": "reference_audios.jsonl",
}


def prompt_cli_args(files: dict[str, Path], cfg: dict, manifest: Path) -> list[str]:
    args = []
    for key, path in files.items():
        args += ["--" + key.replace("_", "-"), str(path)]
    option = {"audio_per_challenging": "--audio-contexts-per-challenging",
              "text_per_challenging": "--text-contexts-per-challenging",
              "audio_per_regular": "--audio-contexts-per-regular",
              "text_per_regular": "--text-contexts-per-regular"}
    for key, value in cfg["counts"].items():
        args += [option[key], str(value)]
    return args + ["--seed", str(cfg["seed"]), "--nsamples-perpair",
                   str(cfg["nsamples_perpair"]), "--manifest-out", str(manifest)]


def shell_quote(word: str) -> str:
    """Quote WORD for a POSIX shell, readably: SQL with 'strings' goes in double quotes."""
    if "'" in word and not any(c in word for c in '"$`\\!'):
        return '"' + word + '"'
    return shlex.quote(word)


def load_config(corpus: Path) -> dict:
    path = corpus / "corpus.json"
    if not path.is_file():
        raise InputError(f"{path}: the bundled demo corpus is missing (reinstall ttspo)")
    return json.loads(path.read_text())


def copy_corpus(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in CORPUS_ITEMS:
        if (src / name).is_dir():
            shutil.copytree(src / name, dest / name, dirs_exist_ok=True)
        else:
            shutil.copyfile(src / name, dest / name)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def absolutize_jsonl(path: Path, base: Path) -> None:
    """Rewrite the relative path fields of a JSON-lines file as absolute under BASE
    (idempotent: absolute paths are left as they are)."""
    records = read_jsonl(path)
    for record in records:
        for key in PATH_FIELDS:
            if isinstance(record.get(key), str):
                record[key] = str(base / record[key])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def relativize(record: dict, base: Path) -> dict:
    prefix = str(base) + "/"
    return {k: (v[len(prefix):] if k in PATH_FIELDS and isinstance(v, str)
                and v.startswith(prefix) else v) for k, v in record.items()}


def check_reproduces(records: list[dict], nsamples: int, base: Path, committed: Path) -> None:
    """The seeded draw must give the committed manifest back, or the bundled
    generations would be ingested against the wrong texts."""
    ours = [json.dumps(relativize(r, base)) for r in records for _ in range(nsamples)]
    theirs = committed.read_text().splitlines()
    for number, (a, b) in enumerate(zip(ours, theirs), start=1):
        if a != b:
            raise InputError(f"{committed}:{number}: the seeded draw differs from the "
                             "committed manifest (was the corpus regenerated with other inputs?)")
    if len(ours) != len(theirs):
        raise InputError(f"{committed}: {len(theirs)} lines, the seeded draw makes {len(ours)}")
