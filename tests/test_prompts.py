"""`ttspo prompts`: NeMo's pairing semantics, seeded; the prompts table; bad inputs."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from ttspo.builder.prompts import draw as api
from ttspo.builder.cli.main import cli
from ttspo.builder.core.schemas import PROMPT
from ttspo.builder.core.store import Store, make_lineage

AUDIO_KEYS = ["text", "duration", "audio_filepath", "context_audio_filepath",
              "context_audio_duration", "record_type"]
CODES_KEYS = ["context_audio_codes_path", "target_audio_codes_path"]
TEXT_KEYS = ["text", "duration", "audio_filepath", "context_text", "record_type"]


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    """Input files, each option name -> path."""
    files = {
        "--challenging-texts": "Hard one.\n\n  Hard two, 3.5 km.  \nHard three?\n",
        "--regular-texts-for-audiocontext": "Regular a.\nRegular b.\n",
        "--regular-texts-for-textcontext": "Regular c.\n",
        "--audio-contexts": (
            '{"context_audio_filepath": "/ctx/a.wav", "context_audio_duration": 3.5, '
            '"context_audio_codes_path": "/ctx/a.pt"}\n'
            '\n'
            '{"context_audio_filepath": "/ctx/b.wav", "context_audio_duration": 4, "speaker": 7}\n'
            '{"context_audio_filepath": "/ctx/c.wav", "context_audio_duration": 2.25}\n'),
        "--text-contexts": "A calm voice.\nAn angry voice.  \n",
    }
    paths = {}
    for option, text in files.items():
        paths[option] = tmp_path / (option.strip("-") + ".txt")
        paths[option].write_text(text, encoding="utf-8")
    return paths


def args_for(inputs: dict[str, Path], *extra: str) -> list[str]:
    return [x for option, path in inputs.items() for x in (option, str(path))] + list(extra)


def run(store: Path, *args: str):
    return CliRunner().invoke(cli, ["--store", str(store), "prompts", *args])


def manifest_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def prompts_rows(store: Path) -> list[dict]:
    rows = Store(store).open("prompts").to_table().to_pylist()
    return sorted(rows, key=lambda r: r[PROMPT.position])


# ------------------------------------------------------------ determinism
def test_same_seed_gives_identical_manifest_and_ids(tmp_path, inputs):
    for name in ("a", "b"):
        result = run(tmp_path / f"store_{name}", *args_for(inputs, "--seed", "7", "--manifest-out",
                                                            str(tmp_path / f"{name}.json")))
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert prompts_rows(tmp_path / "store_a") == prompts_rows(tmp_path / "store_b")


def test_different_seed_gives_different_order(tmp_path, inputs):
    for seed in ("1", "2"):
        result = run(tmp_path / f"store{seed}", *args_for(
            inputs, "--seed", seed, "--manifest-out", str(tmp_path / f"{seed}.json")))
        assert result.exit_code == 0, result.output
    one, two = (tmp_path / "1.json").read_bytes(), (tmp_path / "2.json").read_bytes()
    assert one != two
    # Same texts and draw sizes either way: only which contexts and the order change.
    count = lambda b: Counter((r["text"], r["record_type"]) for r in map(json.loads, b.splitlines()))
    assert count(one) == count(two)


# ---------------------------------------------------------------- counts
@pytest.mark.parametrize("counts", [(10, 3, 1, 1), (2, 0, 3, 2), (0, 4, 0, 1)])
def test_counts_are_honoured_exactly(tmp_path, inputs, counts):
    a_c, t_c, a_r, t_r = counts
    out = tmp_path / "m.json"
    result = run(tmp_path / "store", *args_for(
        inputs, "--audio-contexts-per-challenging", str(a_c), "--text-contexts-per-challenging",
        str(t_c), "--audio-contexts-per-regular", str(a_r), "--text-contexts-per-regular",
        str(t_r), "--manifest-out", str(out), "--nsamples-perpair", "3"))
    assert result.exit_code == 0, result.output
    lines = manifest_lines(out)
    kinds = Counter((r["text"], "context_text" in r) for r in lines[::3])
    expected = Counter()
    for text in ("Hard one.", "Hard two, 3.5 km.", "Hard three?"):
        expected[(text, False)] += a_c
        expected[(text, True)] += t_c
    for text in ("Regular a.", "Regular b."):
        expected[(text, False)] += a_r
    expected[("Regular c.", True)] += t_r
    assert kinds == +expected
    assert len(lines) == 3 * sum(expected.values())


def test_each_pair_is_repeated_consecutively(tmp_path, inputs):
    out = tmp_path / "m.json"
    assert run(tmp_path / "s", *args_for(inputs, "--manifest-out", str(out),
                                         "--nsamples-perpair", "4")).exit_code == 0
    raw = out.read_text().splitlines()
    groups = [raw[i:i + 4] for i in range(0, len(raw), 4)]
    assert len(raw) == 4 * (3 * 13 + 2 + 1)
    assert all(len(set(g)) == 1 for g in groups)


def test_default_nsamples_is_nemos_six(tmp_path, inputs):
    out = tmp_path / "m.json"
    assert run(tmp_path / "s", *args_for(inputs, "--manifest-out", str(out))).exit_code == 0
    assert len(out.read_text().splitlines()) == 6 * (3 * 13 + 2 + 1)


# ---------------------------------------------------------- field layout
def test_manifest_field_layout(tmp_path, inputs):
    out = tmp_path / "m.json"
    assert run(tmp_path / "s", *args_for(inputs, "--manifest-out", str(out),
                                         "--nsamples-perpair", "1")).exit_code == 0
    lines = manifest_lines(out)
    audio = [r for r in lines if "context_audio_filepath" in r]
    text = [r for r in lines if "context_text" in r]
    assert len(audio) + len(text) == len(lines) and audio and text
    for r in audio:
        with_codes = r["context_audio_filepath"] == "/ctx/a.wav"
        assert list(r) == AUDIO_KEYS + (CODES_KEYS if with_codes else [])
        assert r["audio_filepath"] == r["context_audio_filepath"]
        assert r["duration"] == 6.0
        assert r["context_audio_duration"] == {"/ctx/a.wav": 3.5, "/ctx/b.wav": 4.0,
                                               "/ctx/c.wav": 2.25}[r["context_audio_filepath"]]
        if with_codes:
            assert r["context_audio_codes_path"] == r["target_audio_codes_path"] == "/ctx/a.pt"
    for r in text:
        # The first audio context is the dummy, codes path included.
        assert list(r) == TEXT_KEYS + ["target_audio_codes_path"]
        assert r["audio_filepath"] == "/ctx/a.wav" and r["target_audio_codes_path"] == "/ctx/a.pt"
        assert r["context_text"] in ("A calm voice.", "An angry voice.")
    assert {r["record_type"] for r in lines} == {"challenging", "regular"}
    assert {r["text"] for r in lines if r["record_type"] == "regular"} == {
        "Regular a.", "Regular b.", "Regular c."}


def test_text_records_without_dummy_codes_have_no_target_codes():
    inputs = api.PairInputs(regular_texts_for_textcontext=["x"], text_contexts=["calm"],
                            audio_contexts=[api.AudioContext("/d.wav", 1.0)])
    (record,) = api.make_pairs(inputs, api.PairCounts(text_per_regular=1))
    assert record == {"text": "x", "duration": 6.0, "audio_filepath": "/d.wav",
                      "context_text": "calm", "record_type": "regular"}


# ------------------------------------------------------------ the table
def test_manifest_round_trips_through_the_prompts_table(tmp_path, inputs):
    out = tmp_path / "m.json"
    assert run(tmp_path / "s", *args_for(inputs, "--manifest-out", str(out),
                                         "--nsamples-perpair", "2")).exit_code == 0
    lines = manifest_lines(out)
    rows = prompts_rows(tmp_path / "s")
    by_id = {r[PROMPT.prompt_id]: r for r in rows}
    assert len(by_id) == len(rows)
    line_ids = [api.prompt_id_of(r) for r in lines]
    assert set(line_ids) == set(by_id)
    for row in rows:  # position = the pair's first index in the shuffled draw
        assert line_ids.index(row[PROMPT.prompt_id]) == 2 * row[PROMPT.position]
    for record, pid in zip(lines, line_ids):
        row = by_id[pid]
        assert row[PROMPT.text] == record["text"]
        assert row[PROMPT.record_type] == record["record_type"]
        assert row[PROMPT.context_audio_filepath] == record.get("context_audio_filepath")
        assert row[PROMPT.context_audio_duration] == record.get("context_audio_duration")
        assert row[PROMPT.context_audio_codes_path] == record.get("context_audio_codes_path")
        assert row[PROMPT.context_text] == record.get("context_text")
        assert row[PROMPT.context_type] == ("text" if "context_text" in record else "audio")
    # Rebuilt from the table, the distinct pairs give back the manifest's records.
    dummy = api.AudioContext("/ctx/a.wav", 3.5, "/ctx/a.pt")
    firsts = [lines[2 * r[PROMPT.position]] for r in rows]
    assert api.records_from_table(Store(tmp_path / "s").open("prompts").to_table(), dummy) == firsts


def test_repeated_pairs_collapse_in_table_but_stay_in_manifest(tmp_path, inputs):
    out = tmp_path / "m.json"
    result = run(tmp_path / "s", *args_for(inputs, "--manifest-out", str(out),
                                           "--nsamples-perpair", "1"))
    lines = manifest_lines(out)
    distinct = len({api.prompt_id_of(r) for r in lines})
    assert distinct < len(lines)  # 10 draws from 3 audio contexts must repeat
    assert len(prompts_rows(tmp_path / "s")) == distinct
    assert result.output.splitlines()[1] == (
        f"prompts: {distinct} new rows ({len(lines) - distinct} repeated pairs in this draw, "
        f"0 already in the table) -> version 1")


def test_append_is_idempotent_and_records_lineage(tmp_path, inputs):
    store = tmp_path / "s"
    assert run(store, *args_for(inputs)).exit_code == 0
    first = prompts_rows(store)
    again = run(store, *args_for(inputs))
    assert again.exit_code == 0
    assert again.output.splitlines()[1].endswith(
        f"0 new rows ({42 - len(first)} repeated pairs in this draw, "
        f"{len(first)} already in the table) -> no new version")
    assert [v["version"] for v in Store(store).versions("prompts")] == [1]
    more = run(store, *args_for(inputs, "--seed", "5", "--audio-contexts-per-regular", "3"))
    assert more.exit_code == 0
    rows = prompts_rows(store)
    assert len({r[PROMPT.prompt_id] for r in rows}) == len(rows) > len(first)
    lineage = Store(store).lineage("prompts", 2)
    assert lineage["command"] == "prompts"
    assert lineage["inputs"] == {"prompts": 1}
    assert lineage["args"]["seed"] == 5 and lineage["args"]["audio_contexts_per_regular"] == 3
    files = lineage["input_files"]
    assert set(files) == {"challenging_texts", "regular_texts_for_audiocontext",
                          "regular_texts_for_textcontext", "audio_contexts", "text_contexts"}
    assert files["audio_contexts"] == {"path": str(inputs["--audio-contexts"].absolute()),
                                       "sha256": api.file_sha256(inputs["--audio-contexts"])}


def test_lineage_names_the_manifest(tmp_path, inputs):
    out = tmp_path / "m.json"
    assert run(tmp_path / "s", *args_for(inputs, "--manifest-out", str(out))).exit_code == 0
    manifest = Store(tmp_path / "s").lineage("prompts", 1)["manifest"]
    assert manifest == {"path": str(out), "lines": len(out.read_text().splitlines()),
                        "sha256": api.file_sha256(out)}


def test_reference_audios_fill_the_reference_column(tmp_path, inputs):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"text": "Regular a.", "context_audio_filepath": "/ctx/b.wav",
                                "reference_audio_filepath": "/ref/a_b.wav"}) + "\n")
    one = {"text": "Regular a.", "context_audio_filepath": "/ctx/b.wav",
           "context_audio_duration": 4}
    inputs["--audio-contexts"].write_text(json.dumps(one) + "\n")
    result = run(tmp_path / "s", "--regular-texts-for-audiocontext",
                 str(inputs["--regular-texts-for-audiocontext"]), "--audio-contexts",
                 str(inputs["--audio-contexts"]), "--reference-audios", str(refs))
    assert result.exit_code == 0, result.output
    refs_by_text = {r[PROMPT.text]: r[PROMPT.reference_audio_filepath]
                    for r in prompts_rows(tmp_path / "s")}
    assert refs_by_text == {"Regular a.": "/ref/a_b.wav", "Regular b.": None}


def test_python_api_matches_the_command(tmp_path, inputs):
    out = tmp_path / "m.json"
    assert run(tmp_path / "s", *args_for(inputs, "--seed", "3", "--manifest-out", str(out),
                                         "--nsamples-perpair", "2")).exit_code == 0
    loaded = api.load_inputs(
        challenging_texts=inputs["--challenging-texts"],
        regular_texts_for_audiocontext=inputs["--regular-texts-for-audiocontext"],
        regular_texts_for_textcontext=inputs["--regular-texts-for-textcontext"],
        audio_contexts=inputs["--audio-contexts"], text_contexts=inputs["--text-contexts"])
    records = api.make_pairs(loaded, api.PairCounts(), seed=3)
    assert api.write_manifest(tmp_path / "api.json", records, 2) == 2 * len(records)
    assert (tmp_path / "api.json").read_bytes() == out.read_bytes()
    result = api.write_prompts(Store(tmp_path / "api"), records, make_lineage("demo", {}))
    assert (result.pairs, result.new, result.version) == (42, result.distinct, 1)
    assert prompts_rows(tmp_path / "api") == prompts_rows(tmp_path / "s")


# ------------------------------------------------------------ bad inputs
@pytest.fixture
def used_store(tmp_path, inputs) -> Path:
    """A store that already has a prompts version: errors must leave it as it is."""
    store = tmp_path / "store"
    assert run(store, *args_for(inputs)).exit_code == 0
    return store


def fails_cleanly(store: Path, args: list[str], message: str) -> None:
    before = Store(store).versions("prompts")
    out = store.parent / "out.json"
    result = run(store, *args, "--manifest-out", str(out))
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {message}\n")
    assert Store(store).versions("prompts") == before
    assert not out.exists()
    assert not [p.name for p in store.parent.iterdir() if p.name.startswith(".out.json")]


def test_missing_file(used_store, inputs, tmp_path):
    inputs["--text-contexts"] = tmp_path / "nope.txt"
    fails_cleanly(used_store, args_for(inputs), f"{tmp_path / 'nope.txt'}: no such file")


def test_non_utf8_text_file_names_the_line(used_store, inputs):
    path = inputs["--challenging-texts"]
    path.write_bytes(b"fine\nalso fine\ncaf\xe9\n")
    fails_cleanly(used_store, args_for(inputs), f"{path}:3: not UTF-8 text (byte 0xe9)")


def test_malformed_json_line_names_file_line_and_reason(used_store, inputs):
    path = inputs["--audio-contexts"]
    path.write_text('{"context_audio_filepath": "/a.wav", "context_audio_duration": 1}\n'
                    '\n{"context_audio_filepath": "/b.wav",\n[1]\n')
    fails_cleanly(used_store, args_for(inputs),
                  f"{path}:3: not JSON (Expecting property name enclosed in double quotes "
                  f"at column 37) (and 1 more bad line)")


@pytest.mark.parametrize("line, reason", [
    ({"context_audio_duration": 2.0}, "missing 'context_audio_filepath'"),
    ({"context_audio_filepath": "/a.wav"}, "missing 'context_audio_duration'"),
    ({"context_audio_filepath": "", "context_audio_duration": 2},
     "'context_audio_filepath' must be a non-empty string (got \"\")"),
    ({"context_audio_filepath": "/a.wav", "context_audio_duration": "2"},
     "'context_audio_duration' must be a positive number (got \"2\")"),
    ({"context_audio_filepath": "/a.wav", "context_audio_duration": 0},
     "'context_audio_duration' must be a positive number (got 0)"),
    ({"context_audio_filepath": "/a.wav", "context_audio_duration": 1, "context_audio_codes_path": 3},
     "'context_audio_codes_path' must be a non-empty string (got 3)"),
])
def test_bad_audio_context_records(used_store, inputs, line, reason):
    path = inputs["--audio-contexts"]
    path.write_text(json.dumps(line) + "\n")
    fails_cleanly(used_store, args_for(inputs), f"{path}:1: {reason}")


def test_empty_text_file(used_store, inputs):
    path = inputs["--regular-texts-for-textcontext"]
    path.write_text("\n   \n")
    fails_cleanly(used_store, args_for(inputs),
                  f"{path}: no texts (the file holds only blank lines)")


def test_no_texts_at_all(used_store, inputs):
    fails_cleanly(used_store, ["--audio-contexts", str(inputs["--audio-contexts"])],
                  "no pairs to make: give challenging or regular texts with a count above 0 "
                  "(--challenging-texts, --regular-texts-for-audiocontext, "
                  "--regular-texts-for-textcontext)")


def test_audio_pairs_without_audio_contexts(used_store, inputs):
    del inputs["--audio-contexts"]
    fails_cleanly(used_store, args_for(inputs),
                  "audio-context pairs asked (10 per challenging text, 1 per regular text) "
                  "but no audio contexts given (--audio-contexts)")


def test_text_pairs_without_text_contexts(used_store, inputs):
    del inputs["--text-contexts"]
    fails_cleanly(used_store, args_for(inputs),
                  "text-context pairs asked (3 per challenging text, 1 per regular text) but no "
                  "text contexts given (--text-contexts); give some or set the text-context "
                  "counts to 0")


def test_text_pairs_need_a_dummy_audio_context(used_store, inputs):
    fails_cleanly(used_store, ["--regular-texts-for-textcontext",
                               str(inputs["--regular-texts-for-textcontext"]),
                               "--text-contexts", str(inputs["--text-contexts"])],
                  "text-context pairs need at least one audio context: NeMo's manifest uses the "
                  "first one as their dummy audio_filepath (--audio-contexts)")


def test_manifest_directory_must_exist(used_store, inputs, tmp_path):
    before = Store(used_store).versions("prompts")
    result = run(used_store, *args_for(inputs, "--seed", "9", "--manifest-out",
                                       str(tmp_path / "no" / "m.json")))
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {tmp_path / 'no' / 'm.json'}: directory {tmp_path / 'no'} does not exist\n")
    assert Store(used_store).versions("prompts") == before


def test_negative_count_is_a_usage_error(used_store, inputs):
    result = run(used_store, *args_for(inputs, "--text-contexts-per-regular", "-1"))
    assert result.exit_code == 2
    assert "Invalid value for '--text-contexts-per-regular': -1 is not in the range x>=0." \
        in result.stderr


def test_manifest_gets_ordinary_permissions(tmp_path, inputs):
    mask = os.umask(0o022)
    try:
        out = tmp_path / "m.json"
        assert run(tmp_path / "s", *args_for(inputs, "--manifest-out", str(out))).exit_code == 0
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o644
