"""`ttspo serve`'s app in process (Starlette's TestClient over the real app and a real
store): the token, audio with range requests, confined filters, paging, labels and
their 4xx, dynamics, agreement, escaping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from ttspo.builder.cli.main import cli
from ttspo.builder.review.serve.app import make_app
from ttspo.builder.review.serve.audio import byte_range
from ttspo.builder.review.serve.textdiff import word_diff
from serve_helpers import BLOB_ID, HOSTILE, HOSTILE_ID, add_dynamics, make_serve_store, wav_bytes

TOKEN = "s3cret"
H = {"X-Ttspo-Token": TOKEN}


@pytest.fixture
def store(tmp_path):
    return make_serve_store(tmp_path)


@pytest.fixture
def client(store):
    with TestClient(make_app(store, token=TOKEN)) as c:
        yield c


def one_pair(store):
    return store.open("prefs").to_table().to_pylist()[0]


# ------------------------------------------------------------------ token
@pytest.mark.parametrize("path", ["/", "/api/tables", "/static/app.js",
                                  "/api/audio?table=generations&id=r:2", "/nope"])
def test_every_request_without_the_token_is_401(client, path):
    for headers in ({}, {"X-Ttspo-Token": "wrong"}, {"Authorization": "Bearer wrong"}):
        r = client.get(path, headers=headers)
        assert r.status_code == 401 and "token" in r.json()["error"]
    assert client.post("/api/labels", json={}).status_code == 401


def test_the_token_by_header_bearer_query_or_the_cookie_the_page_sets(store):
    with TestClient(make_app(store, token=TOKEN)) as c:
        assert c.get("/api/tables", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/api/tables", headers=H).status_code == 200
        page = c.get(f"/?token={TOKEN}")
        assert page.status_code == 200 and "ttspo_token" in page.headers["set-cookie"]
        assert "httponly" in page.headers["set-cookie"].lower()
        assert c.get("/api/tables").status_code == 200  # the cookie now
    with TestClient(make_app(store), base_url="http://127.0.0.1:8765") as open_client:
        assert open_client.get("/api/tables").status_code == 200  # no token: loopback use


def test_without_a_token_only_loopback_names_and_no_cross_site_posts(store):
    p = one_pair(store)
    body = json.dumps({"labeler": "x", "first_id": p["chosen_id"], "second_id": p["rejected_id"],
                       "choice": "a"})
    js = {"content-type": "application/json"}
    with TestClient(make_app(store), base_url="http://localhost:8765") as c:
        assert c.get("/api/tables").status_code == 200
        rebound = c.get("/api/tables", headers={"host": "evil.example:8765"})
        assert rebound.status_code == 403 and "not a loopback name" in rebound.json()["error"]
        forged = c.post("/api/labels", content=body,
                        headers={**js, "origin": "https://evil.example"})
        assert forged.status_code == 403 and "origin" in forged.json()["error"]
        form = c.post("/api/labels", content=body, headers={"content-type": "text/plain"})
        assert form.status_code == 415
        assert not store.exists("labels")
        same = c.post("/api/labels", content=body,
                      headers={**js, "origin": "http://localhost:8765"})
        assert same.status_code == 201


def test_serve_refuses_a_non_loopback_host_without_a_token(store, tmp_path):
    r = CliRunner().invoke(cli, ["--store", str(store.root), "serve", "--host", "0.0.0.0"])
    assert r.exit_code == 1 and "give --token" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["--store", str(tmp_path / "none"), "serve", "--port", "0"])
    assert r.exit_code == 1 and "none: no such folder" in r.output
    r = CliRunner().invoke(cli, ["--store", str(store.root), "serve", "--token", " "])
    assert r.exit_code == 1 and "--token: empty" in r.output


# ------------------------------------------------------------------ audio
def test_a_wav_file_is_served_whole_and_by_range(client, store):
    row = store.open("generations").to_table(filter="generation_id = 'r:2'").to_pylist()[0]
    data = Path(row["audio_filepath"]).read_bytes()
    url = "/api/audio?table=generations&id=r:2"
    whole = client.get(url, headers=H)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get(url, headers={**H, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert client.get(url, headers={**H, "Range": f"bytes={len(data)}-"}).status_code == 416


def test_a_blob_is_served_whole_and_by_range(client):
    data = wav_bytes(99)
    url = f"/api/audio?table=generations&id={BLOB_ID}"
    assert client.get(url, headers=H).content == data
    for header, (lo, hi) in [("bytes=0-43", (0, 43)), ("bytes=1000-", (1000, len(data) - 1)),
                             ("bytes=-10", (len(data) - 10, len(data) - 1))]:
        r = client.get(url, headers={**H, "Range": header})
        assert r.status_code == 206 and r.content == data[lo:hi + 1]
        assert r.headers["content-range"] == f"bytes {lo}-{hi}/{len(data)}"
    r = client.get(url, headers={**H, "Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"


def test_byte_range_reads_one_range_and_leaves_others_whole():
    assert byte_range("bytes=5-", 10) == (5, 9)
    assert byte_range("bytes=5-100", 10) == (5, 9)
    assert byte_range("bytes=-100", 10) == (0, 9)
    assert byte_range("bytes=0-1,4-5", 10) is None and byte_range(None, 10) is None
    with pytest.raises(ValueError):
        byte_range("bytes=7-3", 10)


def test_audio_only_of_rows_in_the_store(client):
    r = client.get("/api/audio?table=generations&id=nope", headers=H)
    assert r.status_code == 404 and "no row 'nope'" in r.json()["error"]
    for table in ("prefs", "../../etc/passwd", "labels"):
        r = client.get(f"/api/audio?table={table}&id=r:2", headers=H)
        assert r.status_code == 400 and "not generations or rollouts" in r.json()["error"]
    # the request names no path: an id that looks like one is just an unknown id
    assert client.get("/api/audio?table=generations&id=/etc/passwd", headers=H).status_code == 404


# ----------------------------------------------------------------- browse
def test_pages_are_sorted_filtered_and_counted(client, store):
    cers = sorted(r["cer"] for r in store.open("generations").to_table().to_pylist()
                  if r["cer"] > 0.05)
    got = []
    for number in range(3):
        r = client.get("/api/rows", headers=H, params=dict(
            table="generations", where="cer > 0.05", sort="cer", page=number, size=4)).json()
        assert r["total"] == len(cers) and r["version"] == 1
        got += [row["cer"] for row in r["rows"]]
    assert got == cers
    desc = client.get("/api/rows", headers=H, params=dict(table="generations", sort="ssim",
                                                          desc=1, size=3)).json()
    assert [row["ssim"] for row in desc["rows"]] == [0.95, 0.9, 0.88]


def test_a_set_page_brings_each_pair_its_generations_and_diffs(client, store):
    r = client.get("/api/rows", headers=H, params=dict(table="prefs", sort="cer_delta")).json()
    assert r["kind"] == "set" and r["total"] == store.open("prefs").count_rows()
    row = r["rows"][0]
    assert row["_chosen"]["generation_id"] == row["chosen_id"]
    g = row["prompt_id"][1:]  # "text number g" was heard as "said g"
    assert row["_rejected"]["_diff"] == {"text": [["text number", True], [g, False]],
                                         "transcript": [["said", True], [g, False]]}


@pytest.mark.parametrize("where, reason", [
    ("generation_id IN (SELECT * FROM read_csv('/etc/passwd'))", "file system operations"),
    ("true; DELETE FROM generations", "SQL error"),
    ("no_such_column > 1", "no_such_column"),
])
def test_the_filter_is_confined_like_ttspo_sql(client, where, reason):
    r = client.get("/api/rows", headers=H, params=dict(table="generations", where=where))
    assert r.status_code == 400 and reason in r.json()["error"]
    assert "\n" not in r.json()["error"]


def test_a_comment_in_the_filter_cannot_drop_the_limit(client):
    r = client.get("/api/rows", headers=H, params=dict(table="generations", where="true --",
                                                       size=2)).json()
    assert len(r["rows"]) == 2 and r["total"] == 20


@pytest.mark.parametrize("params, reason", [
    (dict(table="labels"), "not a generations, rollouts or set table"),
    (dict(table="generations", sort="nope"), "no column 'nope'"),
    (dict(table="generations", size=100000), "size must be"),
    (dict(table="generations", page="x"), "must be an integer"),
])
def test_bad_browse_requests_are_400(client, params, reason):
    r = client.get("/api/rows", headers=H, params=params)
    assert r.status_code == 400 and reason in r.json()["error"]


def test_dynamics_of_a_pair(client, store):
    pair_id = one_pair(store)["pair_id"]
    note = client.get("/api/dynamics", headers=H, params={"set": "prefs", "pair_id": pair_id})
    assert note.json()["rows"] == [] and "no pair_dynamics" in note.json()["note"]
    add_dynamics(store, pair_id)
    add_dynamics(store, "other>pair")
    got = client.get("/api/dynamics", headers=H,
                     params={"set": "prefs", "pair_id": pair_id}).json()
    assert [(r["step"], r["margin"], r["correct"]) for r in got["rows"]] == \
        [(10, 0.1, 1.0), (20, -0.2, 0.0), (30, 0.3, 1.0)]
    [summary] = got["summary"]
    mean = (0.1 - 0.2 + 0.3) / 3
    spread = (((0.1 - mean) ** 2 + (-0.2 - mean) ** 2 + (0.3 - mean) ** 2) / 3) ** 0.5
    assert summary["reads"] == 3 and summary["share_correct"] == pytest.approx(2 / 3)
    assert summary["mean_margin"] == pytest.approx(mean)
    assert summary["variability"] == pytest.approx(spread)


# ----------------------------------------------------------------- labels
def label(client, body, **headers):
    return client.post("/api/labels", content=json.dumps(body),
                       headers={**H, "content-type": "application/json", **headers})


def test_a_drawn_pair_is_blind_seeded_and_its_label_records_the_order(client, store):
    pairs = {p["pair_id"]: p for p in store.open("prefs").to_table().to_pylist()}
    draws = [client.get("/api/pair", headers=H, params={"set": "prefs", "seed": s}).json()
             for s in range(12)]
    assert draws[3] == client.get("/api/pair", headers=H, params={"set": "prefs", "seed": 3}).json()
    assert not {"chosen_id", "rejected_id", "cer", "chosen_cer"} & set(draws[0])
    firsts = {d["first_id"] == pairs[d["pair_id"]]["chosen_id"] for d in draws}
    assert firsts == {True, False}  # both orders drawn
    d = draws[0]
    body = {k: d[k] for k in ("first_id", "second_id", "pair_id", "set_name", "set_version")}
    r = label(client, {**body, "labeler": "ann", "choice": "b"})
    assert r.status_code == 201
    row = store.open("labels").to_table().to_pylist()[0]
    assert (row["first_id"], row["second_id"], row["chosen_id"]) == \
        (d["first_id"], d["second_id"], d["second_id"])
    assert row["labeler"] == "ann" and row["source"] == "set"
    lineage = store.lineage("labels", r.json()["labels_version"])
    assert lineage["command"] == "serve" and lineage["args"]["labeler"] == "page"


def test_the_labeler_may_come_from_the_cookie(client, store):
    p = one_pair(store)
    client.cookies.set("ttspo_labeler", "cookie-carl")
    r = label(client, {"first_id": p["chosen_id"], "second_id": p["rejected_id"], "choice": "tie"})
    assert r.status_code == 201
    assert store.open("labels").to_table().to_pylist()[0]["labeler"] == "cookie-carl"


@pytest.mark.parametrize("body, reason", [
    ("not json", "not JSON"),
    ([1, 2], "must be a JSON object"),
    ({"first_id": "r:0", "second_id": "r:1", "choice": "a"}, "'labeler' is missing"),
    ({"labeler": "x", "first_id": "r:0", "second_id": "r:1", "choice": "z"}, "choice 'z'"),
    ({"labeler": "x", "first_id": "r:0", "second_id": "r:1", "choice": "a", "extra": 1},
     "unknown field 'extra'"),
    ({"labeler": "x", "first_id": "r:0", "second_id": 5, "choice": "a"}, "must be a str"),
    ({"labeler": "x", "first_id": "r:0", "second_id": "r:1", "choice": "a", "pair_id": "p",
      "set_name": "prefs", "set_version": True}, "must be a int"),
    ({"labeler": "x", "first_id": "r:0", "second_id": "nope", "choice": "a"},
     "unknown generation 'nope'"),
    ({"labeler": "x", "first_id": "r:0", "second_id": "r:1", "choice": "a", "pair_id": "r:0>r:1",
      "set_name": "prefs", "set_version": 1}, "stale page"),
    ({"labeler": "x", "first_id": "r:0", "second_id": "r:1", "choice": "a", "pair_id": "r:0>r:1",
      "set_name": "prefs", "set_version": 7}, "has no version 7"),
])
def test_a_bad_label_is_a_one_line_400_and_writes_nothing(client, store, body, reason):
    r = label(client, body) if not isinstance(body, str) else \
        client.post("/api/labels", headers={**H, "content-type": "application/json"}, content=body)
    assert r.status_code == 400, r.text
    assert reason in r.json()["error"] and "\n" not in r.json()["error"]
    assert not store.exists("labels")


def test_a_stale_pair_after_the_set_is_rebuilt(client, store):
    from ttspo.builder.sets.build import build_set

    from test_build_helpers import BASIC, add_run

    old = {p["pair_id"]: p for p in store.open("prefs").to_table().to_pylist()}
    add_run(store, BASIC, "r2")
    build_set(store, "best_worst", "prefs", runs=["r2"])  # a new version, none of r's pairs
    gone = sorted(set(old) - set(store.open("prefs").to_table()["pair_id"].to_pylist()))
    p = old[gone[0]]  # a page drawn before the rebuild, labelled after it
    r = label(client, {"first_id": p["chosen_id"], "second_id": p["rejected_id"],
                       "pair_id": p["pair_id"], "set_name": "prefs",
                       "set_version": store.version("prefs"), "labeler": "a", "choice": "a"})
    assert r.status_code == 400 and "stale page" in r.json()["error"]
    assert not store.exists("labels")


def test_agreement_counts_what_people_chose_against_each_metric(client, store):
    assert client.get("/api/agreement", headers=H).json()["rows"] == []
    gens = {r["generation_id"]: r for r in store.open("generations").to_table().to_pylist()}
    # r:4 (cer .01, ssim .85) vs r:5 (cer .02, ssim .60) and r:6 (cer .2, ssim .5)
    cases = [("r:4", "r:5", "a"), ("r:5", "r:4", "a"), ("r:6", "r:4", "b"), ("r:4", "r:6", "tie")]
    for first, second, choice in cases:
        assert label(client, {"labeler": "x", "first_id": first, "second_id": second,
                              "choice": choice}).status_code == 201
    rows = {r["metric"]: r for r in client.get("/api/agreement", headers=H).json()["rows"]}
    assert gens["r:5"]["cer"] > gens["r:4"]["cer"] and gens["r:5"]["ssim"] < gens["r:4"]["ssim"]
    # chosen: r:4 (agrees), r:5 (disagrees), r:4 (agrees); the tie is left out
    for metric in ("cer", "ssim"):
        assert (rows[metric]["judged"], rows[metric]["agree"], rows[metric]["disagree"]) == (3, 2, 1)
        assert rows[metric]["agreement"] == pytest.approx(2 / 3)
    assert rows["pesq"]["judged"] == 0 and rows["pesq"]["agreement"] is None


# --------------------------------------------------------------- escaping
def test_stored_text_is_sent_as_data_and_the_page_runs_only_its_own_script(client):
    r = client.get("/api/rows", headers=H, params=dict(table="generations",
                                                      where=f"generation_id = '{HOSTILE_ID}'"))
    assert r.json()["rows"][0]["text"] == HOSTILE  # data, for text nodes
    assert r.headers["content-type"] == "application/json"
    page = client.get("/", headers=H)
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/static/app.js", headers=H).text
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script


def test_word_diff_marks_what_the_transcript_lost_and_added():
    d = word_diff("The cat sat on the mat", "the cat sat on a hat today")
    assert d["text"] == [["The cat sat on", False], ["the mat", True]]
    assert d["transcript"] == [["the cat sat on", False], ["a hat today", True]]
    assert word_diff(None, "") == {"text": [], "transcript": []}


# ------------------------------------------------------- the parts directly
def test_only_loopback_hosts_go_without_a_token():
    from ttspo.builder.cli.serve import _loopback

    assert all(_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(_loopback(h) for h in ("0.0.0.0", "10.1.2.3", "::", "example.org"))


def test_browsable_tables_are_generations_rollouts_and_sets(store):
    from ttspo.builder.review.serve import browse

    add_dynamics(store, "a>b")
    kinds = {t.name: t.kind for t in browse.browsable(store)}
    assert kinds == {"generations": "generations", "prefs": "set"}
    assert "cer_delta" in browse.table_info(store, "prefs").numeric
    # the condition on its own line: a trailing comment ends with it
    assert browse.filtered("prefs", "true -- x") == 'SELECT * FROM "prefs" WHERE (\ntrue -- x\n)'


def test_the_writer_writes_every_good_label_and_fails_a_bad_one_alone(store):
    from concurrent.futures import ThreadPoolExecutor

    from ttspo.builder.core.errors import InputError
    from ttspo.builder.core.store import make_lineage
    from ttspo.builder.review.labels import Judgement
    from ttspo.builder.review.serve.labeling import LabelWriter

    writer = LabelWriter(store, make_lineage("serve", {"labeler": "page"}))
    good = [Judgement(labeler=f"l{i}", first_id="r:4", second_id="r:5", choice="ab"[i % 2])
            for i in range(40)]
    bad = Judgement(labeler="x", first_id="r:4", second_id="nope", choice="a")
    with ThreadPoolExecutor(8) as pool:  # submitted from many threads, as the server does
        futures = list(pool.map(writer.submit, good[:20] + [bad] + good[20:]))
    writer.close()
    with pytest.raises(InputError, match="unknown generation 'nope'"):
        futures[20].result(timeout=60)
    assert all(isinstance(f.result(timeout=60), int) for f in futures[:20] + futures[21:])
    labelers = store.open("labels").to_table()["labeler"].to_pylist()
    assert sorted(labelers) == sorted(j.labeler for j in good)


def test_rollouts_are_browsed_and_played_too(client, store, tmp_path):
    import pyarrow as pa

    from ttspo.builder.core.schemas import ROLLOUTS_SCHEMA
    from ttspo.builder.core.store import make_lineage

    wav = tmp_path / "roll.wav"
    wav.write_bytes(wav_bytes(7))
    rows = [{"rollout_id": f"g:{s}:train:0:{i}", "run": "g", "step": s, "split": "train",
             "prompt_id": "p0", "group_id": "g:g0", "group_index": 0, "sample_index": i,
             "text": "a b c", "pred_transcript": "a x c", "audio_filepath": str(wav),
             "cer": 0.1 * i, "invalid": False, "reward": 1.0 - i, "advantage": 0.5 - i,
             "valid": True, "group_valid": True} for s in (1, 2) for i in (0, 1)]
    store.write("rollouts", pa.Table.from_pylist(rows, schema=ROLLOUTS_SCHEMA), ROLLOUTS_SCHEMA,
                make_lineage("test-grpo"))
    r = client.get("/api/rows", headers=H, params=dict(table="rollouts", where="step = 2",
                                                      sort="reward")).json()
    assert r["kind"] == "rollouts" and r["total"] == 2
    assert [row["rollout_id"] for row in r["rows"]] == ["g:2:train:0:1", "g:2:train:0:0"]
    assert r["rows"][0]["_diff"]["transcript"] == [["a", False], ["x", True], ["c", False]]
    audio = client.get("/api/audio", headers=H, params={"table": "rollouts", "id": "g:1:train:0:1"})
    assert audio.status_code == 200 and audio.content == wav.read_bytes()


def test_a_labeler_is_drawn_only_pairs_they_have_not_judged(client, store):
    n = store.open("prefs").count_rows()
    seen = set()
    for seed in range(n):
        d = client.get("/api/pair", headers=H, params={"set": "prefs", "seed": seed,
                                                      "labeler": "una"}).json()
        assert d["matching"] == n - seed and d["pair_id"] not in seen
        seen.add(d["pair_id"])
        body = {k: d[k] for k in ("first_id", "second_id", "pair_id", "set_name", "set_version")}
        assert label(client, {**body, "labeler": "una", "choice": "skip"}).status_code == 201
    done = client.get("/api/pair", headers=H, params={"set": "prefs", "labeler": "una"})
    assert done.status_code == 400 and "that una has not judged" in done.json()["error"]
    other = client.get("/api/pair", headers=H, params={"set": "prefs", "labeler": "vic"})
    assert other.json()["matching"] == n
