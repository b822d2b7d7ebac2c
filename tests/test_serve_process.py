"""`ttspo serve` as a real process (uvicorn on a free loopback port): the token, a
range request over the wire, and many concurrent labels, none lost."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import ttspo

from serve_helpers import Server, make_serve_store

pytestmark = pytest.mark.slow
TOKEN = "tok-123"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = make_serve_store(tmp_path_factory.mktemp("serve"))
    server = Server(store, token=TOKEN)
    yield store, server
    server.stop()


def call(url, *, data=None, headers=None):
    request = urllib.request.Request(url, data=data, headers=headers or {},
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_without_the_token_401_with_it_a_range(served):
    store, server = served
    status, _, body = call(server.url + "/api/tables")
    assert status == 401 and "token" in json.loads(body)["error"]
    status, headers, body = call(server.url + "/api/audio?table=generations&id=r:3",
                                 headers={"X-Ttspo-Token": TOKEN, "Range": "bytes=0-11"})
    assert status == 206 and body[:4] == b"RIFF" and len(body) == 12
    assert headers["content-range"].startswith("bytes 0-11/")


def test_many_concurrent_labels_are_all_written(served):
    store, server = served
    pairs = store.open("prefs").to_table().to_pylist()
    n, threads = 120, 12
    bodies = [json.dumps({"labeler": f"l{i % threads}", "first_id": pairs[i % len(pairs)]["chosen_id"],
                          "second_id": pairs[i % len(pairs)]["rejected_id"], "choice": "ab"[i % 2],
                          "pair_id": pairs[i % len(pairs)]["pair_id"], "set_name": "prefs",
                          "set_version": 1}).encode() for i in range(n)]
    headers = {"X-Ttspo-Token": TOKEN, "content-type": "application/json"}
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda b: call(server.url + "/api/labels", data=b,
                                               headers=headers), bodies))
    assert [s for s, _, _ in results] == [201] * n
    assert ttspo.Store(store.root).sql("SELECT count(*) AS n FROM labels")["n"][0] == n
    versions = {json.loads(b)["labels_version"] for _, _, b in results}
    assert len(versions) < n  # batched: fewer commits than labels
