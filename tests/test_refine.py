"""Sets rebuilt from what review found (sql/refine.sql): a base set version minus the
pairs a run never learned (pair_dynamics) and the pairs a label contradicts, plus the
pairs people chose; the build pins both tables' versions (gc keeps them) and `ttspo diff`
counts each change's reason. Real Lance tables, the real writers (trainer/dpo/dynamics.py,
builder/review/labels.py), the real CLI."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from ttspo.builder.api import Store as ApiStore
from ttspo.builder.cli.main import cli
from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA, PAIR
from ttspo.builder.core.store import make_lineage
from ttspo.builder.review.labels import Judgement, append_labels
from ttspo.builder.sets.build import build_set
from ttspo.builder.sets.diff import diff, render_text
from ttspo.trainer.demo import review as demo_review
from ttspo.trainer.dpo.dynamics import DynamicsWriter
from train_helpers import SET, pattern_rows, pattern_store

LABELER = "script:test"


def ttspo(store, *args: str):
    return CliRunner().invoke(cli, ["--store", str(store.root), *args])


def pair_rows(store) -> list[dict]:
    return store.open(SET, 1).to_table(columns=[PAIR.pair_id, PAIR.chosen_id, PAIR.rejected_id,
                                                PAIR.split, PAIR.prompt_id]).to_pylist()


def write_dynamics(store, run: str, never: set[str]) -> int:
    """Two epochs of run RUN over the train pairs: the NEVER pairs a tie then wrong,
    the others a tie then right (a tie first: a policy equal to its reference)."""
    train = [p for p in pair_rows(store) if p[PAIR.split] == "train"]
    w = DynamicsWriter(store=store, run=run, set_name=SET, set_version=1,
                       lineage=make_lineage("test", {}), master=True)
    for epoch, step in ((0, 1), (1, 2)):
        margin = [0.0 if epoch == 0 else (-0.5 if p[PAIR.pair_id] in never else 0.5)
                  for p in train]
        correct = [0.5 if m == 0 else float(m > 0) for m in margin]
        w.add(step=step, epoch=epoch, split="train", pair_ids=[p[PAIR.pair_id] for p in train],
              values={"margin": torch.tensor(margin), "correct": torch.tensor(correct),
                      "loss": torch.zeros(len(train))})
    return w.commit(2)


def add_generation(store, gid: str, like: str, cer: float, ssim: float) -> None:
    """A third generation of LIKE's prompt and group (a pair the set does not hold)."""
    row = next(r for r in pattern_rows(12, 8, 0) if r[GEN.generation_id] == like)
    row = {**row, GEN.generation_id: gid, GEN.sample_index: 2, GEN.manifest_line: 100 + len(gid),
           GEN.cer: cer, GEN.wer: cer, GEN.ssim: ssim}
    store.write("generations", pa.Table.from_pylist([row], schema=GENERATIONS_SCHEMA),
                GENERATIONS_SCHEMA, make_lineage("test", {}))


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    """A store, what review found in it, and the refined set built from it."""
    store = pattern_store(tmp_path_factory.mktemp("store") / "store", groups=12, val_size=4)
    pairs = {p[PAIR.pair_id]: p for p in pair_rows(store)}
    train = sorted(p for p, r in pairs.items() if r[PAIR.split] == "train")
    never, contradicted = {train[0], train[1], train[2]}, {train[2], train[3]}
    dyn_version = write_dynamics(store, "R", never)
    add_generation(store, "x:0", "r:0", 0.05, 0.85)  # better than r:1 on both: a valid pair
    add_generation(store, "x:2", "r:2", 0.5, 0.4)  # worse than r:3 on both: the contract says no
    judgements = [Judgement(labeler=LABELER, first_id=pairs[p][PAIR.chosen_id],
                            second_id=pairs[p][PAIR.rejected_id], choice="b", pair_id=p,
                            set_name=SET, set_version=1) for p in sorted(contradicted)]
    judgements += [Judgement(labeler=LABELER, first_id="r:1", second_id="x:0", choice="b"),
                   Judgement(labeler=LABELER, first_id="x:2", second_id="r:3", choice="a")]
    labels_version = append_labels(store, judgements, lineage=make_lineage("label", {}))
    result = build_set(store, "refine", "refined", {"base": f"{SET}@1", "run": "R"})
    return {"store": store, "pairs": pairs, "never": never, "contradicted": contradicted,
            "dyn": dyn_version, "labels": labels_version, "result": result}


