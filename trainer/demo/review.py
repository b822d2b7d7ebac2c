"""`ttspo demo`, after the DPO run: what the run never learned, labels, a refined set.

The run wrote each pair's margin per epoch to ``pair_dynamics``; the cartography
macros (sql/macros.sql) summarise it. A SCRIPTED labeler stands in for a person at
`ttspo serve`'s page: it is named ``script:prefer-shorter`` in every labels row and
in the lineage, hears nothing, and picks the shorter of two generations shown in a
seeded random order. The refine recipe (sql/refine.sql) then rebuilds the set from
the tagged version minus what the run never learned and what the labels contradict,
plus the pairs the labeler chose, and `ttspo diff` says why each pair moved.
A re-run finds the labels and the refined set and writes nothing.
"""

from __future__ import annotations

import random
from pathlib import Path

from ttspo.builder.core.store import make_lineage
from ttspo.trainer.demo.sets import SET, TAG, _table

LABELER = "script:prefer-shorter"  # not a person: the rows and the lineage say so
REFINED = "demo-refined"


def step_review(demo) -> None:
    """The pairs the run never learned, scripted labels, and a set refined by both."""
    from ttspo.builder.sets.build import build_set
    from ttspo.builder.sets.diff import diff, why_line
    from ttspo.trainer.dpo.dynamics import stored_run_name

    store = demo.store
    run = stored_run_name(Path(demo.facts["checkpoint"]).parents[2])
    demo.say(f"Training dynamics of run {run} (one row per train pair per epoch):")
    demo.command("sql", f"SELECT ... FROM pair_cartography('pair_dynamics', '{run}')")
    _table(demo, f"""
        SELECT pair_id, reads, round(confidence, 4) AS confidence,
               round(variability, 4) AS variability, round(share_correct, 2) AS share_correct,
               never_learned, forgotten
        FROM pair_cartography('pair_dynamics', '{run}') ORDER BY confidence""")
    _label(demo)
    demo.say("How often each metric sides with the labeler:")
    demo.command("sql", "SELECT * FROM label_agreement()")
    _table(demo, "SELECT metric, n, agree, round(agree_share, 2) AS agree_share "
                 "FROM label_agreement()")
    params = {"base": f"{SET}@{TAG}", "run": run}
    demo.command("build", "refine", "--name", REFINED, *[w for k, v in params.items()
                                                         for w in ("--param", f"{k}={v}")])
    if store.exists(REFINED):
        demo.say(f"{REFINED} was built by an earlier demo run; nothing written")
    else:
        result = build_set(store, "refine", REFINED, params, lineage=make_lineage(
            "build", {"recipe": "refine", "name": REFINED, "params": params}, demo=True))
        demo.say(f"built {REFINED}@{result.version}: {result.summary()['pairs']} pairs")
    demo.command("diff", f"{SET}@{TAG}", REFINED)
    found = diff(store, f"{SET}@{TAG}", REFINED)
    p = found["pairs"]
    demo.say(f"pairs: {p['added']} added, {p['removed']} removed, {p['kept']} kept")
    demo.say(why_line(found["reasons"]) if found["reasons"] else "why: nothing changed")


def prefer_shorter(first: float, second: float) -> str:
    """The scripted labeler's choice between A and B lasting FIRST and SECOND seconds."""
    return "a" if first < second else "b" if second < first else "tie"


def _label(demo) -> None:
    """The scripted labeler judges every pair of the tagged set, and per pair one more
    sample of its group against the chosen (a pair the set lacks)."""
    from ttspo.builder.core.schemas import GEN, LABEL, PAIR
    from ttspo.builder.review.labels import Judgement, append_labels

    store = demo.store
    if store.exists("labels") and store.open("labels").count_rows(
            filter=f"{LABEL.labeler} = '{LABELER}'"):
        demo.say(f"labels by {LABELER} are already stored; nothing written")
        return
    ds = store.open(SET, TAG)
    pairs = ds.to_table(columns=[PAIR.pair_id, PAIR.group_id, PAIR.chosen_id,
                                 PAIR.rejected_id]).to_pylist()
    gens = store.open("generations").to_table(
        columns=[GEN.generation_id, GEN.group_id, GEN.sample_index, GEN.duration]).to_pylist()
    duration = {g[GEN.generation_id]: g[GEN.duration] for g in gens}
    rng = random.Random(0)  # the order shown, seeded: the same labels every demo

    def judge(x: str, y: str, **where) -> Judgement:
        first, second = (x, y) if rng.random() < 0.5 else (y, x)
        return Judgement(labeler=LABELER, first_id=first, second_id=second,
                         choice=prefer_shorter(duration[first], duration[second]), **where)

    judgements = []
    for p in sorted(pairs, key=lambda r: r[PAIR.pair_id]):
        judgements.append(judge(p[PAIR.chosen_id], p[PAIR.rejected_id], source=SET,
                                pair_id=p[PAIR.pair_id], set_name=SET, set_version=ds.version))
        others = sorted((g[GEN.sample_index], g[GEN.generation_id]) for g in gens
                        if g[GEN.group_id] == p[PAIR.group_id]
                        and g[GEN.generation_id] not in (p[PAIR.chosen_id], p[PAIR.rejected_id]))
        if others:
            judgements.append(judge(p[PAIR.chosen_id], others[-1][1]))
    version = append_labels(store, judgements, lineage=make_lineage(
        "label", {"labeler": LABELER, "set": f"{SET}@{TAG}"}, demo=True, labeler=LABELER,
        scripted="picks the shorter generation by duration; hears nothing"))
    chose = sum(j.choice in ("a", "b") for j in judgements)
    demo.say(f"{LABELER} (a script, not a person) judged {len(judgements)} pairs "
             f"({chose} with a choice): labels@{version}")
