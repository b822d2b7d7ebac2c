"""Analysis of generated runs: paired comparison of runs (SQL macros, bootstrap, permutation)."""