def test_refine_drops_never_learned_and_contradicted_and_adds_chosen(found):
    store, pairs = found["store"], found["pairs"]
    refined = store.open("refined").to_table().to_pylist()
    ids = {r[PAIR.pair_id] for r in refined}
    assert ids == (set(pairs) - found["never"] - found["contradicted"]) | {"x:0>r:1"}
    added = next(r for r in refined if r[PAIR.pair_id] == "x:0>r:1")
    assert (added[PAIR.split], added[PAIR.chosen_reward], added[PAIR.rejected_reward],
            added[PAIR.chosen_cer], added[PAIR.prompt_id]) == ("train", 1.0, 0.0, 0.05, "p0")
    kept = [r for r in refined if r[PAIR.pair_id] != "x:0>r:1"]
    assert all(r[PAIR.split] == pairs[r[PAIR.pair_id]][PAIR.split] for r in kept)
    assert max(r[PAIR.position] for r in kept) < added[PAIR.position]
    # the lineage pins the versions of both tables it read, and the base set version
    inputs = store.lineage("refined", found["result"].version)["inputs"]
    assert (inputs["pair_dynamics"], inputs["labels"], inputs[SET]) == \
        (found["dyn"], found["labels"], 1)


def test_diff_says_why_each_pair_left_or_joined(found):
    store = found["store"]
    result = diff(store, f"{SET}@1", "refined")
    labels, dyn = f"labels@{found['labels']}", f"pair_dynamics@{found['dyn']}"
    # train[2] is never learned AND contradicted: the label, the first reason, takes it
    assert result["reasons"] == [
        {"change": "removed", "reason": f"a label chose its rejected ({labels})", "pairs": 2},
        {"change": "removed", "reason": f"never learned in run R ({dyn})", "pairs": 2},
        {"change": "added", "reason": f"a label chose it ({labels})", "pairs": 1}]
    text = render_text(result)
    assert (f"why: removed 2 a label chose its rejected ({labels}); removed 2 never learned in "
            f"run R ({dyn}); added 1 a label chose it ({labels})") in text.splitlines()
    assert diff(store, f"{SET}@1", f"{SET}@1")["reasons"] == []  # no review pinned: no reasons


def test_gc_keeps_the_pinned_versions_of_both_tables(found):
    store = found["store"]
    write_dynamics(store, "R2", set())  # newer versions: the pinned ones are no longer latest
    pairs = found["pairs"]
    p = sorted(pairs)[0]
    append_labels(store, [Judgement(labeler=LABELER, first_id=pairs[p][PAIR.chosen_id],
                                    second_id=pairs[p][PAIR.rejected_id], choice="skip")],
                  lineage=make_lineage("label", {}))
    plan = {t.table: t for t in ApiStore(store.root).gc(dry_run=True, keep_last=1).tables}
    name = f"the lineage of refined@{found['result'].version}"
    assert name in plan["pair_dynamics"].pinned[found["dyn"]]
    assert name in plan["labels"].pinned[found["labels"]]


def test_a_missing_review_table_or_run_is_one_line(found, tmp_path):
    bare = pattern_store(tmp_path / "bare", groups=12, val_size=4)
    result = ttspo(bare, "build", "refine", "--name", "x", "--param", f"base={SET}")
    assert result.exit_code == 1 and not bare.exists("x")
    assert result.output.strip().splitlines() == [
        f"Error: recipe refine reads pair_dynamics, which store {bare.root} does not have yet "
        "(a DPO run writes it (train.pair_dynamics=true))"]
    store = found["store"]
    for param, said in (("run=nope", "recipe refine: run 'nope' has no rows in pair_dynamics"),
                        ("base=nosuch", f"recipe refine: --param base=nosuch: store {store.root} "
                                        "has no table 'nosuch'")):
        result = ttspo(store, "build", "refine", "--name", "y", "--param", f"base={SET}",
                       "--param", param)
        assert result.exit_code == 1 and not store.exists("y"), result.output
        assert result.output.strip().splitlines() == [f"Error: {said}"]


def test_label_agreement_counts_how_often_each_metric_sides_with_people(found):
    """The labels: two pairs whose rejected people chose and x:2 chosen over r:3 (worse on
    CER and SSIM: both metrics disagree), x:0 over r:1 (lower CER and higher SSIM: both
    agree). No other metric has values in these generations: n 0, no share. The list is
    the registry's, less the metrics with no direction."""
    import json

    result = ttspo(found["store"], "sql", "SELECT * FROM label_agreement()", "--format", "json")
    assert result.exit_code == 0, result.output
    got = {r["metric"]: (r["n"], r["agree"], r["agree_share"]) for r in json.loads(result.output)}
    from ttspo.builder.core import metrics as registry

    directed = [m for m in registry.names() if m not in registry.no_direction()]
    assert list(got) == directed
    assert got == {**{m: (0, 0, None) for m in directed},
                   "cer": (4, 1, 0.25), "wer": (4, 1, 0.25), "ssim": (4, 1, 0.25)}


def test_the_demo_labeler_is_a_script_that_picks_the_shorter():
    assert demo_review.LABELER.startswith("script:")  # never mistaken for a person
    assert [demo_review.prefer_shorter(*d) for d in ((1.0, 2.0), (2.0, 1.0), (1.5, 1.5))] == \
        ["a", "b", "tie"]
