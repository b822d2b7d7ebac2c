"""The NeMo export's codes files kept once in STORE/codes: manifests name them, a
second export writes none, --copy-codes gives today's folder byte for byte, gc
removes a file only when no kept generations version holds its generation, a
damaged file is one line, and the manifests are written in chunks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from ttspo.builder.core import codes_store, lifecycle
from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import DERIVED
from ttspo.builder.core.store import make_lineage
from ttspo.builder.sets import codes as codes_mod
from ttspo.builder.sets import codes_copy
from ttspo.builder.sets import export as export_mod
from ttspo.builder.sets import nemo_lines, session_cache
from ttspo.builder.sets.build import build_set, open_set
from ttspo.builder.sets.export import export_nemo, safe_name
from ttspo.builder.sets.nemo_lines import manifest_chunks, openings, set_generations
from test_build_helpers import BASIC, gen_rows
from test_rethreshold import codes_of, store, write_generations  # noqa: F401  (store: the fixture)

MANIFESTS = ("dpo_train_manifest.json", "dpo_val_manifest.json")


def records(out: Path) -> list[dict]:
    return [json.loads(line) for name in MANIFESTS for line in (out / name).read_text().splitlines()]


def tree(root: Path) -> dict[str, tuple]:
    """Every file under ROOT: (size, inode, mtime): what a write would change."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def old_bytes(codes, dtype=torch.int32) -> bytes:
    """What the export wrote before STORE/codes: torch.save of the int32 tensor."""
    buffer = io.BytesIO()
    torch.save(torch.tensor(codes, dtype=dtype), buffer)
    return buffer.getvalue()


