"""`ttspo demo`, after ingest: score, build, export, tag, rebuild and diff.

Each step is a small function over the demo state (see builder/demo.py). The
steps leave the store re-runnable: a step whose result is already in the store
says so and writes nothing, as prompts and ingest do.

The corpus is espeak-ng speech scored by pocketsphinx, so CERs are high (about
0.4 even for clean samples) and many samples are short: the demo relaxes
NeMo's thresholds (chosen CER < 0.3, then < 0.5; durations from 1.0 s).
"""

from __future__ import annotations

from ttspo.builder.core.store import make_lineage

SET = "demo-pareto"
TAG = "v1"
SCORE_WHERE = "group_index < 2"  # two groups: a quick real run of every offline backend
# trail_silence runs the VAD (all four silence metrics), mos Distill-MOS: both offline
SCORE_METRICS = ("cer", "wer", "ssim", "pesq", "mos", "trail_silence")
FIRST = {"cer_threshold": 0.3, "min_duration": 1.0, "val_size": 1, "seed": 0}
SECOND = {**FIRST, "cer_threshold": 0.5}


def _param_args(params: dict) -> list[str]:
    return [w for k, v in params.items() for w in ("--param", f"{k}={v}")]


def _scored_before(store) -> int | None:
    """The generations version a previous demo's score step wrote, if any."""
    for v in store.versions("generations"):
        if v["command"] == "score" and v["lineage"].get("demo"):
            return v["version"]
    return None


def step_score(demo) -> None:
    """Score a slice again with the offline models: pocketsphinx, resemblyzer, PESQ,
    Distill-MOS and silero-vad."""
    from ttspo.builder.scoring.run import ScoreOptions, describe, score

    store = demo.store
    demo.command("score", "--metrics", ",".join(SCORE_METRICS), "--where", SCORE_WHERE,
                  "--rescore")
    done = _scored_before(store)
    if done is not None:
        demo.say(f"already scored by an earlier demo run in generations@{done}; nothing written")
        before = done - 1
    else:
        before = store.version("generations")
        options = ScoreOptions(metrics=SCORE_METRICS, where=SCORE_WHERE, rescore=True)
        summary = score(store, options, lineage=make_lineage(
            "score", {"metrics": ",".join(SCORE_METRICS), "where": SCORE_WHERE,
                      "rescore": True}, demo=True))
        demo.say(describe(summary))
    demo.say(f"The JSON metrics NeMo's step wrote (generations@{before}) against ttspo's "
             "scores of the same audio (latest version), and PESQ against each prompt's "
             "reference recording:")
    _table(demo, f"""
        SELECT b.generation_id, round(a.cer, 3) AS json_cer, round(b.cer, 3) AS cer,
               round(a.ssim, 3) AS json_ssim, round(b.ssim, 3) AS ssim,
               round(b.pesq, 2) AS pesq, round(b.mos, 2) AS mos,
               round(b.trail_silence, 2) AS trail_s, b.pred_transcript
        FROM "generations@{before}" a JOIN generations b USING (generation_id)
        WHERE b.{SCORE_WHERE} ORDER BY b.group_index, b.sample_index""")
    for metric in ("cer", "ssim"):
        demo.say(f"Worst three scored generations by {metric.upper()}:")
        _table(demo, f"""
            SELECT generation_id, round({metric}, 3) AS {metric}, text, pred_transcript
            FROM generations WHERE {metric} IS NOT NULL AND NOT invalid
            ORDER BY {metric} {'DESC' if metric == 'cer' else 'ASC'}, generation_id LIMIT 3""")


def step_build(demo) -> None:
    """Step 3: build a Pareto preference set with a SQL recipe, export it for NeMo, tag it."""
    from ttspo.builder.sets.build import build_set
    from ttspo.builder.sets.export import export_nemo

    store = demo.store
    demo.command("build", "pareto", "--name", SET, *_param_args(FIRST))
    if store.exists(SET) and TAG in store.tags(SET):
        version = store.tags(SET)[TAG]
        demo.say(f"{SET} is already built and tagged {TAG} (version {version}); nothing written")
    else:
        result = build_set(store, "pareto", SET, FIRST, lineage=_lineage("build", FIRST))
        version = result.version
        s = result.summary()
        demo.say(f"built {SET}@{version}: {s['pairs']} pairs ({s['train']} train, {s['val']} val) "
                 f"from {s['groups']} groups of generations@{s['generations']}; recipe sha256 "
                 f"{s['recipe_sha256'][:12]}")
        demo.command("tag", SET, str(version), TAG)
        store.tag(SET, version, TAG)
        demo.say(f"tagged {SET} version {version} as {TAG}")
    _table(demo, f"""
        SELECT split, chosen_id, rejected_id, round(chosen_cer, 3) AS chosen_cer,
               round(rejected_cer, 3) AS rejected_cer, round(chosen_ssim, 3) AS chosen_ssim,
               round(rejected_ssim, 3) AS rejected_ssim, round(rejected_reward, 3) AS rejected_reward
        FROM "{SET}@{TAG}" ORDER BY position""")
    out = store.root / "demo" / "nemo_manifests"
    demo.command("export", "nemo", f"{SET}@{TAG}", "--out", str(out))
    exported = export_nemo(store, f"{SET}@{TAG}", out)
    demo.say(f"wrote {', '.join(exported.files)}: chosen line then rejected line per pair, "
             "ready for NeMo's MagpieTTSDatasetDPO")


def step_rebuild(demo) -> None:
    """Re-threshold in seconds without touching a file, then ask why the set changed."""
    from ttspo.builder.sets.build import build_set
    from ttspo.builder.sets.diff import diff, render_text

    store = demo.store
    demo.command("build", "pareto", "--name", SET, *_param_args(SECOND))
    latest = store.open(SET).version
    if latest > store.tags(SET)[TAG]:
        demo.say(f"{SET}@{latest} was rebuilt by an earlier demo run; nothing written")
    else:
        result = build_set(store, "pareto", SET, SECOND, lineage=_lineage("build", SECOND))
        demo.say(f"built {SET}@{result.version}: {result.summary()['pairs']} pairs with "
                 f"cer_threshold {SECOND['cer_threshold']}")
    demo.command("diff", f"{SET}@{TAG}", SET)
    demo.echo(render_text(diff(store, f"{SET}@{TAG}", SET)).rstrip("\n"))


def _lineage(command: str, params: dict):
    """A build lineage, marked as the demo's."""
    return make_lineage(command, {"recipe": "pareto", "name": SET, "params": params}, demo=True)


def _table(demo, sql: str) -> None:
    from ttspo.builder.core import query
    from ttspo.builder.core.render import render_table

    table, _ = query.run(demo.store, sql)
    demo.echo(render_table(table.to_pylist(), table.column_names).rstrip("\n"))
    demo.say()
