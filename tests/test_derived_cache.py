"""What a re-threshold would compute again is kept in the store (STORE/.derived):
a new session reads it instead of computing, gets the same bytes as without any
cache, and a damaged, unwritable or outgrown cache costs time, never results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttspo.builder.core.schemas import GEN
from ttspo.builder.sets import session_cache, stored_maps
from ttspo.builder.sets.build import build_set, open_set
from ttspo.builder.sets.export import export_nemo
from test_build_helpers import BASIC, gen_rows
from test_rethreshold import store, write_generations  # noqa: F401  (store: the fixture)

KINDS = ("recipe.region", "recipe.generations", "export.line_parts", "export.codes")


def rethreshold(store, out, threshold):
    """build + export, as a notebook re-thresholds: (pairs, manifests, codes bytes)."""
    build_set(store, "pareto", "s", {"cer_threshold": threshold, "val_size": 2})
    result = export_nemo(store, "s", out)
    manifests = tuple((out / name).read_text().replace(str(out), "OUT")
                      for name in ("dpo_train_manifest.json", "dpo_val_manifest.json"))
    named = {json.loads(line)["target_audio_codes_path"] for text in manifests for line in text.splitlines()}
    codes = {Path(p).name: Path(p).read_bytes() for p in named}  # in STORE/codes
    return open_set(store, "s").rows(), manifests, codes, result


def truth(store, out, threshold):
    with session_cache.disabled():
        return rethreshold(store, out, threshold)[:3]


def stored_files(store):
    return sorted(p.name for p in (store.root / session_cache.DERIVED_DIR).glob("*.arrow"))


@pytest.mark.slow
def test_a_new_session_reads_what_an_earlier_one_kept(store, tmp_path):
    rethreshold(store, tmp_path / "out", 0.1)
    assert {name.split("-")[0] for name in stored_files(store)} == set(KINDS)
    for threshold in (0.02, 0.1):
        session_cache.clear()  # a new Python session (or a CLI command)
        got = rethreshold(store, tmp_path / "out", threshold)
        assert not session_cache.computed, dict(session_cache.computed)
        expected = truth(store, tmp_path / f"truth{threshold}", threshold)
        assert got[0].equals(expected[0]) and got[0].num_rows > 0
        assert got[1:3] == expected[1:3]


def test_a_set_naming_more_generations_computes_only_those(store, tmp_path):
    first = rethreshold(store, tmp_path / "out", 0.008)[3]  # 4 of the 5 groups
    (parts,) = (store.root / session_cache.DERIVED_DIR).glob("export.line_parts-*.arrow")
    rows = session_cache._read(parts).column("row").to_pylist()
    assert rows == sorted(rows) and len(rows) == 8  # computed in table order, not the set's (8 generations)
    session_cache.clear()
    rethreshold(store, tmp_path / "out", 0.1)  # all 5
    assert session_cache.computed["export.line_parts"] == 2  # the fifth group's pair
    assert session_cache.computed["export.codes"] == 2
    session_cache.clear()
    rethreshold(store, tmp_path / "out", 0.008)
    assert not session_cache.computed and first.codes_written == 8


def test_a_damaged_entry_is_computed_again(store, tmp_path):
    rethreshold(store, tmp_path / "out", 0.1)
    folder = store.root / session_cache.DERIVED_DIR
    for i, path in enumerate(sorted(folder.glob("*.arrow"))):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if i % 2 else b"not arrow")
    session_cache.clear()
    got = rethreshold(store, tmp_path / "out", 0.1)
    assert set(session_cache.computed) == set(KINDS)
    expected = truth(store, tmp_path / "truth", 0.1)
    assert got[0].equals(expected[0]) and got[1:3] == expected[1:3]
    session_cache.clear()  # and what was computed again is kept again
    rethreshold(store, tmp_path / "out", 0.1)
    assert not session_cache.computed


def test_a_store_it_cannot_write_to_is_only_not_cached(store, tmp_path):
    (store.root / session_cache.DERIVED_DIR).write_text("a file where the folder would be")
    got = rethreshold(store, tmp_path / "out", 0.1)
    expected = truth(store, tmp_path / "truth", 0.1)
    assert got[0].equals(expected[0]) and got[1:3] == expected[1:3]
    assert (store.root / session_cache.DERIVED_DIR).is_file()
    session_cache.clear()  # a new session computes everything again: nothing was kept
    rethreshold(store, tmp_path / "out", 0.1)
    assert set(session_cache.computed) == set(KINDS)


@pytest.mark.slow
def test_disabled_writes_nothing_and_each_kind_keeps_its_newest_files(store, tmp_path):
    with session_cache.disabled():
        rethreshold(store, tmp_path / "out", 0.1)
    assert not (store.root / session_cache.DERIVED_DIR).exists()
    rows = gen_rows(BASIC)
    for version in range(session_cache.MAX_FILES + 2):  # a new generations version each time
        rows[0][GEN.cer] = 0.001 * version
        write_generations(store, rows)
        build_set(store, "pareto", "s", {"cer_threshold": 0.1})
    regions = [n for n in stored_files(store) if n.startswith("recipe.region-")]
    assert len(regions) == session_cache.MAX_FILES
    session_cache.clear()
    build_set(store, "pareto", "s", {"cer_threshold": 0.1})  # the newest is among them
    assert not session_cache.computed


def test_entries_another_ttspo_wrote_go_at_the_next_write_of_their_kind(store, tmp_path):
    folder = store.root / session_cache.DERIVED_DIR
    folder.mkdir()
    old = folder / f"recipe.region-{'0' * 12}-{'1' * 32}.arrow"  # as an older ttspo named it
    old.write_bytes(b"an entry of other code")
    other_kind = folder / f"recipe.regionx-{'0' * 12}-{'1' * 32}.arrow"
    other_kind.write_bytes(b"not this kind")
    build_set(store, "pareto", "s", {"cer_threshold": 0.1})
    assert not old.exists() and other_kind.exists()
    regions = [n for n in stored_files(store) if n.startswith("recipe.region-")]
    assert len(regions) == 1 and regions[0].startswith(f"recipe.region-{session_cache.code_stamp()[:12]}-")


def test_a_region_naming_a_table_in_other_letter_case_still_sees_a_new_version(store, tmp_path):
    from ttspo.builder.sets.recipes import load_recipe

    # pareto's region reads generations through usable_points (sql/macros.sql)
    sql = load_recipe("pareto").sql.replace("usable_points('generations')",
                                            "usable_points('Generations')")
    assert "usable_points('Generations')" in sql
    recipe = tmp_path / "cased.sql"
    recipe.write_text(sql)
    build_set(store, str(recipe), "s", {"cer_threshold": 0.1})
    rows = gen_rows(BASIC)
    rows[0][GEN.invalid] = True  # a new version: group 0 is no longer usable
    write_generations(store, rows)
    session_cache.clear()  # (a new session: the store's copy would be read)
    build_set(store, str(recipe), "s", {"cer_threshold": 0.1})
    got = open_set(store, "s").rows()
    with session_cache.disabled():
        build_set(store, str(recipe), "t", {"cer_threshold": 0.1})
    assert got.equals(open_set(store, "t").rows())
    assert not [p for p in got.column("chosen_id").to_pylist() if p == "r:0"]


def test_threads_asking_one_stored_map_for_other_ids_get_their_own_rows(store):
    import threading

    import pyarrow as pa

    from ttspo.builder.core.schemas import CODES_KEYS_SCHEMA

    def compute(ids):
        return pa.table([ids, [f"key of {i}" for i in ids], [f"{i}.pt" for i in ids]], schema=CODES_KEYS_SCHEMA)

    for trial in range(10):
        results, errors = {}, []

        def ask(name, ids):
            try:
                results[name] = stored_maps.stored_map(store, "test.map", trial,
                                                         CODES_KEYS_SCHEMA, ids=ids,
                                                         compute=compute)
            except Exception as exc:  # noqa: BLE001  reported below
                errors.append(exc)

        asks = {n: [f"{n}{i}" for i in range(300)] for n in "abcd"}
        threads = [threading.Thread(target=ask, args=item) for item in asks.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for name, ids in asks.items():
            assert results[name].column("key").to_pylist() == [f"key of {i}" for i in ids]


def test_the_same_version_with_another_row_deleted_is_another_key(tmp_path):
    import shutil

    import lance
    import pyarrow as pa

    path = tmp_path / "t.lance"
    lance.write_dataset(pa.table({"a": [1, 2, 3]}), str(path), enable_stable_row_ids=True)
    shutil.copytree(path, tmp_path / "backup")
    lance.dataset(str(path)).delete("a = 1")
    first = session_cache.table_identity(lance.dataset(str(path)))
    shutil.rmtree(path)  # the folder restored from a copy: the same data files, the same version
    shutil.copytree(tmp_path / "backup", path)
    lance.dataset(str(path)).delete("a = 2")
    second = session_cache.table_identity(lance.dataset(str(path)))
    assert first[1] == second[1] == 2 and first != second


def test_a_temporary_file_a_killed_writer_left_goes_once_it_is_old(store, tmp_path):
    import os
    import time

    folder = store.root / session_cache.DERIVED_DIR
    folder.mkdir()
    old, new = folder / ".recipe.region-x.arrow.ab12.tmp", folder / ".recipe.region-y.arrow.cd34.tmp"
    for path in (old, new):
        path.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    build_set(store, "pareto", "s", {"cer_threshold": 0.1})
    assert not old.exists() and new.exists()


def test_rebuilding_a_set_named_like_a_recipe_cte_keeps_the_ranking(store):
    build_set(store, "pareto", "pairs", {"cer_threshold": 0.1})  # pareto has a CTE `pairs`
    session_cache.clear()
    build_set(store, "pareto", "pairs", {"cer_threshold": 0.02})
    assert not session_cache.computed
