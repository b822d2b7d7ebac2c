"""The `labels` table: judgements checked, then written in one commit with lineage."""

from __future__ import annotations

import json

import pytest

from ttspo.builder.core.errors import InputError
from ttspo.builder.core.store import make_lineage
from ttspo.builder.review.labels import Judgement, append_labels
from ttspo.builder.sets.build import build_set
from test_build_helpers import BASIC, make_store


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path / "store", BASIC)
    build_set(s, "pareto", "prefs")
    return s


def pair(store):
    return store.open("prefs").to_table().to_pylist()[0]


def test_judgements_are_rows_with_the_choice_resolved_and_versions_pinned(store):
    p = pair(store)
    js = [Judgement(labeler="ann", first_id=p["rejected_id"], second_id=p["chosen_id"],
                    choice="b", source="set", pair_id=p["pair_id"], set_name="prefs",
                    set_version=1),
          Judgement(labeler="bob", first_id=p["chosen_id"], second_id=p["rejected_id"], choice="tie"),
          Judgement(labeler="bob", first_id=p["chosen_id"], second_id=p["rejected_id"], choice="skip")]
    version = append_labels(store, js, lineage=make_lineage("test", {"labeler": "script"}))
    rows = sorted(store.open("labels").to_table().to_pylist(),
                  key=lambda r: (r["labeler"], r["choice"]))
    assert [(r["labeler"], r["choice"]) for r in rows] == [("ann", "b"), ("bob", "skip"), ("bob", "tie")]
    assert rows[0]["chosen_id"] == p["chosen_id"] and rows[0]["first_id"] == p["rejected_id"]
    assert rows[1]["chosen_id"] is None and rows[2]["chosen_id"] is None
    assert rows[0]["pair_id"] == p["pair_id"] and rows[0]["set_version"] == 1
    lineage = store.lineage("labels", version)
    assert lineage["command"] == "test" and lineage["inputs"]["prefs@1"] == 1
    assert json.loads(rows[0]["lineage"])["inputs"] == lineage["inputs"]


@pytest.mark.parametrize("bad, reason", [
    (dict(choice="c"), "choice 'c' is not one of a, b, tie, skip"),
    (dict(second_id="nope:1"), "unknown generation 'nope:1'"),
    (dict(labeler=" "), "no labeler named"),
    (dict(pair_id="x>y", set_name="prefs", set_version=1), "pair 'x>y' is not in prefs@1"),
    (dict(set_version=9), "set 'prefs' has no version 9"),
])
def test_a_bad_judgement_writes_nothing_of_its_batch(store, bad, reason):
    p = pair(store)
    good = Judgement(labeler="ann", first_id=p["chosen_id"], second_id=p["rejected_id"], choice="a")
    fields = dict(labeler="ann", first_id=p["chosen_id"], second_id=p["rejected_id"], choice="a",
                  pair_id=p["pair_id"], set_name="prefs", set_version=1)
    with pytest.raises(InputError, match=reason.replace("(", r"\(")):
        append_labels(store, [good, Judgement(**{**fields, **bad})], lineage=make_lineage("test"))
    assert not store.exists("labels")


def test_labels_is_not_a_set_name(store):
    with pytest.raises(Exception, match="core table name"):
        build_set(store, "pareto", "labels")
