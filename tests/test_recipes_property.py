"""Property test: sql/pareto.sql against a small Python reference of the same rules.

The reference follows NeMo's create_preference_pairs.py step by step (peel
Pareto fronts, sort, pick positions, filter, normalise, shuffle, split), with the
fixes ttspo makes: strict dominance, per-pair deltas, z = 0 on a zero std, seeded
md5 shuffle, val_size in pairs drawn as whole val_by units (pair, group or
prompt). The recipe runs in DuckDB over an Arrow table
registered as `generations` (the same SQL text `ttspo build` runs).

Metrics are multiples of 1/64 so that differences are exact: the test is about
the rules, not about the last bit of a subtraction.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttspo.builder.core import query
from ttspo.builder.sets import recipes
from ttspo.builder.core.schemas import GENERATIONS_SCHEMA
from test_build_helpers import gen_table

pytestmark = pytest.mark.slow  # hypothesis over DuckDB builds (~20-40 s)

GRID = [i / 64 for i in range(65)]
point = st.tuples(
    st.sampled_from(GRID[:20] + [1.0]),  # CER: many small values, many ties
    st.sampled_from(GRID[32:]),  # SSIM in [0.5, 1]
    st.sampled_from([1.0, 1.5, 3.0, 19.0, 19.5]),  # duration, on and beyond the limits
    st.sampled_from([False] * 15 + [True]),  # rarely <INVALID>
)
groups = st.lists(st.lists(point, min_size=1, max_size=7), min_size=1, max_size=8)
params = st.fixed_dictionaries({
    "cer_threshold": st.sampled_from([0.0, 2 / 64, 0.05, 5 / 64, 1.0]),
    "min_duration": st.just(1.5), "max_duration": st.just(19.0),
    "num_chosen": st.sampled_from([1, 2]),
    "val_size": st.integers(0, 6), "val_by": st.sampled_from(["pair", "group", "prompt"]),
    "seed": st.integers(0, 3),
    "max_leading_silence": st.just(-1.0), "max_trailing_silence": st.just(-1.0),  # off
})


# ------------------------------------------------------------ reference
def dominates(a, b):
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_order(points):
    """Indices in (front, CER asc, SSIM desc, index) order, fronts by peeling."""
    front, remaining, level = {}, list(range(len(points))), 0
    while remaining:
        level += 1
        top = [i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining)]
        for i in top:
            front[i] = level
        remaining = [i for i in remaining if i not in top]
    return sorted(range(len(points)), key=lambda i: (front[i], points[i][0], -points[i][1], i))


def reference(table_rows, p):
    by_group = {}
    for r in table_rows:
        by_group.setdefault(r["group_id"], []).append(r)
    pairs = []
    for rows in by_group.values():
        if any(r["invalid"] for r in rows):
            continue
        order = [rows[i] for i in pareto_order([(r["cer"], r["ssim"]) for r in rows])]
        for c in order[:p["num_chosen"]]:
            for r in order[max(0, len(order) - p["num_chosen"]):]:
                cd, sd = r["cer"] - c["cer"], c["ssim"] - r["ssim"]
                if c is r or cd + sd <= 0 or r["cer"] < c["cer"] or r["ssim"] > c["ssim"]:
                    continue
                if not c["cer"] < p["cer_threshold"]:
                    continue
                if not all(p["min_duration"] <= x["duration"] <= p["max_duration"] for x in (c, r)):
                    continue
                pairs.append({"pair_id": f"{c['generation_id']}>{r['generation_id']}",
                              "group_id": c["group_id"], "prompt_id": c["prompt_id"],
                              "cer_delta": cd, "sim_delta": sd})
    z = {}
    for key in ("cer_delta", "sim_delta"):
        values = [q[key] for q in pairs]
        mean = sum(values) / len(values) if values else 0.0
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if values else 0.0
        z[key] = (mean, std)
    for q in pairs:
        total = 0.0
        for key, (mean, std) in z.items():
            zz = (q[key] - mean) / std if std > 0 else 0.0
            total += 0.5 * (1 + math.erf(zz / math.sqrt(2)))
        q["rejected_reward"] = 1.0 - total
    # val takes whole units (pairs, groups or prompts) in seeded order while their
    # pairs add up to at most val_size; positions: units in that order, pairs within
    # a unit in seeded order
    unit = p["val_by"] + "_id"
    md5 = lambda text: hashlib.md5(f"{p['seed']}:{text}".encode()).hexdigest()  # noqa: E731
    pairs.sort(key=lambda q: (md5(q[unit]), q[unit], md5(q["pair_id"]), q["pair_id"]))
    held = Counter(q[unit] for q in pairs)
    drawn, through = 0, {}
    for u in dict.fromkeys(q[unit] for q in pairs):
        drawn += held[u]
        through[u] = drawn
    for pos, q in enumerate(pairs):
        q["position"], q["split"] = pos, ("val" if through[q[unit]] <= p["val_size"] else "train")
    return pairs


# ------------------------------------------------------------------ test
PARETO = recipes.load_recipe("pareto")


def run_sql(table, p):
    con = duckdb.connect()
    try:
        con.register("generations", table)
        con.execute(query.macros_sql())  # what every store session defines
        return con.sql(PARETO.sql, params=p).to_arrow_table().to_pylist()
    finally:
        con.close()


@settings(max_examples=100, deadline=None)
@given(groups=groups, p=params)
def test_pareto_sql_matches_the_python_reference(groups, p):
    # three prompts shared by the groups (as with several runs of one prompt list),
    # so that val_by prompt draws units of several groups
    rows = gen_table(groups).to_pylist()
    for r in rows:
        r["prompt_id"] = f"p{r['group_index'] % 3}"
    table = pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA)
    got = run_sql(table, p)
    want = reference(table.to_pylist(), p)
    assert [(r["pair_id"], r["position"], r["split"]) for r in got] == \
           [(q["pair_id"], q["position"], q["split"]) for q in want]
    for r, q in zip(got, want):
        assert r["cer_delta"] == q["cer_delta"] and r["sim_delta"] == q["sim_delta"]
        assert abs(r["rejected_reward"] - q["rejected_reward"]) < 1e-6
        assert r["chosen_reward"] == 1.0 and r["rejected_reward"] < 1.0
