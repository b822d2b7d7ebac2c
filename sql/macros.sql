-- ttspo SQL macros: defined in every session `ttspo sql` and `ttspo build` open,
-- so recipes (built-in or your own) share one definition of NeMo's formulas.

-- Phi(v), the standard normal CDF. DuckDB has no erf: Phi(v) = erfc(-v / sqrt 2) / 2
-- with erfc from Numerical Recipes' Chebyshev fit (erfcc, fractional error < 1.2e-7):
-- u = |v| / sqrt 2, t = 1 / (1 + u / 2), erfcc(u) = t * exp(-u^2 + poly(t)).
CREATE OR REPLACE MACRO erfcc_half_abs(v, t) AS
    t * exp(-v * v / 2 - 1.26551223
        + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223
        + t * 0.17087277)))))))));

CREATE OR REPLACE MACRO normal_cdf(v) AS (
    CASE WHEN v <= 0 THEN 0.5 * erfcc_half_abs(v, 1 / (1 + abs(v) / (2 * sqrt(2))))
         ELSE 1 - 0.5 * erfcc_half_abs(v, 1 / (1 + abs(v) / (2 * sqrt(2)))) END);

-- z-score with NeMo's population std; 0 when the std is 0 (NeMo divides by zero).
CREATE OR REPLACE MACRO zscore(x, mean, std) AS (
    CASE WHEN std > 0 THEN (x - mean) / std ELSE 0 END);

-- NeMo's rejected reward: 1 - (Phi(z(cer_delta)) + Phi(z(sim_delta))), in (-1, 1).
CREATE OR REPLACE MACRO nemo_rejected_reward(cer_z, sim_z) AS (
    1.0::DOUBLE - (normal_cdf(cer_z) + normal_cdf(sim_z)));

-- The generations the built-in recipes may pair: FROM usable_points('generations').
-- A group (group_id) is skipped whole if any of its rows is invalid (NeMo's
-- <INVALID>) or has a CER or SSIM that is missing or not finite (NeMo would crash
-- or emit NaN). k (row) and gk (group) are compact integer keys, used only to join.
-- silence_ok(value, limit): a recipe's validity limit on a VAD metric: a negative limit
-- is off; otherwise the value must be known and at most the limit (unscored fails).
CREATE OR REPLACE MACRO silence_ok(value, lim) AS (lim < 0 OR coalesce(value <= lim, false));
CREATE OR REPLACE MACRO usable_points(gen) AS TABLE
WITH
usable_groups AS MATERIALIZED (
    SELECT group_id, row_number() OVER () AS gk
    FROM query_table(gen)
    GROUP BY group_id
    HAVING NOT bool_or(invalid)
       AND bool_and(coalesce(isfinite(cer) AND isfinite(ssim), false))
)
SELECT row_number() OVER () AS k, u.gk, g.generation_id, g.group_id, g.prompt_id, g.run,
       g.record_type, g.sample_index, g.cer, g.ssim, g.duration,
       g.lead_silence, g.trail_silence  -- the VAD's (NULL until scored): recipe validity
FROM query_table(gen) g JOIN usable_groups u USING (group_id);

