"""`ttspo serve`: page load time of a 100k-pair set against a 1k-pair set (the
baseline, same run), and labels/second sustained under concurrent requests.

    .venv/bin/python bench/serve.py                 # 100k vs 1k pairs, 8 labelers
    .venv/bin/python bench/serve.py --pairs 20000   # a smaller large set

Two stores (generations: two per pair, so the large store holds 200k; the set
table written directly: the bench times the page, not a build). Each store is
served by a real `ttspo serve` process on a free 127.0.0.1 port; all traffic stays
on the loopback. A "page load" is what the browser asks for on opening a set: the
page, /api/tables, then /api/rows (page 0 of 20, sorted by cer_delta descending,
each pair's two generations joined in). Also timed: a deep page (the middle of the
set) and a filtered page. Each figure is the median of --repeat loads.

Labels/s: --labelers threads post --labels judgements in all (bounded), each a
real POST through append_labels; the baseline is one thread posting one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from ttspo.builder.core.schemas import GENERATIONS_SCHEMA, PREFERENCES_SCHEMA
from ttspo.builder.core.store import Store, make_lineage


def make_store(root: Path, pairs: int) -> Store:
    n = 2 * pairs
    ids = [f"r:{i}" for i in range(n)]
    gens = pa.table({
        "generation_id": ids, "run": ["r"] * n, "prompt_id": [f"p{i // 2}" for i in range(n)],
        "group_id": [f"r:g{i // 2}" for i in range(n)], "group_index": [i // 2 for i in range(n)],
        "sample_index": pa.array([i % 2 for i in range(n)], pa.int32()),
        "text": [f"the text of prompt number {i // 2}" for i in range(n)],
        "pred_transcript": [f"the text of prom number {i // 2}" for i in range(n)],
        "audio_filepath": [f"/nowhere/{i}.wav" for i in range(n)],
        "cer": [((i * 7919) % 1000) / 1000 for i in range(n)],
        "ssim": [((i * 104729) % 1000) / 1000 for i in range(n)],
        "invalid": [False] * n,
    })
    gens = pa.Table.from_pylist(gens.to_pylist(), schema=GENERATIONS_SCHEMA)
    store = Store(root)
    store.write("generations", gens, GENERATIONS_SCHEMA, make_lineage("bench"))
    cer, ssim = gens.column("cer").to_pylist(), gens.column("ssim").to_pylist()
    rows = [{"pair_id": f"r:{2 * p}>r:{2 * p + 1}", "prompt_id": f"p{p}", "group_id": f"r:g{p}",
             "run": "r", "chosen_id": f"r:{2 * p}", "rejected_id": f"r:{2 * p + 1}",
             "chosen_reward": 1.0, "rejected_reward": 0.0, "chosen_cer": cer[2 * p],
             "rejected_cer": cer[2 * p + 1], "cer_delta": cer[2 * p + 1] - cer[2 * p],
             "sim_delta": ssim[2 * p] - ssim[2 * p + 1], "split": "train", "position": p}
            for p in range(pairs)]
    store.write("prefs", pa.Table.from_pylist(rows, schema=PREFERENCES_SCHEMA),
                PREFERENCES_SCHEMA, make_lineage("bench"))
    return store


class Served:
    def __init__(self, store: Store):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ttspo.builder.cli", "--store", str(store.root), "serve",
             "--port", "0"], stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = re.search(r"http://127\.0\.0\.1:\d+", self.proc.stderr.readline()).group(0)
        for _ in range(300):  # bounded: 30 s
            try:
                get(self.url + "/api/tables")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not answer")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        return r.status


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def page_times(url: str, pairs: int, repeat: int) -> dict[str, float]:
    def rows(**params) -> bytes:
        return get(url + "/api/rows?" + urllib.parse.urlencode({"table": "prefs", **params}))

    def load() -> None:
        get(url + "/")
        get(url + "/api/tables")
        assert len(json.loads(rows(sort="cer_delta", desc=1, size=20))["rows"]) == 20

    load()  # warm: the first query of a process parses the macros
    return {
        "page load (/, tables, page 0)": timed(load, repeat),
        "deep page (middle of the set)": timed(
            lambda: rows(sort="cer_delta", page=pairs // 40, size=20), repeat),
        "filtered page (cer_delta > 0.5)": timed(
            lambda: rows(sort="sim_delta", where="cer_delta > 0.5", size=20), repeat),
    }


def labels_per_second(url: str, store: Store, *, threads: int, total: int) -> float:
    pairs = store.open("prefs").to_table(columns=["pair_id", "chosen_id", "rejected_id"]).to_pylist()
    version = store.version("prefs")
    bodies = [json.dumps({"labeler": f"bench{i % threads}", "first_id": pairs[i % len(pairs)]["chosen_id"],
                          "second_id": pairs[i % len(pairs)]["rejected_id"], "choice": "ab"[i % 2],
                          "pair_id": pairs[i % len(pairs)]["pair_id"], "set_name": "prefs",
                          "set_version": version}).encode() for i in range(total)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(lambda b: post(url + "/api/labels", b), bodies))
    elapsed = time.perf_counter() - start
    assert statuses == [201] * total
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--baseline-pairs", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--labelers", type=int, default=8)
    parser.add_argument("--labels", type=int, default=800)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, pairs in (("baseline", args.baseline_pairs), ("large", args.pairs)):
            start = time.perf_counter()
            store = make_store(Path(tmp) / name, pairs)
            print(f"{name}: {pairs} pairs, {2 * pairs} generations written in "
                  f"{time.perf_counter() - start:.1f} s")
            server = Served(store)
            try:
                results[name] = page_times(server.url, pairs, args.repeat)
                if name == "baseline":
                    one = labels_per_second(server.url, store, threads=1, total=args.labels // 4)
                    many = labels_per_second(server.url, store, threads=args.labelers,
                                             total=args.labels)
                    count = store.open("labels").count_rows()
                    assert count == args.labels // 4 + args.labels, count
            finally:
                server.stop()
        print(f"\n| request | {args.baseline_pairs} pairs | {args.pairs} pairs | ratio |")
        print("|---|---|---|---|")
        for key in results["large"]:
            small, large = results["baseline"][key], results["large"][key]
            print(f"| {key} | {small * 1000:.1f} ms | {large * 1000:.1f} ms | {large / small:.2f}x |")
        print(f"\nlabels/s, 1 thread one at a time: {one:.0f}")
        print(f"labels/s, {args.labelers} threads at once: {many:.0f} ({many / one:.1f}x); "
              f"rows counted: {count}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
