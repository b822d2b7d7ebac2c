"""A re-threshold in one session: the column-wise line writer, the codes files an
export keeps, and the session caches (same results with and without them; a new
table version never hits an old entry)."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pytest
import torch

from ttspo.builder.core.schemas import GEN, GENERATIONS_SCHEMA, PAIR
from ttspo.builder.core.store import Store, make_lineage
from ttspo.builder.sets import session_cache
from ttspo.builder.sets.build import build_set, open_set
from ttspo.builder.sets.export import export_nemo
from ttspo.builder.sets.line_parts import CONTEXT_CODES, gen_parts
from ttspo.builder.sets.nemo_lines import GEN_COLUMNS, SetGenerations, nemo_manifests, openings
from test_build_helpers import BASIC, gen_rows

OLD_ENCODER = json.JSONEncoder(ensure_ascii=False)


# ------------------------------------------------ the old record-by-record writer
def old_fields(gen):
    """export.nemo_fields as it was: a dict per generation, None values left out."""
    context = ({"context_text": gen[GEN.context_text]} if not gen[GEN.context_audio_filepath] else {
        "context_audio_filepath": gen[GEN.context_audio_filepath],
        "context_audio_duration": gen[GEN.context_audio_duration],
        "context_audio_codes_path": gen[CONTEXT_CODES]})
    record = {
        "text": gen[GEN.text], "record_type": gen[GEN.record_type], **context,
        "audio_filepath": gen[GEN.audio_filepath], "target_audio_codes_path": gen[GEN.codes_path],
        "duration": gen[GEN.duration], "cer_gts": gen[GEN.cer], "wer_gts": gen[GEN.wer],
        "pred_context_similarity": gen[GEN.ssim], "pred_transcript": gen[GEN.pred_transcript],
        "gt_transcript": gen[GEN.gt_transcript],
    }
    return {k: v for k, v in record.items() if v is not None}


def old_lines(gens, pairs):
    fields = {g[GEN.generation_id]: old_fields(g) for g in gens}
    lines = {"train": [], "val": []}
    for p in pairs:
        c, r, pair_id = p[PAIR.chosen_id], p[PAIR.rejected_id], p[PAIR.pair_id]
        chosen = {**fields[c], "reward": p[PAIR.chosen_reward], "pair_id": pair_id, "generation_id": c}
        rejected = {**fields[r], "reward": p[PAIR.rejected_reward], "cer_delta": p[PAIR.cer_delta],
                    "sim_delta": p[PAIR.sim_delta], "pair_id": pair_id, "generation_id": r}
        lines[p[PAIR.split]] += [OLD_ENCODER.encode(chosen) + "\n", OLD_ENCODER.encode(rejected) + "\n"]
    return lines


AWKWARD_TEXT = ['say "hi"\\n', "naïve café — 日本語 🎤", "tab\there\nnewline", "", "\u2028\x00\x1f", "\\"]
AWKWARD_FLOAT = [1e-05, 2.0, 0.1 + 0.2, float("nan"), float("inf"), -float("inf"), -0.0, 1e300, 5e-324, None]


def awkward_generations(n=10):
    gens = []
    for i in range(n):
        text = AWKWARD_TEXT[i % len(AWKWARD_TEXT)]
        number = AWKWARD_FLOAT[i % len(AWKWARD_FLOAT)]
        gens.append({
            GEN.generation_id: f"g{i}:{text[:3]}", GEN.prompt_id: f"p{i}", GEN.text: text,
            GEN.record_type: None if i % 4 == 0 else "regular",
            GEN.context_audio_filepath: [None, "", f"/ctx/{text}.wav"][i % 3],
            GEN.context_audio_duration: number, GEN.context_text: None if i % 5 == 0 else f"ctx {text}",
            GEN.audio_filepath: f"/a/{i}.wav", GEN.codes_path: None if i % 3 == 0 else f"/c/{text}.pt",
            GEN.duration: number, GEN.cer: AWKWARD_FLOAT[(i + 1) % len(AWKWARD_FLOAT)],
            GEN.wer: AWKWARD_FLOAT[(i + 2) % len(AWKWARD_FLOAT)], GEN.ssim: number,
            GEN.pred_transcript: None if i % 2 else text, GEN.gt_transcript: text,
            CONTEXT_CODES: None if i % 2 else f"/ctx/{text}_codes.pt",
        })
    return gens


def manifests(gens, pairs, ids, paths):
    """What the column writer makes of GENS (dicts) and PAIRS: split -> lines."""
    columns = {c: [g[c] for g in gens] for c in (*GEN_COLUMNS, CONTEXT_CODES)}
    parts = gen_parts(columns, list(range(len(ids))))
    fixed = openings(SetGenerations(None, pa.array(ids, pa.string()), parts), paths)
    made = nemo_manifests(pa.Table.from_pylist(pairs), ids, fixed)
    return {split: bytes(text).decode() for split, (text, _) in made.items()}


def joined(lines):
    return {split: "".join(v) for split, v in lines.items()}


def test_column_writer_gives_the_old_encoders_bytes_on_awkward_values():
    gens = awkward_generations(len(AWKWARD_TEXT) * len(AWKWARD_FLOAT))
    ids = [g[GEN.generation_id] for g in gens]
    pairs = [{PAIR.chosen_id: ids[i], PAIR.rejected_id: ids[-1 - i], PAIR.pair_id: f'{ids[i]}>"{i}"',
              PAIR.chosen_reward: AWKWARD_FLOAT[i % 3] or 1.0, PAIR.rejected_reward: AWKWARD_FLOAT[i % 10],
              PAIR.cer_delta: AWKWARD_FLOAT[(i + 3) % 10], PAIR.sim_delta: AWKWARD_FLOAT[(i + 5) % 10],
              PAIR.split: "val" if i % 4 == 0 else "train"} for i in range(len(ids))]
    old = old_lines(gens, pairs)
    assert manifests(gens, pairs, ids, {}) == joined(old)
    assert sum(len(v) for v in old.values()) == 2 * len(pairs) and old["val"] and old["train"]
    # and with the export's own codes paths in place of the generations' codes_path
    paths = {g: f"/out/codes/{g}\u00e9.pt" for g in ids}
    assert manifests(gens, pairs, ids, paths) == joined(
        old_lines([{**g, GEN.codes_path: paths[g[GEN.generation_id]]} for g in gens], pairs))
    # finite floats only (the fast path) and a pair order other than the ids'
    finite = [{**p, PAIR.rejected_reward: 0.1 * i, PAIR.cer_delta: 1e-05 * i, PAIR.sim_delta: -2.5 / (i + 1)}
              for i, p in enumerate(pairs)][::-1]
    assert manifests(gens, finite, ids, {}) == joined(old_lines(gens, finite))


def test_a_generation_with_no_known_field_still_gives_the_old_bytes():
    empty = {c: None for c in (*GEN_COLUMNS, CONTEXT_CODES)}
    gens = [{**empty, GEN.generation_id: "x"}]
    pair = [{PAIR.chosen_id: "x", PAIR.rejected_id: "x", PAIR.pair_id: "x>x", PAIR.chosen_reward: 1.0,
             PAIR.rejected_reward: 0.5, PAIR.cer_delta: None, PAIR.sim_delta: 0.0, PAIR.split: "train"}]
    assert manifests(gens, pair, ["x"], {}) == joined(old_lines(gens, pair))


# ------------------------------------------------------------ a store with codes
def codes_of(i, frames=3):
    return [[i, i + 1, 7][:frames], [3, 2, i][:frames]]


def write_generations(s, rows, codes=codes_of):
    for i, r in enumerate(rows):
        r[GEN.codes_path], r[GEN.codes] = None, codes(i)
    return s.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA), GENERATIONS_SCHEMA,
                   make_lineage("t", {}), mode="overwrite")


@pytest.fixture
def store(tmp_path):
    session_cache.clear()
    s = Store(tmp_path / "store")
    write_generations(s, gen_rows(BASIC))
    return s


def export_copy(store, ref, out, **kw):
    """An export with --copy-codes: the codes files copied into OUT/codes (the OUT index)."""
    return export_nemo(store, ref, out, copy_codes=True, **kw)


def stats(folder):
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in (folder / "codes").iterdir()}


def test_a_second_export_into_the_same_out_keeps_identical_codes_files(store, tmp_path):
    build_set(store, "pareto", "a", {"cer_threshold": 0.008})  # 4 of the 5 groups
    first = export_copy(store, "a", tmp_path / "out")
    assert (first.codes_copied, first.codes_reused) == (8, 0)
    before = stats(tmp_path / "out")
    session_cache.clear()  # a new session: the index on disk is what is trusted
    again = export_copy(store, "a", tmp_path / "out")
    assert (again.codes_copied, again.codes_reused) == (0, 8)
    assert stats(tmp_path / "out") == before
    # a re-threshold: one more group; its generations' files written, the others kept
    build_set(store, "pareto", "b", {"cer_threshold": 0.02})
    wider = export_copy(store, "b", tmp_path / "out")
    assert (wider.codes_copied, wider.codes_reused) == (2, 8)
    fresh = export_copy(store, "b", tmp_path / "new")
    assert (fresh.codes_copied, fresh.codes_reused) == (wider.codes_copied + wider.codes_reused, 0)
    for name in ("dpo_train_manifest.json", "dpo_val_manifest.json"):
        kept = (tmp_path / "out" / name).read_text().replace(str(tmp_path / "out"), "OUT")
        assert kept == (tmp_path / "new" / name).read_text().replace(str(tmp_path / "new"), "OUT")
    for p in (tmp_path / "new" / "codes").iterdir():  # kept files: the bytes a fresh export writes
        assert p.read_bytes() == (tmp_path / "out" / "codes" / p.name).read_bytes()


def test_a_changed_deleted_or_touched_codes_file_is_written_again(store, tmp_path):
    build_set(store, "pareto", "a", {"cer_threshold": 0.02})
    export_copy(store, "a", tmp_path / "out")
    files = sorted((tmp_path / "out" / "codes").iterdir())
    good = {p.name: p.read_bytes() for p in files}
    torch.save(torch.zeros(2, 3, dtype=torch.int32), files[0])  # other codes, another size
    files[1].write_bytes(good[files[1].name][:-1] + b"\xff")  # same size, other bytes
    files[2].unlink()
    os.utime(files[3])  # touched only: rewritten too (the quick check cannot tell)
    result = export_copy(store, "a", tmp_path / "out")
    assert (result.codes_copied, result.codes_reused) == (4, len(files) - 4)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "codes").iterdir()} == good


def test_a_rewrite_is_a_new_file_renamed_into_place(store, tmp_path):
    """A codes file is never rewritten in place: a hard link to the old file keeps
    the old bytes (so a concurrent writer's bytes can never sit under this
    export's recorded stat), and no temporary file is left behind."""
    build_set(store, "pareto", "a", {"cer_threshold": 0.02})
    export_copy(store, "a", tmp_path / "out")
    path = sorted((tmp_path / "out" / "codes").iterdir())[0]
    old = path.read_bytes()
    os.link(path, tmp_path / "old-link")
    write_generations(store, gen_rows(BASIC), codes=lambda i: codes_of(i + 100, frames=2))
    build_set(store, "pareto", "a", {"cer_threshold": 0.02})
    export_copy(store, "a", tmp_path / "out")
    assert (tmp_path / "old-link").read_bytes() == old != path.read_bytes()
    assert not [p for p in (tmp_path / "out" / "codes").iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize("entry", [{}, [], 5, "x", [None, 1, 2, 3]])
def test_an_index_entry_it_cannot_read_means_the_file_is_written_again(store, tmp_path, entry):
    build_set(store, "pareto", "a", {"cer_threshold": 0.02})
    first = export_copy(store, "a", tmp_path / "out")
    index_path = tmp_path / "out" / ".ttspo-codes.json"
    index = json.loads(index_path.read_text())
    name = sorted(index["files"])[0]
    index["files"][name] = entry
    index_path.write_text(json.dumps(index))
    session_cache.clear()
    again = export_copy(store, "a", tmp_path / "out")
    assert (again.codes_copied, again.codes_reused) == (1, first.codes_copied - 1)


def test_new_codes_for_the_same_generation_ids_are_written(store, tmp_path):
    build_set(store, "pareto", "a", {"cer_threshold": 0.02})
    export_copy(store, "a", tmp_path / "out")
    write_generations(store, gen_rows(BASIC), codes=lambda i: codes_of(i + 100, frames=2))  # version 2
    build_set(store, "pareto", "a", {"cer_threshold": 0.02})
    result = export_copy(store, "a", tmp_path / "out")
    assert (result.codes_copied, result.codes_reused) == (10, 0)
    for line in (tmp_path / "out" / "dpo_train_manifest.json").read_text().splitlines():
        record = json.loads(line)
        i = int(record["generation_id"].split(":")[1])
        assert torch.load(record["target_audio_codes_path"]).tolist() == codes_of(i + 100, frames=2)
    export_copy(store, "a@1", tmp_path / "out")  # and back: the old set's codes
    record = json.loads((tmp_path / "out" / "dpo_train_manifest.json").read_text().splitlines()[0])
    i = int(record["generation_id"].split(":")[1])
    assert torch.load(record["target_audio_codes_path"]).tolist() == codes_of(i)


# ------------------------------------------------------------- session caches
def built(store, name, params, runs=()):
    result = build_set(store, "pareto", name, params, runs=runs)
    sv = open_set(store, name)
    lineage = store.lineage(name, result.version)
    return sv.rows(), result.record, lineage


THRESHOLDS = ({"cer_threshold": 0.02}, {"cer_threshold": 0.1, "val_size": 2, "seed": 3},
              {"cer_threshold": 0.5, "num_chosen": 2}, {"cer_threshold": 0.008, "min_duration": 1.0})


@pytest.mark.slow
def test_builds_are_identical_with_and_without_the_session_cache(store, tmp_path):
    with_cache = [built(store, "s", p) for p in THRESHOLDS for _ in range(2)]
    assert session_cache.size("recipe.region") == 2  # num_chosen 1 and 2
    with session_cache.disabled():
        without = [built(store, "s", p) for p in THRESHOLDS for _ in range(2)]
    for (rows, record, lineage), (rows2, record2, lineage2) in zip(with_cache, without):
        assert rows.equals(rows2) and rows.num_rows > 0
        assert record == record2
        assert lineage == lineage2 and lineage["inputs"] == {"generations": 1}
    assert [rows.num_rows for rows, _, _ in with_cache[::2]] == [5, 5, 20, 4]


def test_a_new_generations_version_or_a_rebuilt_store_never_hits_an_old_entry(store, tmp_path):
    first, _, _ = built(store, "s", {"cer_threshold": 0.1})
    # version 2: group 0's best becomes its worst
    rows = gen_rows(BASIC)
    rows[0][GEN.cer], rows[0][GEN.ssim] = 0.6, 0.1
    write_generations(store, rows)
    second, record, _ = built(store, "s", {"cer_threshold": 0.1})
    with session_cache.disabled():
        truth, _, _ = built(store, "t", {"cer_threshold": 0.1})
    assert record.inputs["generations"] == 2
    assert second.equals(truth) and not second.equals(first)
    assert "r:0" not in second.column(PAIR.chosen_id).to_pylist()
    export_copy(store, "s", tmp_path / "o")
    # the same path, the same version numbers, other content: deleted and built again
    shutil.rmtree(store.root)
    again = Store(store.root)
    write_generations(again, gen_rows(BASIC[:2]), codes=lambda i: codes_of(i + 50))
    rebuilt, _, _ = built(again, "s", {"cer_threshold": 0.1})
    with session_cache.disabled():
        truth, _, _ = built(again, "t", {"cer_threshold": 0.1})
        export_copy(again, "t", tmp_path / "truth")
    assert rebuilt.equals(truth)
    export_copy(again, "s", tmp_path / "o")
    for name in ("dpo_train_manifest.json", "dpo_val_manifest.json"):
        assert (tmp_path / "o" / name).read_text().replace(str(tmp_path / "o"), "OUT") == (
            tmp_path / "truth" / name).read_text().replace(str(tmp_path / "truth"), "OUT")
    for p in (tmp_path / "truth" / "codes").iterdir():
        assert p.read_bytes() == (tmp_path / "o" / "codes" / p.name).read_bytes()


def test_runs_are_part_of_the_cache_key(store):
    more = gen_rows(BASIC[:2], run="other")
    for r in more:
        r[GEN.cer] = r[GEN.cer] / 2
    write = pa.Table.from_pylist([{**r, GEN.codes: [[1]]} for r in more], schema=GENERATIONS_SCHEMA)
    store.write("generations", write, GENERATIONS_SCHEMA, make_lineage("t", {}))
    results = [built(store, "s", {"cer_threshold": 0.1}, runs)[0] for runs in ((), ("r",), ("other",))]
    with session_cache.disabled():
        truths = [built(store, "t", {"cer_threshold": 0.1}, runs)[0] for runs in ((), ("r",), ("other",))]
    for got, truth in zip(results, truths):
        assert got.equals(truth)
    assert len({r.num_rows for r in results}) > 1


def test_the_checks_read_the_generations_of_the_runs_built_from(store, tmp_path):
    """The output checks' generations are cached per runs too: a pair naming a
    generation of a run left out is refused even after a build over that run."""
    more = gen_rows(BASIC[:1], run="other")
    store.write("generations", pa.Table.from_pylist([{**r, GEN.codes: [[1]]} for r in more],
                                                    schema=GENERATIONS_SCHEMA), GENERATIONS_SCHEMA,
                make_lineage("t", {}))
    recipe = tmp_path / "literal.sql"
    recipe.write_text("SELECT 'p0' AS prompt_id, 'other:g0' AS group_id, 'other:0' AS chosen_id, "
                      "'other:3' AS rejected_id, 1.0 AS chosen_reward, 0.5 AS rejected_reward, "
                      "'train' AS split FROM generations LIMIT 1")
    assert build_set(store, str(recipe), "lit", runs=("other",)).record.counts["pairs"] == 1
    from ttspo.builder.core.errors import RecipeError

    with pytest.raises(RecipeError, match=r"1 pair\(s\) name a chosen_id that is not in generations"):
        build_set(store, str(recipe), "lit", runs=("r",))


def test_the_recipe_file_run_whole_gives_the_cached_builds_rows(store):
    from ttspo.builder.core import query
    from ttspo.builder.sets.recipes import load_recipe, resolve_params

    recipe = load_recipe("pareto")
    for params in THRESHOLDS:
        rows, _, _ = built(store, "s", params)
        values = resolve_params(recipe, params)
        whole, _ = query.run(store, recipe.sql, {k: v for k, v in values.items() if k in recipe.placeholders})
        for col in (PAIR.pair_id, PAIR.split, PAIR.position, PAIR.rejected_reward, PAIR.cer_delta):
            assert whole.column(col).to_pylist() == rows.column(col).to_pylist()


def test_a_cached_region_after_another_cte_is_refused(store, tmp_path):
    """A CTE before the region could shadow a view the region reads (cached, the
    region would read the view; run whole, the CTE): such a recipe is refused."""
    from ttspo.builder.core.errors import RecipeError
    from ttspo.builder.sets.recipes import load_recipe

    sql = load_recipe("pareto").sql.replace(
        "WITH RECURSIVE\n-- ttspo cache:", "WITH RECURSIVE\ngenerations AS (SELECT * FROM generations "
        "WHERE cer < 0.5),\n-- ttspo cache:", 1)
    assert "generations AS (SELECT" in sql
    path = tmp_path / "shadow.sql"
    path.write_text(sql)
    with pytest.raises(RecipeError, match="the cached region 'candidate_pairs' must start at the "
                                          "recipe's first CTE"):
        build_set(store, str(path), "s", {"cer_threshold": 0.02})