-- NeMo's rewards and a seeded train/val split, shared by the built-in recipes (and
-- yours): FROM nemo_rewards_and_split('pairs', $seed, $val_size, $val_by), where
-- 'pairs' names a CTE of kept pairs with pair_id, prompt_id, group_id, cer_delta and
-- sim_delta. Adds rejected_reward, split and position to its columns.
--   * rejected_reward = 1 - (Phi(z(cer_delta)) + Phi(z(sim_delta))), z over ALL kept
--     pairs with NeMo's population std (z = 0 when a std is 0); sums run over sorted
--     lists, so the bits are the same whatever the thread scheduling;
--   * the split draws whole units -- val_by 'pair' (NeMo), 'group' or 'prompt' (no
--     prompt on both sides) -- in a seeded order (md5 of seed and unit): the first
--     units go to val while the pairs they hold add up to at most val_size;
--   * position: that order, each unit's pairs in seeded order (md5 of seed and pair
--     id), so val is a prefix. With val_by 'pair' this is NeMo's shuffle with the
--     first val_size pairs as val.
CREATE OR REPLACE MACRO nemo_rewards_and_split(pairs_table, seed, val_size, val_by) AS TABLE
WITH
settings AS (
    SELECT seed::VARCHAR AS seed,
           CASE WHEN val_size >= 0 THEN val_size::BIGINT
                ELSE error('val_size must be >= 0, not ' || val_size::VARCHAR) END AS val_size,
           CASE WHEN val_by IN ('pair', 'group', 'prompt') THEN val_by::VARCHAR
                ELSE error('val_by must be pair, group or prompt, not ''' || val_by::VARCHAR || '''') END AS val_by
),
kept AS MATERIALIZED (SELECT * FROM query_table(pairs_table)),
delta_lists AS (
    SELECT list(cer_delta ORDER BY cer_delta) AS cl, list(sim_delta ORDER BY sim_delta) AS sl
    FROM kept
),
means AS (
    SELECT cl, sl, list_sum(cl) / len(cl) AS cer_mean, list_sum(sl) / len(sl) AS sim_mean
    FROM delta_lists
),
stats AS (
    SELECT cer_mean, sim_mean,
           sqrt(list_sum(list_transform(cl, lambda x: (x - cer_mean) * (x - cer_mean))) / len(cl)) AS cer_std,
           sqrt(list_sum(list_transform(sl, lambda x: (x - sim_mean) * (x - sim_mean))) / len(sl)) AS sim_std
    FROM means
),
rewarded AS (
    SELECT k.*,
           nemo_rejected_reward(zscore(k.cer_delta, s.cer_mean, s.cer_std),
                                zscore(k.sim_delta, s.sim_mean, s.sim_std)) AS rejected_reward,
           CASE t.val_by WHEN 'pair' THEN k.pair_id WHEN 'group' THEN k.group_id
                ELSE k.prompt_id END AS __unit
    FROM kept k, stats s, settings t
),
drawn AS (
    -- units in seeded order, each unit's pairs in seeded order; __drawn: the pairs
    -- held by this unit and every unit before it (RANGE: a unit's pairs are peers)
    SELECT r.*,
           row_number() OVER (ORDER BY md5(t.seed || ':' || __unit), __unit,
                                       md5(t.seed || ':' || pair_id), pair_id) - 1 AS position,
           count(*) OVER (ORDER BY md5(t.seed || ':' || __unit), __unit
                          RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __drawn
    FROM rewarded r, settings t
)
SELECT * EXCLUDE (__unit, __drawn),
       CASE WHEN __drawn <= (SELECT t.val_size FROM settings t) THEN 'val' ELSE 'train' END AS split
FROM drawn;

-- ------------------------------------------------------------ comparing runs
-- compare_prompts(gen, run_a, run_b [, metrics]): one row per metric and prompt that
-- BOTH runs have a value for (gen names a generations view: 'generations' or
-- 'generations@12'). metrics: the numeric columns to compare, by default every metric
-- of the registry (builder/core/metrics.py; {{METRICS}} is filled in from it); any
-- other numeric column works too (codes_len, duration). A listed column the view
-- lacks (an older store) is left out. Each run's samples of a prompt are averaged
-- first (rows NeMo marked invalid are left out: their metrics are placeholders).
-- diff = b - a. context: 'text' when the prompt has a context text, else 'audio'.
-- Means sum sorted lists: same bits always.
CREATE OR REPLACE MACRO compare_prompts(gen, run_a, run_b, metrics := {{METRICS}}) AS TABLE
WITH
picked AS (
    SELECT run AS __run, prompt_id AS __prompt_id, record_type AS __record_type,
           CASE WHEN context_text IS NOT NULL THEN 'text' ELSE 'audio' END AS __context,
           COLUMNS(lambda c: list_contains(metrics, c))::DOUBLE
    FROM query_table(gen)
    WHERE run IN (run_a, run_b) AND NOT invalid
),
long AS (
    UNPIVOT picked ON COLUMNS(* EXCLUDE (__run, __prompt_id, __record_type, __context))
    INTO NAME metric VALUE value
),
per_prompt AS (
    SELECT metric, __prompt_id AS prompt_id, min(__record_type) AS record_type,
           min(__context) AS context,
           list_sum(list(value ORDER BY value) FILTER (WHERE __run = run_a))
               / count(value) FILTER (WHERE __run = run_a) AS a,
           list_sum(list(value ORDER BY value) FILTER (WHERE __run = run_b))
               / count(value) FILTER (WHERE __run = run_b) AS b,
           count(value) FILTER (WHERE __run = run_a) AS samples_a,
           count(value) FILTER (WHERE __run = run_b) AS samples_b
    FROM long
    WHERE isfinite(value)
    GROUP BY metric, __prompt_id
)
SELECT run_a::VARCHAR AS run_a, run_b::VARCHAR AS run_b, metric, prompt_id, record_type, context,
       samples_a, samples_b, a, b, b - a AS diff
FROM per_prompt
WHERE samples_a > 0 AND samples_b > 0
ORDER BY list_position(metrics, metric), prompt_id;

-- The seeded draw number J of replicate REPLICATE of the stream WHAT (see below).
CREATE OR REPLACE MACRO replicate_key(what, seed, replicate) AS
    hash(what || ':' || seed::VARCHAR || ':' || replicate::VARCHAR);
CREATE OR REPLACE MACRO seeded_draw(key, j) AS hash(xor(key, hash(j)));

-- compare_runs(gen, run_a, run_b [, seed, n_boot, n_perm, confidence]): per metric,
-- over the prompts both runs share (compare_prompts), overall and per record type
-- and context kind: prompts, means of a and b, the mean paired difference b - a,
-- its percentile bootstrap interval (n_boot resamples of prompts with replacement)
-- and the two-sided p-value of a sign-flip permutation test (n_perm random sign
-- flips of the per-prompt differences; (extreme + 1) / (n_perm + 1)). Every draw is
-- a hash of the seed, its replicate and its position: the same data and seed give the
-- same numbers, whatever the thread count. ttspo compare and the Python API call this.
-- Why two hashes: DuckDB's many-argument hash() combines its arguments' hashes so
-- weakly that replicates come out as complements of each other; one string hash per
-- replicate, then one integer hash per position, gives independent draws.
-- metrics: as compare_prompts'; lower: the metrics where lower is better, neither:
-- those with no better direction (the registry's by default: filled in from it).
CREATE OR REPLACE MACRO compare_runs(gen, run_a, run_b, seed := 0, n_boot := 1000,
                                     n_perm := 1000, confidence := 0.95,
                                     metrics := {{METRICS}}, lower := {{LOWER}},
                                     neither := {{NEITHER}}) AS TABLE
WITH
per_prompt AS MATERIALIZED (SELECT * FROM compare_prompts(gen, run_a, run_b, metrics := metrics)),
sliced AS (
    SELECT metric, 'all' AS breakdown, 'all' AS slice, prompt_id, a, b, diff FROM per_prompt
    UNION ALL
    SELECT metric, 'record_type', record_type, prompt_id, a, b, diff FROM per_prompt
    WHERE record_type IS NOT NULL
    UNION ALL
    SELECT metric, 'context', context, prompt_id, a, b, diff FROM per_prompt
),
slices AS MATERIALIZED (
    SELECT metric, breakdown, slice, count(*) AS n,
           list(a ORDER BY prompt_id) AS av, list(b ORDER BY prompt_id) AS bv,
           list(diff ORDER BY prompt_id) AS dv
    FROM sliced GROUP BY metric, breakdown, slice
),
boot AS (
    SELECT metric, breakdown, slice,
           quantile_cont(m, (1 - confidence) / 2) AS ci_low,
           quantile_cont(m, 1 - (1 - confidence) / 2) AS ci_high
    FROM (SELECT s.metric, s.breakdown, s.slice,
                 list_sum(list_transform(range(s.n),
                     lambda j: s.dv[(seeded_draw(r.key, j) % s.n)::BIGINT + 1])) / s.n AS m
          FROM slices s,
               (SELECT replicate_key('boot', seed, range) AS key FROM range(n_boot)) r)
    GROUP BY metric, breakdown, slice
),
perm AS (
    SELECT metric, breakdown, slice,
           count(*) FILTER (WHERE abs(m) >= abs(observed) * (1 - 1e-12)) AS extreme
    FROM (SELECT s.metric, s.breakdown, s.slice, list_sum(s.dv) / s.n AS observed,
                 list_sum(list_transform(range(s.n),
                     lambda j: CASE WHEN seeded_draw(r.key, j) % 2 = 0
                                    THEN s.dv[j + 1] ELSE -s.dv[j + 1] END)) / s.n AS m
          FROM slices s,
               (SELECT replicate_key('perm', seed, range) AS key FROM range(n_perm)) r)
    GROUP BY metric, breakdown, slice
)
SELECT run_a::VARCHAR AS run_a, run_b::VARCHAR AS run_b, s.metric,
       CASE WHEN list_contains(lower, s.metric) THEN 'lower'
            WHEN list_contains(neither, s.metric) THEN 'neither' ELSE 'higher' END AS better,
       s.breakdown, s.slice, s.n AS prompts,
       list_sum(s.av) / s.n AS mean_a, list_sum(s.bv) / s.n AS mean_b,
       list_sum(s.dv) / s.n AS diff, b.ci_low, b.ci_high,
       (p.extreme + 1) / (n_perm + 1) AS p_value
FROM slices s
JOIN boot b USING (metric, breakdown, slice)
JOIN perm p USING (metric, breakdown, slice)
ORDER BY list_position(metrics, s.metric),
         list_position(['all', 'record_type', 'context'], s.breakdown), s.slice;

-- ------------------------------------------------- pair dynamics and labels
-- Dataset cartography (Swayamdipta et al. 2020) over `pair_dynamics` (a DPO run's
-- implicit-reward margin per pair: one row per train pair per epoch, one per val pair
-- per validation; correct is 1 ranked right, 0.5 a tie, 0 wrong). dyn names the view
-- ('pair_dynamics' or 'pair_dynamics@5'), run_name the run (its folder's name), split
-- 'train' or 'val'. One row per pair of that run:
--   reads          rows (epochs or validations) the pair has
--   confidence     mean margin;  variability: its population std over the reads
--   share_correct  mean of correct (a tie counts a half)
--   forgets        reads ranked wrong right after a read ranked right
--   never_learned  never ranked right (wrong or a tie at every read: the first
--                  train epoch of a run starts from its reference, a tie)
--   forgotten      ranked right at some read and wrong at a later one
-- Means sum sorted lists: the same rows give the same bits whatever the threads.
CREATE OR REPLACE MACRO pair_cartography(dyn, run_name, split_name := 'train') AS TABLE
WITH
reads AS (
    SELECT set_name, set_version, pair_id, step, margin, correct,
           lag(correct) OVER (PARTITION BY set_name, set_version, pair_id ORDER BY step) AS before
    FROM query_table(dyn)
    WHERE run = run_name AND split = split_name
),
per_pair AS (
    SELECT set_name, set_version, pair_id, count(*) AS reads,
           min(step) AS first_step, max(step) AS last_step,
           list_sum(list(margin ORDER BY margin)) / count(*) AS confidence,
           list(margin ORDER BY margin) AS margins,
           list_sum(list(correct ORDER BY correct)) / count(*) AS share_correct,
           arg_max(correct, step) AS last_correct,
           count(*) FILTER (WHERE before = 1 AND correct = 0) AS forgets,
           max(correct) < 1 AS never_learned,
           coalesce(min(step) FILTER (WHERE correct = 1)
                    < max(step) FILTER (WHERE correct = 0), false) AS forgotten
    FROM reads GROUP BY set_name, set_version, pair_id
)
SELECT run_name::VARCHAR AS run, set_name, set_version, pair_id, reads, first_step, last_step,
       confidence,
       sqrt(list_sum(list_transform(margins, lambda m: (m - confidence) * (m - confidence)))
            / reads) AS variability,
       share_correct, last_correct, forgets, never_learned, forgotten
FROM per_pair
ORDER BY set_name, set_version, pair_id;

-- The pairs run_name never ranked right, and those it ranked right and then wrong.
CREATE OR REPLACE MACRO never_learned_pairs(dyn, run_name, split_name := 'train') AS TABLE
SELECT * FROM pair_cartography(dyn, run_name, split_name := split_name) WHERE never_learned;

CREATE OR REPLACE MACRO forgotten_pairs(dyn, run_name, split_name := 'train') AS TABLE
SELECT * FROM pair_cartography(dyn, run_name, split_name := split_name) WHERE forgotten;

-- The latest judgement of each labeled pair of generations (labels rows with a
-- choice of a or b; tie and skip say nothing of which is better): first_id and
-- second_id as shown, chosen_id the one the labeler picked, other_id the other.
-- A pair judged again later counts once, by its latest judgement (time, label_id).
CREATE OR REPLACE MACRO label_choices(lab := 'labels') AS TABLE
SELECT least(first_id, second_id) AS low_id, greatest(first_id, second_id) AS high_id,
       arg_max(chosen_id, (time, label_id)) AS chosen_id,
       arg_max(CASE WHEN chosen_id = first_id THEN second_id ELSE first_id END,
               (time, label_id)) AS other_id,
       arg_max(labeler, (time, label_id)) AS labeler,
       arg_max(pair_id, (time, label_id)) AS pair_id,
       count(*) AS judgements
FROM query_table(lab)
WHERE choice IN ('a', 'b')
GROUP BY ALL;

-- label_agreement(): how often each metric prefers the generation people chose. One
-- row per registered metric (builder/core/metrics.py; its direction from there,
-- metrics with no direction left out): n labeled pairs (label_choices) whose two
-- generations both have a finite value that differs, agree those where the metric's
-- better one is the chosen one, agree_share = agree / n (NULL when n is 0).
-- `ttspo sql "SELECT * FROM label_agreement()"`; the views may be named:
-- label_agreement(lab := 'labels@3', gen := 'generations@12').
CREATE OR REPLACE MACRO label_agreement(lab := 'labels', gen := 'generations',
                                        metrics := {{METRICS}}, lower := {{LOWER}},
                                        neither := {{NEITHER}}) AS TABLE
WITH
picked AS (
    SELECT generation_id AS __id, COLUMNS(lambda c: list_contains(metrics, c)
                                          AND NOT list_contains(neither, c))::DOUBLE
    FROM query_table(gen)
),
long AS (
    UNPIVOT picked ON COLUMNS(* EXCLUDE (__id)) INTO NAME metric VALUE value
),
judged AS (
    SELECT c.metric, CASE WHEN list_contains(lower, c.metric) THEN -1 ELSE 1 END AS better,
           c.value AS c, o.value AS o
    FROM label_choices(lab := lab) l
    JOIN long c ON c.__id = l.chosen_id
    JOIN long o ON o.__id = l.other_id AND o.metric = c.metric
),
counted AS (
    SELECT metric,
           count(*) FILTER (WHERE isfinite(c) AND isfinite(o) AND c <> o) AS n,
           count(*) FILTER (WHERE isfinite(c) AND isfinite(o) AND sign(c - o) = better) AS agree
    FROM judged GROUP BY metric
)
SELECT m.metric, coalesce(n, 0) AS n, coalesce(agree, 0) AS agree,
       CASE WHEN n > 0 THEN agree / n END AS agree_share
FROM (SELECT unnest(list_filter(metrics, lambda x: NOT list_contains(neither, x))) AS metric) m
LEFT JOIN counted USING (metric)
ORDER BY list_position(metrics, m.metric);

-- run_summary(gen, run_name [, seed, n_boot, confidence, metrics, lower]): the table a
-- paper reports for ONE run: per metric, the prompts with a value, the mean over
-- prompts (a prompt's samples averaged first, as compare_prompts) and its seeded
-- percentile bootstrap interval (prompts resampled). ttspo compare --summary calls it
-- per run; restrict gen to a test set first (ttspo compare --prompts TAG / --where).
CREATE OR REPLACE MACRO run_summary(gen, run_name, seed := 0, n_boot := 1000,
                                    confidence := 0.95, metrics := {{METRICS}},
                                    lower := {{LOWER}}, neither := {{NEITHER}}) AS TABLE
WITH
per_prompt AS MATERIALIZED (
    SELECT metric, prompt_id, a AS value
    FROM compare_prompts(gen, run_name, run_name, metrics := metrics)
),
slices AS MATERIALIZED (
    SELECT metric, count(*) AS n, list(value ORDER BY prompt_id) AS v
    FROM per_prompt GROUP BY metric
),
boot AS (
    SELECT metric,
           quantile_cont(m, (1 - confidence) / 2) AS ci_low,
           quantile_cont(m, 1 - (1 - confidence) / 2) AS ci_high
    FROM (SELECT s.metric,
                 list_sum(list_transform(range(s.n),
                     lambda j: s.v[(seeded_draw(r.key, j) % s.n)::BIGINT + 1])) / s.n AS m
          FROM slices s,
               (SELECT replicate_key('boot', seed, range) AS key FROM range(n_boot)) r)
    GROUP BY metric
)
SELECT run_name::VARCHAR AS run, s.metric,
       CASE WHEN list_contains(lower, s.metric) THEN 'lower'
            WHEN list_contains(neither, s.metric) THEN 'neither' ELSE 'higher' END AS better,
       s.n AS prompts, list_sum(s.v) / s.n AS mean, b.ci_low, b.ci_high
FROM slices s
JOIN boot b USING (metric)
ORDER BY list_position(metrics, s.metric);
