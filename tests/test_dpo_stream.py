"""The streaming DPO loader: the same batches, order and losses as the in-memory one,
on real Lance tables, a real TinyCodecLM, spawned reader processes and torchrun; and
Lance's row-id take through its one wrapper."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ttspo.builder.core.lance_rows import ROW_ID, row_ids, take_rows
from ttspo.builder.core.schemas import GEN
from ttspo.trainer.dpo.data import PairOrder, load_pairs
from ttspo.trainer.dpo.forward import collate_pairs
from ttspo.trainer.dpo.loop import read_metrics, train_dpo
from ttspo.trainer.dpo.stream import step_batches
from ttspo.trainer.policy.base import load_policy
from ttspo.trainer.run.config import load_config
from train_helpers import SET, TINY, pattern_store, tiny_overrides, torchrun_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("TTSPO_TEST_THREADS", "1")}
# dropout on: a loader that moved the global torch RNG would change every loss
DROPOUT = {"policy.model.dropout": 0.1, "policy.model.cfg_dropout": 0.2}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return pattern_store(tmp_path_factory.mktemp("store") / "store")


def quiet(*_):
    pass


def test_take_rows_reads_rows_by_id_in_the_order_given(store):
    ds = store.open("generations", 1)
    index = row_ids(ds, GEN.generation_id)
    ids, gids = index.column(ROW_ID).to_pylist(), index.column(GEN.generation_id).to_pylist()
    pick = [5, 0, 5, 17]  # out of order, repeated
    taken = take_rows(ds, [ids[i] for i in pick], [GEN.generation_id, GEN.codes])
    assert taken.column(GEN.generation_id).to_pylist() == [gids[i] for i in pick]
    full = ds.to_table(columns=[GEN.generation_id, GEN.codes]).to_pylist()
    assert taken.column(GEN.codes).to_pylist()[1] == full[gids.index(gids[0])][GEN.codes]
    assert take_rows(ds, [], [GEN.codes]).num_rows == 0
    assert take_rows(ds, [], [GEN.codes]).schema.names == [GEN.codes]


def _batches(pairs, order, loader, workers, steps):
    data = SimpleNamespace(loader=loader, workers=workers, prefetch_batches=2, read_batches=3)
    return list(step_batches(pairs, order, 1, start=2, stop=2 + steps, data=data))


@pytest.mark.parametrize("workers", [0, 1])
def test_every_batch_equals_the_in_memory_loaders(store, workers):
    memory = load_pairs(store, SET).select("train")
    stream = load_pairs(store, SET, stream=True).select("train")
    assert stream.codes is not None and all(GEN.codes not in r for r in stream.chosen)
    # 2 ranks, 2 micro-batches a step: rank 1's share, steps 2.. into a second epoch
    order = PairOrder(num_pairs=len(memory), pairs_per_device=3, world_size=2, grad_accum=2, seed=4)
    steps = order.steps_per_epoch + 2
    a = _batches(memory, order, "memory", workers, steps)
    b = _batches(stream, order, "stream", workers, steps)
    policy = load_policy("tiny", config=TINY)
    assert len(a) == len(b) == steps
    for step_a, step_b in zip(a, b, strict=True):
        for (idx_a, codes_a), (idx_b, codes_b) in zip(step_a, step_b, strict=True):
            assert codes_a is None and np.array_equal(idx_a, idx_b)
            x = collate_pairs(policy, memory, idx_a)
            y = collate_pairs(policy, stream, idx_b, codes_b)
            for name, t in vars(x).items():
                if isinstance(t, torch.Tensor):
                    assert torch.equal(t, getattr(y, name)), name


def _losses(out):
    keys = ("loss/total", "rewards/margins", "logps/chosen", "val/loss", "val/accuracy")
    return [(m["step"], k, m[k]) for m in read_metrics(out) for k in keys if k in m]


@pytest.mark.slow  # ~3 s: two DPO runs and a resume
def test_a_streamed_run_has_the_losses_of_an_in_memory_run_and_resumes_across(store, tmp_path):
    base = {"train.max_steps": 6, "train.val_every": 3, "train.checkpoint_every": 3,
            "optim.grad_accum": 2, **DROPOUT}
    cfg = lambda **o: load_config(None, tiny_overrides(**{**base, **o}))
    train_dpo(store, SET, cfg=cfg(), out=tmp_path / "memory", echo=quiet)
    train_dpo(store, SET, cfg=cfg(**{"data.loader": "stream"}), out=tmp_path / "stream", echo=quiet)
    assert len(_losses(tmp_path / "memory")) == 6 * 3 + 3 * 2
    assert _losses(tmp_path / "stream") == _losses(tmp_path / "memory")  # bit for bit
    # Resume: 3 steps in memory, then the rest streamed from the checkpoint.
    train_dpo(store, SET, cfg=cfg(**{"train.max_steps": 3}), out=tmp_path / "both", echo=quiet)
    train_dpo(store, SET, cfg=cfg(**{"data.loader": "stream", "data.workers": 0}),
              out=tmp_path / "both", echo=quiet)
    assert _losses(tmp_path / "both") == _losses(tmp_path / "memory")


def test_a_generation_without_codes_stops_a_streamed_run_with_one_line(tmp_path):
    from ttspo.builder.core.errors import InputError

    store = pattern_store(tmp_path / "store", groups=16, val_size=4, no_codes=(3,))
    pairs = load_pairs(store, SET, stream=True)
    with pytest.raises(InputError, match=r"prefs@1: generation r:3 has no codes in generations@1"):
        for i in range(len(pairs)):
            pairs.read_codes([i])


@pytest.mark.slow  # torchrun
def test_two_ranks_stream_the_batches_and_losses_of_two_ranks_in_memory(store, tmp_path):
    steps = {"train.max_steps": 3, "train.val_every": 3, "train.checkpoint_every": 0,
             "data.pairs_per_device": 4, **DROPOUT}
    runs = {}
    for loader in ("memory", "stream"):
        out = tmp_path / loader
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "ttspo.builder.cli", "--", "--store",
               str(store.root), "train", "dpo", SET, "--out", str(out),
               *[w for o in tiny_overrides(**steps, **{"data.loader": loader}) for w in ("-o", o)]]
        run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, torchrun_error(run.stderr)
        runs[loader] = _losses(out)
    assert len(runs["memory"]) == 3 * 3 + 2 * 2
    assert runs["stream"] == runs["memory"]


def _sources():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith((".venv/", "tests/", ".")):
            yield rel, path.read_text()


@pytest.mark.slow  # ~1.5 s
def test_lances_private_take_and_the_pair_forward_each_live_in_one_place():
    takes = [rel for rel, text in _sources() if "._take_rows(" in text]
    assert takes == ["builder/core/lance_rows.py"]
    # chosen + rejected are joined (collate_pairs) and split (chunk(2)) only in forward.py
    splits = [rel for rel, text in _sources() if "collate_pairs(" in text and "chunk(2)" in text]
    assert splits == ["trainer/dpo/forward.py"]
    callers = {rel for rel, text in _sources() if "concatenated_forward(" in text}
    assert {"trainer/dpo/loop.py", "trainer/dpo/ref.py"} <= callers


def test_reference_log_probs_of_streamed_pairs_equal_those_in_memory(store):
    from ttspo.trainer.dpo.ref import compute

    torch.manual_seed(3)
    policy = load_policy("tiny", config=TINY)
    memory = compute(policy, load_pairs(store, SET), batch_pairs=16)
    stream = compute(policy, load_pairs(store, SET, stream=True), batch_pairs=16)
    for a, b in zip(memory, stream, strict=True):
        assert a.shape == (64, 8) and np.array_equal(a, b)


def test_code_arrays_equal_numpy_of_the_lists():
    import pyarrow as pa

    from ttspo.trainer.dpo.codes_reader import code_arrays

    kind = pa.list_(pa.list_(pa.int16()))
    rows = [[[1, 2, 3], [4, 5, 6]], None, [], [[]], [[7], [8]], [[255, 0]]]
    column = pa.chunked_array([pa.array(rows[:4], kind), pa.array(rows[4:], kind).slice(0)])
    got = code_arrays(column)
    for row, array in zip(rows, got, strict=True):
        if not row or not row[0]:  # what CodesReader refuses as "no codes"
            assert array is None
        else:
            assert array.dtype == np.int64 and np.array_equal(array, np.asarray(row))
    sliced = code_arrays(pa.chunked_array([pa.array(rows, kind).slice(4, 2)]))
    assert [a.tolist() for a in sliced] == rows[4:]
    with pytest.raises(ValueError):  # ragged codebooks: numpy's own error, as before
        code_arrays(pa.chunked_array([pa.array([[[1, 2], [3]]], kind)]))


def test_streamed_pairs_hold_arrays_not_rows(store):
    from ttspo.trainer.dpo.data import PairIds

    memory = load_pairs(store, SET)
    stream = load_pairs(store, SET, stream=True)
    assert stream.chosen == stream.rejected == []  # text and codes come with the batch
    assert stream.chosen_rowid.dtype == stream.rejected_rowid.dtype == np.int64
    assert stream.prompt_index.dtype == np.int32 and len(stream.prompt_index) == len(stream)
    assert isinstance(stream.pair_ids, PairIds) and list(stream.pair_ids) == list(memory.pair_ids)
    train = stream.select("train")
    assert isinstance(train.pair_ids, PairIds) and isinstance(train.pair_ids[2], str)
    assert train.pair_ids[2] == memory.select("train").pair_ids[2]
    # rows come with their prompt's context codes, as the in-memory loader's
    idx = np.array([4, 0, 3])
    for a, b in zip(memory.rows(idx)[1], stream.rows(idx)[1], strict=True):
        assert set(a) == set(b) and a["text"] == b["text"]
        assert (a["context_codes"] is None) == (b["context_codes"] is None)


def test_an_epochs_order_is_drawn_once():
    order = PairOrder(num_pairs=1000, pairs_per_device=4, grad_accum=2, seed=5)
    perm = order.permutation(0)
    assert order.permutation(0) is perm and not perm.flags.writeable
    assert np.array_equal(perm, np.random.default_rng([5, 0]).permutation(1000))
    first = order.micro_batches(0, 0)
    assert np.array_equal(first[0], perm[:4]) and np.array_equal(first[1], perm[4:8])


def test_streamed_contexts_equal_the_in_memory_ones_for_text_audio_and_codes_files(tmp_path):
    """Every kind of context the loaders resolve (text; a codes file named by the
    prompt; audio the codec encodes, once per file content), streamed as in memory."""
    import pyarrow as pa
    import soundfile as sf

    from ttspo.builder.core.schemas import GENERATIONS_SCHEMA, PROMPT, PROMPTS_SCHEMA
    from ttspo.builder.core.store import Store, make_lineage
    from ttspo.builder.sets.build import build_set
    from train_helpers import pattern_rows

    wavs = [tmp_path / f"spk{k}.wav" for k in range(2)]
    for k, wav in enumerate(wavs):
        sf.write(wav, np.full(800, 0.1 * (k + 1), np.float32), 22050)
    rows, prompts = pattern_rows(12, 8, 0), []
    for r in rows:
        g = int(r[GEN.prompt_id][1:])
        codes_file = None
        if g % 3:  # audio contexts; g % 3 == 2 also has a codes file
            r[GEN.context_text], r[GEN.context_audio_filepath] = None, str(wavs[g % 2])
        if g % 3 == 2 or g == 9:  # 9: a text context with a codes file (the file wins)
            codes_file = str(tmp_path / f"p{g}_codes.pt")
            torch.save(torch.full((8, 2 + g), 100 + g, dtype=torch.int16), codes_file)
        if r[GEN.sample_index] == 0:
            prompts.append({PROMPT.prompt_id: r[GEN.prompt_id], PROMPT.text: r[GEN.text],
                            PROMPT.context_type: "audio" if g % 3 else "text",
                            PROMPT.context_audio_codes_path: codes_file})
    store = Store(tmp_path / "store")
    lineage = make_lineage("test", {})
    store.write("prompts", pa.Table.from_pylist(prompts, schema=PROMPTS_SCHEMA), PROMPTS_SCHEMA, lineage)
    store.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA),
                GENERATIONS_SCHEMA, lineage)
    build_set(store, "pareto", SET, {"val_size": 4, "seed": 0})
    calls = {"memory": 0, "stream": 0}

    def encoder(loader):
        def encode(audio, sr):
            calls[loader] += 1
            return np.full((8, 3), round(float(audio[0]) * 10), np.int64)
        return encode

    memory = load_pairs(store, SET, encode=encoder("memory"))
    stream = load_pairs(store, SET, encode=encoder("stream"), stream=True)
    assert calls == {"memory": 2, "stream": 2}  # two context files, each encoded once
    idx = np.arange(len(memory))
    kinds = set()
    for side in (0, 1):
        for a, b in zip(memory.rows(idx)[side], stream.rows(idx)[side], strict=True):
            ctx = a["context_codes"]
            kinds.add("text" if ctx is None else int(ctx[0, 0]))
            assert (b["context_codes"] is None) if ctx is None else np.array_equal(ctx, b["context_codes"])
    assert kinds == {"text", 1, 2, 102, 105, 108, 109, 111}  # text, 2 wavs, 5 codes files


def test_a_streamed_load_read_in_small_batches_equals_one_read_at_once(tmp_path):
    """The set's pair columns read a row at a time (a prompt's pairs in several
    batches, row ids looked up per batch) give the same arrays as one batch."""
    import pyarrow as pa

    from ttspo.builder.core.schemas import GENERATIONS_SCHEMA
    from ttspo.builder.core.store import Store, make_lineage
    from ttspo.builder.sets.build import build_set, open_set
    from ttspo.trainer.dpo.data import streamed_pairs
    from train_helpers import pattern_rows

    rows = pattern_rows(24, 8, 0)
    for r in rows:  # 5 prompts, each with groups all through the set
        r[GEN.prompt_id] = f"p{int(r[GEN.prompt_id][1:]) % 5}"
    store = Store(tmp_path / "store")
    store.write("generations", pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA),
                GENERATIONS_SCHEMA, make_lineage("test", {}))
    build_set(store, "pareto", SET, {"val_size": 4, "seed": 0})
    whole = streamed_pairs(store, open_set(store, SET), None, batch_rows=1 << 20)
    small = streamed_pairs(store, open_set(store, SET), None, batch_rows=1)
    assert len(small) == len(whole) > 6
    for name in ("chosen_rowid", "rejected_rowid", "chosen_reward", "rejected_reward",
                 "prompt_index"):
        assert np.array_equal(getattr(small, name), getattr(whole, name)), name
    assert small.split == whole.split and list(small.pair_ids) == list(whole.pair_ids)
    assert len(set(small.prompt_index.tolist())) == len(small.contexts) == 5
    memory = load_pairs(store, SET)  # each row id is its own generation's, as in memory
    ids = take_rows(store.open("generations", small.generations_version),
                    small.rejected_rowid.tolist(), [GEN.generation_id])
    assert ids.column(GEN.generation_id).to_pylist() == [r["generation_id"] for r in memory.rejected]


def test_sorted_ids_find_rows_as_index_in_and_a_dict_do():
    import pyarrow as pa

    from ttspo.builder.core.lance_rows import SortedIds

    keys, rows = pa.chunked_array([["b", "a"], ["c", "a"]]), np.array([10, 11, 12, 13])
    asked = pa.array(["a", "c", "z", None, "b", "", "bb"])
    assert SortedIds(keys, rows).find(asked).tolist() == [11, 12, -1, -1, 10, -1, -1]
    assert SortedIds(keys, rows, first=False).find(asked).tolist() == [13, 12, -1, -1, 10, -1, -1]
    assert SortedIds(pa.chunked_array([], pa.string()), rows[:0]).find(asked).tolist() == [-1] * 7


def test_first_seen_indexes_ids_as_unique_and_index_in_do():
    import pyarrow as pa
    import pyarrow.compute as pc

    from ttspo.trainer.dpo.data import first_seen

    ids = pa.chunked_array([["p3", "p1", "p3"], ["p0", "p1", "p9", "p0"]])
    distinct, index, first = first_seen(ids)
    assert distinct.to_pylist() == pc.unique(ids).to_pylist() == ["p3", "p1", "p0", "p9"]
    assert index.dtype == np.int32
    assert index.tolist() == pc.index_in(ids, value_set=pc.unique(ids)).to_pylist()
    assert first.tolist() == np.unique(index, return_index=True)[1].tolist() == [0, 1, 3, 5]
    assert [len(a) for a in first_seen(pa.chunked_array([], pa.string()))] == [0, 0, 0]


def test_find_row_ids_reads_the_column_by_batch_and_finds_as_index_in(tmp_path):
    """Ids looked up among a Lance column read 3 rows at a time: each id's row as
    ``index_in`` over the whole column finds it (a repeated value: its first row, even
    when its rows are in different batches and fragments), -1 for an absent or null id."""
    import lance
    import pyarrow as pa
    import pyarrow.compute as pc

    from ttspo.builder.core.lance_rows import RowsOfIds

    values = ["g5", "g1", "g9", "g1", "g3", "g7", "g2", "g5", "g8", "g0", "g3"]
    ds = lance.write_dataset(pa.table({"id": values[:7]}), tmp_path / "t.lance")
    ds = lance.write_dataset(pa.table({"id": values[7:]}), tmp_path / "t.lance", mode="append")
    whole = row_ids(ds, "id")
    # "g5", the greatest id asked, is found: a null id must not take its row
    asked = pa.chunked_array([["g3", "g5", "a-nope", None], ["g1", "g3", "g0", "g5", ""]])
    at = pc.index_in(asked, value_set=whole.column("id")).to_numpy(zero_copy_only=False)
    rows = whole.column(ROW_ID).to_numpy()
    want = [-1 if np.isnan(a) else int(rows[int(a)]) for a in at]
    assert want[:2] == [rows[4], rows[0]] and rows[7] > rows[6] + 1  # two fragments
    for batch_rows in (3, 1 << 16):
        chunks = asked.chunks
        rows_of = RowsOfIds(chunks)
        assert chunks == []  # the caller's arrays let go once sorted
        assert rows_of.read(ds, "id", batch_rows=batch_rows).tolist() == want
        assert [rows_of.id(i) for i in range(len(asked))] == asked.to_pylist()
    assert RowsOfIds([]).read(ds, "id").tolist() == []


def test_a_streamed_load_names_the_first_generation_its_version_lacks(store):
    """generation_rowids on a version without some of a set's ids: one line naming the
    first such id in pair order (the chosen side first), not a wrong row."""
    import pyarrow as pa

    from ttspo.builder.core.errors import InputError
    from ttspo.trainer.dpo.data import generation_rowids

    ds = store.open("generations", 1)
    gids = row_ids(ds, GEN.generation_id).column(GEN.generation_id).to_pylist()
    sides = lambda *sides: [[pa.array(a) for a in side] for side in sides]
    chosen = [[gids[3], gids[1]], [gids[0]]]
    rejected = [[gids[2], "r:gone"], ["r:also"]]
    found = generation_rowids(ds, sides(chosen, [gids[:3]]), what="s@1: generation")
    assert take_rows(ds, np.concatenate(found).tolist(), [GEN.generation_id]).column(
        GEN.generation_id).to_pylist() == [gids[3], gids[1], gids[0], *gids[:3]]
    with pytest.raises(InputError, match=r"^s@1: generation r:gone is not in generations@1$"):
        generation_rowids(ds, sides(chosen, rejected), what="s@1: generation")
    early = [[gids[3], "r:first"], [gids[0]]]  # both sides of pair 1
    with pytest.raises(InputError, match="generation r:first is not"):
        generation_rowids(ds, sides(early, rejected), what="s@1: generation")


def test_rows_matching_keeps_the_rows_a_filter_keeps(tmp_path):
    """Which row ids a Lance filter keeps, by a filtered scan 2 rows a batch over two
    fragments: repeated and absent (-1) rows asked, in any order."""
    import lance
    import pyarrow as pa

    from ttspo.builder.core.lance_rows import rows_matching

    text = ["a", None, "c", None, None, "f", "g"]
    ds = lance.write_dataset(pa.table({"t": text[:4]}), tmp_path / "t.lance")
    ds = lance.write_dataset(pa.table({"t": text[4:]}), tmp_path / "t.lance", mode="append")
    rows = row_ids(ds, "t").column(ROW_ID).to_numpy().astype(np.int64)
    asked = np.array([rows[3], rows[0], -1, rows[4], rows[3], rows[6], rows[1]])
    want = [True, False, False, True, True, False, True]
    assert rows_matching(ds, "t IS NULL", asked, batch_rows=2).tolist() == want
    assert rows_matching(ds, "t IS NULL", asked[:0]).tolist() == []
    assert not rows_matching(ds, "t = 'zz'", asked).any()
