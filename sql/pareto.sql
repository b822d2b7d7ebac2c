-- ttspo recipe: pareto
--
-- NeMo's chosen/rejected selection (scripts/magpietts/dpo/create_preference_pairs.py,
-- nemo-formats.md section 3) as one DuckDB SELECT over `generations`, with NeMo's
-- defects fixed:
--   * Pareto fronts use strict dominance (no worse on both CER and SSIM, better on
--     one), so points tied exactly share a front (NeMo loops forever on a tie);
--   * cer_delta / sim_delta are computed per pair (NeMo aliases a rejected record
--     shared by several pairs when num_chosen = 2);
--   * a standard deviation of 0 gives z = 0 (NeMo divides by zero);
--   * the shuffle is seeded (md5 of seed and pair id, independent of threads);
--   * val_size counts PAIRS, and val takes whole pairs, groups or prompts
--     (val_by), so nothing is split across train and val.
-- A group (group_id) is skipped if any of its rows is invalid (NeMo's <INVALID>),
-- or has a CER or SSIM that is missing or not finite (NeMo would crash or emit NaN).
-- Within a group, generations are ordered by (front, CER asc, SSIM desc, sample
-- index); chosen = the first num_chosen, rejected = the last num_chosen, every
-- chosen x rejected combination, then NeMo's filters.
--
-- Rejected reward = 1 - (Phi(z(cer_delta)) + Phi(z(sim_delta))), z over all kept
-- pairs (population std; z = 0 if std = 0). Rewards, split and shuffle are the
-- table macro nemo_rewards_and_split of sql/macros.sql (Phi via erfcc, fractional
-- error < 1.2e-7).
--
-- param cer_threshold = 0.02  keep a pair only if chosen CER < this (NeMo docs use 0.01)
-- param min_duration = 1.5    both generations last at least this many seconds
-- param max_duration = 19.0   and at most this many seconds
-- param num_chosen = 1        1: best vs worst; 2: best two x worst two (up to 4 pairs)
-- param max_trailing_silence = -1.0  chosen's trailing silence (s, the VAD's trail_silence)
--                                    at most this, so silence cannot buy a better CER; <0: off
-- param max_leading_silence = -1.0   the same for leading silence (lead_silence); <0: off
-- param val_size = 0          pairs in the validation split (at most; whole val_by units)
-- param val_by = pair         what val draws whole: pair (NeMo), group or prompt (no leak)
-- param seed = 0              shuffle seed
WITH RECURSIVE
-- ttspo cache: candidate_pairs
-- (from here to "cache end", what depends only on generations and $num_chosen: a
-- Python session runs it once per generations version and reuses the result)
params AS (
    SELECT
        CASE WHEN $num_chosen IN (1, 2) THEN $num_chosen::INTEGER
             ELSE error('num_chosen must be 1 or 2, not ' || $num_chosen::VARCHAR) END AS num_chosen
),
points AS MATERIALIZED (
    -- the generations of usable groups, keyed k and gk (sql/macros.sql; computed once)
    SELECT * FROM usable_points('generations')
),
peeled (k, gk, cer, ssim, level, done) AS (
    -- NeMo's peeling, one front per step for every group at once: a point is on
    -- the current front if no remaining point dominates it. In the order CER asc,
    -- SSIM desc, the dominators of p are exactly the earlier, non-identical points
    -- with SSIM >= p's: a running max over the frame that excludes p's peers.
    SELECT k, gk, cer, ssim, 0, false FROM points
    UNION ALL
    SELECT k, gk, cer, ssim, level + 1,
           coalesce(max(ssim) OVER (PARTITION BY gk ORDER BY cer, ssim DESC
                                    RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
                                    EXCLUDE GROUP) < ssim, true)
    FROM peeled
    WHERE NOT done
),
fronts AS (SELECT k, level AS front FROM peeled WHERE done),
ordered AS MATERIALIZED (
    -- one global sort; within a group: front, CER asc, SSIM desc, sample index
    SELECT p.gk, p.k,
           row_number() OVER (ORDER BY p.gk, f.front, p.cer, p.ssim DESC,
                                       p.sample_index, p.generation_id) AS rn
    FROM points p JOIN fronts f USING (k)
),
group_ends AS (
    SELECT gk, min(rn) AS first_rn, max(rn) AS last_rn FROM ordered GROUP BY gk
),
best AS (
    SELECT o.gk, o.k AS ck
    FROM ordered o JOIN group_ends e USING (gk), params p
    WHERE o.rn < e.first_rn + p.num_chosen
),
worst AS (
    SELECT o.gk, o.k AS rk
    FROM ordered o JOIN group_ends e USING (gk), params p
    WHERE o.rn > e.last_rn - p.num_chosen
),
candidates AS MATERIALIZED (
    -- NeMo: chosen at positions 0[, 1], rejected at last[, last - 1]; every
    -- combination, with what the filters below read. Joined one side at a time:
    -- DuckDB cannot estimate Arrow scans, and a three-way join may become a nested loop.
    SELECT b.gk, b.ck, w.rk FROM best b JOIN worst w USING (gk)
),
with_chosen AS MATERIALIZED (
    SELECT cp.rk, c.k AS c_k, c.generation_id AS c_id, c.prompt_id, c.group_id, c.run,
           c.record_type, c.cer AS c_cer, c.ssim AS c_ssim, c.duration AS c_duration,
           c.lead_silence AS c_lead, c.trail_silence AS c_trail
    FROM candidates cp JOIN points c ON c.k = cp.ck
),
candidate_pairs AS MATERIALIZED (
    SELECT c.*, r.k AS r_k, r.generation_id AS r_id, r.cer AS r_cer, r.ssim AS r_ssim,
           r.duration AS r_duration
    FROM with_chosen c JOIN points r ON r.k = c.rk
),
-- ttspo cache end
pairs AS (
    SELECT c_id || '>' || r_id AS pair_id,
           prompt_id, group_id, run, record_type,
           c_id AS chosen_id, r_id AS rejected_id,
           c_cer AS chosen_cer, r_cer AS rejected_cer,
           c_ssim AS chosen_ssim, r_ssim AS rejected_ssim,
           r_cer - c_cer AS cer_delta,
           c_ssim - r_ssim AS sim_delta
    FROM candidate_pairs
    WHERE c_cer < $cer_threshold
      AND c_duration BETWEEN $min_duration AND $max_duration
      AND silence_ok(c_trail, $max_trailing_silence) AND silence_ok(c_lead, $max_leading_silence)
      AND c_k <> r_k
      -- NeMo: never a pair whose rejected is better on a metric, nor a zero margin
      AND (r_cer - c_cer) + (c_ssim - r_ssim) > 0
      AND r_cer >= c_cer AND r_ssim <= c_ssim
      AND r_duration BETWEEN $min_duration AND $max_duration
),
kept AS (
    -- rewards (z over all kept pairs), split and shuffle: sql/macros.sql
    SELECT * FROM nemo_rewards_and_split('pairs', $seed, $val_size, $val_by)
)
SELECT pair_id, prompt_id, group_id, run, record_type, chosen_id, rejected_id,
       1.0::DOUBLE AS chosen_reward, rejected_reward,
       chosen_cer, rejected_cer, chosen_ssim, rejected_ssim, cer_delta, sim_delta,
       split, position
FROM kept
ORDER BY position
