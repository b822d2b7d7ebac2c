"""Tag and set names that are not valid file or ref names, recipe files not in UTF-8:
one line, exit 1, nothing written."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ttspo.builder.cli.main import cli
from test_build_helpers import BASIC, make_store
from test_ingest_errors import tree


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "st", BASIC)


def fails(store, args, message):
    before = tree(store.root)
    result = CliRunner().invoke(cli, ["--store", str(store.root), *args])
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {message}\n")
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert tree(store.root) == before


@pytest.mark.parametrize("tag, message", [
    ("..", "tag '..' must not begin or end with '.' or hold '..'"),
    (".hidden", "tag '.hidden' must not begin or end with '.' or hold '..'"),
    ("v1.", "tag 'v1.' must not begin or end with '.' or hold '..'"),
    ("a..b", "tag 'a..b' must not begin or end with '.' or hold '..'"),
    ("t" * 300, f"tag '{'t' * 20}...' is longer than 128 characters"),
])
def test_tag_names_that_are_not_file_names(store, tag, message):
    fails(store, ["tag", "generations", "1", tag], message)


def test_a_set_name_too_long_for_a_file(store):
    fails(store, ["build", "pareto", "--name", "s" * 300],
          f"'{'s' * 20}...' is not a valid set name (longer than 128 characters)")


def test_a_recipe_file_not_in_utf8(store, tmp_path):
    recipe = tmp_path / "latin1.sql"
    recipe.write_bytes("-- café\nSELECT 1\n".encode("latin-1"))
    message = f"recipe file {recipe} is not UTF-8 (byte 0xe9 at offset 6)"
    fails(store, ["build", str(recipe), "--name", "s"], message)
    fails(store, ["recipes", str(recipe)], message)
