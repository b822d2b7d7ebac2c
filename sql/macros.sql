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
