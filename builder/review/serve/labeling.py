"""Listen and label: blind pairs in a seeded random order, and one writer of labels.

Every judgement goes through ``append_labels`` (checked, one commit, lineage).
The server has ONE writer thread: requests queue their judgements and wait; the
writer takes whatever is queued (up to MAX_BATCH) and writes it as one commit, so
labelers at once never race each other's commits and a burst costs one commit,
not one per label. A batch that fails its checks is written again one judgement
at a time, so a stale page's label fails alone and its neighbours' are kept.
"""

from __future__ import annotations

import queue
import random
import threading
from concurrent.futures import Future
from typing import Any

from ttspo.builder.core import query as q
from ttspo.builder.core.errors import InputError
from ttspo.builder.core.schemas import GEN, PAIR
from ttspo.builder.core.store import Lineage, Store
from ttspo.builder.review.labels import CHOICES, LABELS, Judgement, append_labels
from ttspo.builder.review.serve.browse import filtered, generations, table_info

MAX_BATCH = 256
FIELDS = {"labeler": str, "first_id": str, "second_id": str, "choice": str,
          "pair_id": str, "set_name": str, "set_version": int}
REQUIRED = ("labeler", "first_id", "second_id", "choice")
MAX_TEXT = 300


class LabelWriter:
    """The process's one writer of `labels` (a daemon thread fed by a queue)."""

    def __init__(self, store: Store, lineage: Lineage):
        self.store, self.lineage = store, lineage
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ttspo-label-writer", daemon=True)
        self._thread.start()

    def submit(self, judgement: Judgement) -> Future:
        """Queue JUDGEMENT; the future holds the labels version it was written in."""
        future: Future = Future()
        self._queue.put((judgement, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._flush(batch)
                    return
                batch.append(more)
            self._flush(batch)

    def _flush(self, batch: list[tuple[Judgement, Future]]) -> None:
        try:
            version = append_labels(self.store, [j for j, _ in batch], lineage=self.lineage)
        except InputError as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            for one in batch:  # find the bad ones; write the others
                self._flush([one])
            return
        except Exception as exc:  # noqa: BLE001 - every waiting request hears of it
            for _, future in batch:
                future.set_exception(exc)
            return
        for _, future in batch:
            future.set_result(version)


def parse_judgement(body: Any, *, cookie_labeler: str | None = None) -> Judgement:
    """A Judgement from a request's JSON BODY; InputError (400) naming what is wrong."""
    if not isinstance(body, dict):
        raise InputError("label: the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InputError(f"label: unknown field {unknown[0]!r}")
    if "labeler" not in body and cookie_labeler:
        body = {**body, "labeler": cookie_labeler}
    for key in REQUIRED:
        if body.get(key) is None:
            raise InputError(f"label: field {key!r} is missing")
    for key, value in body.items():
        if value is not None and (type(value) is not FIELDS[key]):
            raise InputError(f"label: field {key!r} must be a {FIELDS[key].__name__}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise InputError(f"label: field {key!r} is longer than {MAX_TEXT} characters")
    if body["choice"] not in CHOICES:
        raise InputError(f"label: choice {body['choice']!r} is not one of {', '.join(CHOICES)}")
    source = "set" if body.get("pair_id") is not None else "generations"
    return Judgement(labeler=body["labeler"].strip(), first_id=body["first_id"],
                     second_id=body["second_id"], choice=body["choice"], source=source,
                     pair_id=body.get("pair_id"), set_name=body.get("set_name"),
                     set_version=body.get("set_version"))


def draw_pair(store: Store, set_name: str, *, seed: int, where: str = "",
              labeler: str | None = None) -> dict[str, Any]:
    """One pair of SET_NAME (matching WHERE, and not yet judged by LABELER) drawn by
    SEED, its two generations in an order drawn by SEED too: A is ``first_id``. The
    page gets no metric and no hint of which one the set chose; the label records
    the order shown."""
    info = table_info(store, set_name)
    if info.kind != "set":
        raise InputError(f"listen: {set_name!r} is not a preference set")
    matching, params = filtered(set_name, where), {}
    if labeler and store.exists(LABELS):
        matching = (f'SELECT * FROM ({matching}) WHERE "{PAIR.pair_id}" NOT IN (SELECT '
                    f'pair_id FROM labels WHERE labeler = $labeler AND set_name = $set '
                    f'AND pair_id IS NOT NULL)')
        params = {"labeler": labeler.strip(), "set": set_name}
    total, versions = q.run(store, f"SELECT count(*) AS n FROM ({matching})", params)
    n = total.column("n")[0].as_py()
    if n == 0:
        raise InputError(f"listen: no pair of {set_name} matches the filter"
                         + (f" that {labeler.strip()} has not judged" if params else ""))
    rng = random.Random(seed)
    index, swap = rng.randrange(n), rng.random() < 0.5
    row = q.run(store, f'SELECT "{PAIR.pair_id}", "{PAIR.chosen_id}", "{PAIR.rejected_id}" '
                       f'FROM ({matching}) ORDER BY "{PAIR.position}", "{PAIR.pair_id}" '
                       f"LIMIT 1 OFFSET {index}", params)[0].to_pylist()[0]
    first, second = row[PAIR.chosen_id], row[PAIR.rejected_id]
    if swap:
        first, second = second, first
    text = generations(store, [first]).get(first, {}).get(GEN.text)
    return {"set_name": set_name, "set_version": versions[set_name], "pair_id": row[PAIR.pair_id],
            "first_id": first, "second_id": second, "text": text, "seed": seed,
            "index": index, "matching": n}