def test_manifests_name_store_codes_files_named_by_their_sha256(store, tmp_path):
    build_set(store, "pareto", "a", {"cer_threshold": 0.02})
    result = export_nemo(store, "a", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(MANIFESTS)  # no codes in OUT
    named = {r["generation_id"]: Path(r["target_audio_codes_path"]) for r in records(tmp_path / "out")}
    assert result.codes_written == len(named) == 10
    root = store.root.absolute() / "codes"
    for gid, path in named.items():
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        assert path == root / sha[:2] / f"{sha}-{safe_name(gid)}.pt"
        assert data == old_bytes(codes_of(int(gid.split(":")[1])))
        assert torch.load(path).dtype == torch.int32
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_a_second_export_writes_no_codes(store, tmp_path):
    build_set(store, "pareto", "a", {"cer_threshold": 0.008})  # 4 of the 5 groups
    export_nemo(store, "a", tmp_path / "one")
    before = tree(store.root / "codes")
    for fresh_session in (False, True):
        if fresh_session:
            session_cache.clear()  # a new session (a CLI command): reads STORE/.derived
        again = export_nemo(store, "a", tmp_path / f"two{fresh_session}")
        assert (again.codes_written, again.codes_copied, again.codes_reused) == (0, 0, 8)
        assert tree(store.root / "codes") == before  # not one file written or touched
        written = sorted(p.name for p in (tmp_path / f"two{fresh_session}").iterdir())
        assert written == sorted(MANIFESTS)
        for name in MANIFESTS:  # and the same manifests (the same absolute paths)
            assert (tmp_path / f"two{fresh_session}" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    build_set(store, "pareto", "b", {"cer_threshold": 0.02})  # a re-threshold: one group more
    wider = export_nemo(store, "b", tmp_path / "three")
    assert (wider.codes_written, wider.codes_reused) == (2, 8)
    grown = tree(store.root / "codes")
    assert {k: v for k, v in grown.items() if k in before} == before and len(grown) == 10


def test_copy_codes_is_the_old_export_byte_for_byte(store, tmp_path):
    build_set(store, "pareto", "a", {"cer_threshold": 0.02})
    export_nemo(store, "a", tmp_path / "named")
    result = export_nemo(store, "a", tmp_path / "copy", copy_codes=True)
    assert (result.codes_written, result.codes_copied, result.codes_reused) == (0, 10, 0)
    index = json.loads((tmp_path / "copy" / codes_copy.INDEX_NAME).read_text())
    assert index["format"] == codes_copy.INDEX_FORMAT and len(index["files"]) == 10  # each copy vouched for
    files = {p.name: p.read_bytes() for p in (tmp_path / "copy" / "codes").iterdir()}
    ids = {r["generation_id"] for r in records(tmp_path / "copy")}
    assert files == {f"{safe_name(g)}.pt": old_bytes(codes_of(int(g.split(":")[1]))) for g in ids}
    for r in records(tmp_path / "copy"):
        assert r["target_audio_codes_path"] == str((tmp_path / "copy" / "codes").absolute()
                                                    / f"{safe_name(r['generation_id'])}.pt")
    # the manifests differ from the plain export's in the codes paths only
    named = {r["generation_id"]: r["target_audio_codes_path"] for r in records(tmp_path / "named")}
    for name in MANIFESTS:
        text = (tmp_path / "named" / name).read_text()
        for gid, path in named.items():
            text = text.replace(json.dumps(path), json.dumps(str((tmp_path / "copy" / "codes").absolute()
                                                                 / f"{safe_name(gid)}.pt")))
        assert text == (tmp_path / "copy" / name).read_text()
    wide = export_nemo(store, "a", tmp_path / "copy64", copy_codes=True, codes_dtype="int64")
    assert wide.codes_written == 10  # int64 files are other bytes: other store files
    for p in (tmp_path / "copy64" / "codes").iterdir():
        assert p.read_bytes() == old_bytes(torch.load(tmp_path / "copy" / "codes" / p.name).tolist(),
                                           torch.int64)


def test_a_damaged_codes_file_is_one_line_naming_it(store, tmp_path):
    build_set(store, "pareto", "a", {"cer_threshold": 0.02})
    export_nemo(store, "a", tmp_path / "out")
    path = Path(records(tmp_path / "out")[0]["target_audio_codes_path"])
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit flipped
    session_cache.clear()
    runner = CliRunner()
    base = ["--store", str(store.root), "export", "nemo", "a"]
    result = runner.invoke(cli, base + ["--out", str(tmp_path / "copy"), "--copy-codes"])
    assert result.exit_code == 1
    assert result.output == (f"Error: {path}: damaged codes file (its SHA-256 is not the one its name says); "
                             "remove it and export again (the export writes it anew)\n")
    assert not (tmp_path / "copy" / MANIFESTS[0]).exists()
    path.write_bytes(good[:-3])  # truncated: a plain export's stat sees it
    result = runner.invoke(cli, base + ["--out", str(tmp_path / "plain")])
    assert result.exit_code == 1
    assert result.output == (f"Error: {path}: damaged codes file ({len(good) - 3} bytes, its content had "
                             f"{len(good)}); remove it and export again (the export writes it anew)\n")
    assert not (tmp_path / "plain" / MANIFESTS[0]).exists()
    path.unlink()  # as the message says: the export writes it anew
    again = export_nemo(store, "a", tmp_path / "plain")
    assert (again.codes_written, again.codes_reused) == (1, 9) and path.read_bytes() == good


def test_gc_keeps_a_codes_file_while_a_kept_generations_version_holds_its_generation(store, tmp_path):
    build_set(store, "pareto", "prefs", {"cer_threshold": 0.02})  # prefs@1 from generations@1
    export_nemo(store, "prefs", tmp_path / "one")
    old = tree(store.root / "codes")
    write_generations(store, gen_rows(BASIC, run="x"), codes=lambda i: codes_of(i + 100))  # @2: other ids
    build_set(store, "pareto", "prefs", {"cer_threshold": 0.02})  # prefs@2 from generations@2
    export_nemo(store, "prefs", tmp_path / "two")
    new = {k: v for k, v in tree(store.root / "codes").items() if k not in old}
    assert len(old) == len(new) == 10
    policy = lifecycle.policy_of(1, None)

    def gc(dry_run):
        return lifecycle.gc(store, policy=policy, dry_run=dry_run, lineage=make_lineage("gc", {}))

    # prefs@1 and generations@1 would go (nothing else names generations@1): its codes too
    dry = gc(True)
    assert sorted(dry.codes.files) == sorted(old) and dry.codes.kept == 10
    assert dry.codes.bytes == sum(size for size, _, _ in old.values())
    assert tree(store.root / "codes").keys() == old.keys() | new.keys()  # a dry run removes nothing
    # while a kept version holds them (a tag keeps generations@1), they stay
    store.tag("generations", 1, "keep")
    held = lifecycle.gc(store, lifecycle.GENERATIONS, policy=policy, lineage=make_lineage("gc", {}))
    assert held.codes.files == [] and tree(store.root / "codes").keys() == old.keys() | new.keys()
    store.open("generations").tags.delete("keep")
    done = gc(False)
    assert sorted(done.codes.files) == sorted(old) and done.codes.bytes == dry.codes.bytes
    assert tree(store.root / "codes") == new  # the kept version's files, untouched
    log = store.open("store_log").to_table().to_pylist()
    assert {"table": "codes", "bytes": dry.codes.bytes} in [{k: r[k] for k in ("table", "bytes")} for r in log]
    for r in records(tmp_path / "two"):  # the latest export still reads
        assert torch.load(r["target_audio_codes_path"]).dtype == torch.int32


def test_gc_dry_run_lists_the_codes_files_from_the_cli(store, tmp_path):
    build_set(store, "pareto", "prefs", {"cer_threshold": 0.02})
    export_nemo(store, "prefs", tmp_path / "one")
    write_generations(store, gen_rows(BASIC, run="x"), codes=lambda i: codes_of(i + 100))
    build_set(store, "pareto", "prefs", {"cer_threshold": 0.02})
    files = sorted(tree(store.root / "codes"))
    result = CliRunner().invoke(cli, ["--store", str(store.root), "gc", "--keep-last", "1", "--dry-run"])
    assert result.exit_code == 0, result.output
    listed = [line.removeprefix("would remove: codes/") for line in result.output.splitlines()
              if line.startswith("would remove: codes/")]
    assert listed == files
    total = sum((store.root / "codes" / f).stat().st_size for f in files)
    assert f"dry run: would remove 10 codes files of STORE/codes, freeing {total} bytes (0 kept)" in result.output


def test_manifests_are_written_in_chunks_with_the_same_bytes(store, tmp_path):
    build_set(store, "pareto", "a", {"cer_threshold": 0.5, "num_chosen": 2, "val_size": 3})
    whole = export_nemo(store, "a", tmp_path / "whole")
    sv = open_set(store, "a")
    pairs = sv.rows()
    gens = set_generations(store, sv, pairs)
    pieces = list(manifest_chunks(pairs, gens.ids, openings(gens, {}), chunk=2))
    train, val = whole.pairs["train"], whole.pairs["val"]
    assert train > 4 and val == 3
    assert [(s, n) for s, _, n in pieces] == (
        [("train", 4)] * (train // 2) + [("train", 2)] * (train % 2) + [("val", 4), ("val", 2)])
    for chunk in (1, 2, 7):
        export_nemo(store, "a", tmp_path / f"c{chunk}", chunk_pairs=chunk)
        for name in MANIFESTS:
            assert (tmp_path / f"c{chunk}" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    with pytest.raises(InputError, match="^chunk_pairs 0: must be 1 or more$"):
        export_nemo(store, "a", tmp_path / "c0", chunk_pairs=0)


def test_codes_and_line_parts_read_in_chunks_give_the_same_files(store, tmp_path, monkeypatch):
    build_set(store, "pareto", "a", {"cer_threshold": 0.02})
    with session_cache.disabled():
        monkeypatch.setattr(codes_mod, "CHUNK", 3)  # 10 generations: 4 chunks
        monkeypatch.setattr(nemo_lines, "PARTS_CHUNK", 4)  # 3 chunks
        monkeypatch.setattr(nemo_lines, "ID_BATCH", 3)  # the table's ids scanned 3 at a time
        export_nemo(store, "a", tmp_path / "small")
    small = {p: p.read_bytes() for p in (store.root / "codes").rglob("*.pt")}
    for p in small:
        p.unlink()
    monkeypatch.undo()  # the defaults: one chunk each
    with session_cache.disabled():
        export_nemo(store, "a", tmp_path / "big")
    assert {p: p.read_bytes() for p in (store.root / "codes").rglob("*.pt")} == small
    for name in MANIFESTS:
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "big" / name).read_bytes()


def test_concurrent_exports_write_each_file_once(store, tmp_path):
    build_set(store, "pareto", "a", {"cer_threshold": 0.02})
    results, errors = [], []

    def run(i):
        try:
            results.append(export_nemo(store, "a", tmp_path / f"o{i}"))
        except Exception as exc:  # noqa: BLE001  reported below
            errors.append(exc)

    with session_cache.disabled():  # each thread computes and writes the files itself
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert sum(r.codes_written for r in results) == 10  # each file written by one of them
    files = list((store.root / "codes").rglob("*"))
    assert len([p for p in files if p.is_file()]) == 10 and not [p for p in files if p.suffix == ".tmp"]
    for i in range(1, 4):
        for name in MANIFESTS:
            assert (tmp_path / f"o{i}" / name).read_bytes() == (tmp_path / "o0" / name).read_bytes()


def test_put_never_replaces_and_check_sees_a_wrong_size(tmp_path):
    data = b"x" * 10
    assert codes_store.put(tmp_path, "ab/f.pt", data) is True
    ino = os.stat(tmp_path / "ab" / "f.pt").st_ino
    assert codes_store.put(tmp_path, "ab/f.pt", data) is False
    assert os.stat(tmp_path / "ab" / "f.pt").st_ino == ino
    with pytest.raises(InputError, match=r"f\.pt: damaged codes file \(10 bytes, its content had 11\)"):
        codes_store.put(tmp_path, "ab/f.pt", data + b"y")
    assert np.array_equal(np.frombuffer((tmp_path / "ab" / "f.pt").read_bytes(), np.uint8),
                          np.frombuffer(data, np.uint8))


def test_line_parts_taken_from_a_wider_stored_entry_give_the_manifests_of_a_fresh_export(store, tmp_path):
    """The export takes each chunk's line parts from the stored entry by position
    (no copy in set order): an entry holding other generations too, in another
    order, read in this session or from STORE/.derived, gives the same bytes as
    line parts computed afresh for this set alone, in any chunk size."""
    build_set(store, "pareto", "wide", {"cer_threshold": 0.5, "num_chosen": 2, "val_size": 3})
    export_nemo(store, "wide", tmp_path / "wide")  # the entry: every generation "wide" names
    build_set(store, "pareto", "narrow", {"cer_threshold": 0.02, "val_size": 1})
    sv = open_set(store, "narrow")
    gens = set_generations(store, sv, sv.rows())
    assert gens.parts.num_rows > len(gens.ids)  # the entry holds more than this set names
    assert gens.at.to_pylist() != list(range(len(gens.ids)))
    assert gens.column(DERIVED.id) == gens.ids.to_pylist()
    with session_cache.disabled():
        export_nemo(store, "narrow", tmp_path / "fresh")
    expected = {name: (tmp_path / "fresh" / name).read_bytes() for name in MANIFESTS}
    assert expected[MANIFESTS[0]].count(b"\n") > 4
    for new_session, chunk in ((False, 8192), (False, 1), (True, 3)):
        if new_session:
            session_cache.clear()  # read from STORE/.derived
        export_nemo(store, "narrow", tmp_path / f"{new_session}{chunk}", chunk_pairs=chunk)
        for name in MANIFESTS:
            assert (tmp_path / f"{new_session}{chunk}" / name).read_bytes() == expected[name]
    assert session_cache.computed["export.line_parts"] == 0  # every part came from the entry
    # a named codes file deleted since: found by its row in the stored codes keys, written again
    named = [Path(r["target_audio_codes_path"]) for r in records(tmp_path / "True3")]
    gone = named[len(named) // 2]
    data = gone.read_bytes()
    gone.unlink()
    again = export_nemo(store, "narrow", tmp_path / "again")
    assert (again.codes_written, gone.read_bytes()) == (1, data)
    assert records(tmp_path / "again") == records(tmp_path / "True3")


@pytest.mark.parametrize("big", [False, True])
def test_a_set_stored_out_of_shuffle_order_gives_the_same_manifests(store, tmp_path, monkeypatch, big):
    """A big set's pairs are read a chunk at a time, by their offsets in the table
    (a small one whole): a version whose rows are not in shuffle order (not what
    build writes, but a valid set) still gives the lines in shuffle order."""
    monkeypatch.setattr(export_mod, "TRIM_ABOVE", 0 if big else 32768)
    build_set(store, "pareto", "a", {"cer_threshold": 0.5, "num_chosen": 2, "val_size": 3})
    export_nemo(store, "a", tmp_path / "sorted")
    sv = open_set(store, "a")
    table = sv.dataset.to_table()
    order = np.random.default_rng(0).permutation(table.num_rows)
    assert order.tolist() != sorted(order.tolist())
    store.write("a", table.take(order), table.schema, make_lineage("test", {}), mode="overwrite")
    assert open_set(store, "a").dataset.to_table().column("position").to_pylist() != sorted(
        table.column("position").to_pylist())
    for chunk in (8192, 2):
        export_nemo(store, "a", tmp_path / f"shuffled{chunk}", chunk_pairs=chunk)
        for name in MANIFESTS:
            assert (tmp_path / f"shuffled{chunk}" / name).read_bytes() == (tmp_path / "sorted" / name).read_bytes()
