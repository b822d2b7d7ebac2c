"""What used to exist in several copies now exists once (issue 8 item 5): scoring
defaults, lineage, atomic writes, parameter typing."""

from __future__ import annotations

import inspect
import json
import os
import stat

import pytest

import ttspo
from ttspo.builder.cli.score import score as score_command
from ttspo.builder.core.errors import InputError, first_line
from ttspo.builder.core.files import atomic_write, file_digest
from ttspo.builder.core.params import parse_params, typed_param
from ttspo.builder.core.schemas import GEN
from ttspo.builder.core.lineage import Lineage, as_lineage, make_lineage
from ttspo.builder.scoring import options as so

ODD = so.ScoreOptions(metrics=("cer", "pesq"), asr="whisper:/models/w", sv="nemo:/m.nemo",
                      squim="/w.pth", normalizer="basic", where="run = 'a b'", rescore=True,
                      batch_size=3)


# ---------------------------------------------------------- scoring defaults
def test_default_metrics_are_the_metric_columns():
    from ttspo.builder.core.schemas import METRICS
    from ttspo.builder.scoring.plan import GROUPS

    assert so.DEFAULT_METRICS == (GEN.cer, GEN.wer, GEN.ssim)
    assert tuple(so.METRIC_GROUPS) == METRICS  # every metric has its group
    assert list(dict.fromkeys(so.METRIC_GROUPS.values())) == list(GROUPS)  # in scoring order
    assert so.ScoreOptions(metrics=("squim", "wer", "ssim")).groups() == ["asr", "ssim", "squim"]


def test_the_cli_and_the_api_take_their_defaults_from_score_options():
    cli_defaults = {p.name: p.default for p in score_command.params}
    api_defaults = {k: p.default for k, p in inspect.signature(ttspo.Store.score).parameters.items()}
    for name, value in vars(so.DEFAULTS).items():
        assert api_defaults[name] == value, name
        assert cli_defaults[name] == (",".join(value) if name == "metrics" else value), name


def command_options(argv: list[str]) -> so.ScoreOptions:
    """The ScoreOptions `ttspo score ARGV` runs with (what a worker rank builds)."""
    params = score_command.make_context("score", argv).params
    return so.options_from(**{name: params[name] for name in vars(so.DEFAULTS)})


def test_worker_argv_round_trips_through_the_score_command():
    assert command_options([]) == so.ScoreOptions()
    assert command_options(so.to_argv(ODD)) == ODD
    assert so.to_argv(so.ScoreOptions()) == [
        "--metrics", "cer,wer,ssim", "--asr", "pocketsphinx", "--sv", "resemblyzer",
        "--normalizer", "nemo", "--batch-size", "16"]


# ------------------------------------------------------------------ lineage
def test_lineage_is_one_record_type():
    base = make_lineage("build", {"recipe": "pareto"})
    grown = base.with_inputs({"generations": 3}).with_extra(recipe_sha256="abc")
    assert base == Lineage("build", {"recipe": "pareto"})  # with_* never mutate
    assert list(grown)[:4] == ["command", "args", "inputs", "ttspo_version"]
    assert grown.inputs == {"generations": 3} and grown["recipe_sha256"] == "abc"
    assert grown["ttspo_version"] == ttspo.__version__
    assert Lineage.from_record(json.loads(grown.to_json())) == grown
    assert as_lineage({**grown, "x": 1}) == grown.with_extra(x=1)  # a plain record converts
    nan = make_lineage("x", {"t": float("nan")}, p=[float("inf"), 1.0])
    assert json.loads(nan.to_json()) == {**nan, "args": {"t": None}, "p": [None, 1.0]}


# ------------------------------------------------------------ atomic writes
def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as fh:
            fh.write("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["result.csv"]
    mask = os.umask(0o022)
    try:
        with atomic_write(path) as fh:
            fh.write("new\n")
    finally:
        os.umask(mask)
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["result.csv"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # an ordinary file, not mkstemp's 0600


def test_file_digest_names_the_file_it_cannot_read(tmp_path):
    (tmp_path / "m.json").write_bytes(b"a\nb\n")
    digest = file_digest(tmp_path / "m.json")
    assert digest.newlines == 2 and len(digest.sha256) == 64
    with pytest.raises(InputError, match=r"^manifest\.json: cannot read \(No such file or directory\)$"):
        file_digest(tmp_path / "nope", "manifest.json")


# ------------------------------------------------------------ --param typing
def test_parameters_are_typed_one_way():
    assert parse_params(["k=1", "x=0.5", "s=a b", "n=nan", "big=1e999"]) == {
        "k": 1, "x": 0.5, "s": "a b", "n": "nan", "big": "1e999"}
    assert typed_param("t", "0.5", like=1.0) == 0.5 and typed_param("b", "true", like=False) is True
    assert typed_param("s", "7", like="x") == "7"
    for bad, like in (("nan", 0.1), ("inf", 0.1), (float("nan"), None)):
        with pytest.raises(InputError, match="is not a finite number"):
            typed_param("t", bad, like)
    with pytest.raises(InputError, match=r"^--param t=-Infinity is not a finite number$"):
        typed_param("t", "-Infinity", numbers_only=True)  # a recipe's $t without a default
    with pytest.raises(InputError, match=r"^--param 'k' is not NAME=VALUE$"):
        parse_params(["k"])


def test_first_line_of_an_exception():
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("x" * 300), 200) == "x" * 200
