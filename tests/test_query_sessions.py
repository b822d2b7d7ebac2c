"""Query sessions are cursors on one DuckDB per process: each sees its own views,
and none can reach the file system."""

from __future__ import annotations

import threading

import duckdb
import pytest

from ttspo.builder.core import query
from ttspo.builder.core.errors import QueryError
from test_rethreshold import store  # noqa: F401  (the fixture: 20 generations with codes)


def count(session) -> int:
    return session.con.sql("SELECT count(*) FROM generations").fetchall()[0][0]


def test_two_sessions_at_once_see_their_own_views(store):
    a = query.open_session(store, [], ["generations"])
    b = query.open_session(store, [], ["generations"])
    b.restrict("generations", "sample_index = 0")
    assert (count(a), count(b)) == (20, 5)
    a.con.close()
    assert count(b) == 5  # closing one leaves the other
    c = query.open_session(store, [], ["generations"])
    assert count(c) == 20  # a new one does not see b's restriction
    assert c.con.sql("SELECT round(normal_cdf(0), 2)").fetchall()[0][0] == 0.5  # the macros


def test_sessions_in_threads_share_nothing_but_the_database(store):
    seen, errors = [], []

    def run(i):
        try:
            s = query.open_session(store, [], ["generations"])
            s.restrict("generations", f"sample_index = {i % 4}")
            seen.append((i, count(s)))
            s.con.close()
        except Exception as exc:  # noqa: BLE001  reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(seen) == [(i, 5) for i in range(8)]


def test_a_session_cannot_read_or_write_files(store, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    s = query.open_session(store, [], ["generations"])
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        s.con.sql(f"SELECT * FROM read_csv('{secret}')").fetchall()
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        s.con.execute(f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'")
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(duckdb.Error):
        s.con.execute("SET enable_external_access = true")
    with pytest.raises(QueryError):
        query.run(store, f"SELECT * FROM read_csv('{secret}')")
