-- ttspo recipe: best_worst
--
-- The simplest preference: in each group (group_id), the generation with the lowest
-- CER (higher SSIM, then lower sample index, breaks ties) is chosen against the one
-- with the highest CER (lower SSIM, then higher sample index, breaks ties). No Pareto
-- fronts: a chosen may have a lower SSIM than its rejected (never a higher CER).
-- Same group skipping, filters, rewards and split as `pareto` (see pareto.sql):
-- groups with an invalid, missing or non-finite metric are skipped; a pair is kept
-- if chosen CER < cer_threshold, both durations lie in [min_duration, max_duration],
-- and the rejected is strictly worse (higher CER, or equal CER and lower SSIM).
-- Rejected reward = 1 - (Phi(z(cer_delta)) + Phi(z(sim_delta))), z over kept pairs;
-- rewards, split and shuffle: nemo_rewards_and_split (sql/macros.sql).
--
-- param cer_threshold = 0.02  keep a pair only if chosen CER < this
-- param min_duration = 1.5    both generations last at least this many seconds
-- param max_duration = 19.0   and at most this many seconds
-- param max_trailing_silence = -1.0  chosen's trailing silence (s, the VAD's trail_silence)
--                                    at most this, so silence cannot buy a better CER; <0: off
-- param max_leading_silence = -1.0   the same for leading silence (lead_silence); <0: off
-- param val_size = 0          pairs in the validation split (at most; whole val_by units)
-- param val_by = pair         what val draws whole: pair (NeMo), group or prompt (no leak)
-- param seed = 0              shuffle seed
WITH
points AS MATERIALIZED (
    -- the generations of usable groups, keyed k and gk (sql/macros.sql; computed once)
    SELECT * FROM usable_points('generations')
),
ordered AS MATERIALIZED (
    -- one global sort; within a group: CER asc, SSIM desc, sample index
    SELECT gk, k,
           row_number() OVER (ORDER BY gk, cer, ssim DESC, sample_index, generation_id) AS rn
    FROM points
),
group_ends AS (
    SELECT gk, min(rn) AS first_rn, max(rn) AS last_rn FROM ordered GROUP BY gk
),
candidate_pairs AS (
    SELECT b.k AS ck, w.k AS rk
    FROM group_ends e
    JOIN ordered b ON b.rn = e.first_rn
    JOIN ordered w ON w.rn = e.last_rn
),
with_chosen AS MATERIALIZED (
    SELECT cp.rk, c.*
    FROM candidate_pairs cp JOIN points c ON c.k = cp.ck
    WHERE c.cer < $cer_threshold
      AND c.duration BETWEEN $min_duration AND $max_duration
      AND silence_ok(c.trail_silence, $max_trailing_silence)
      AND silence_ok(c.lead_silence, $max_leading_silence)
),
pairs AS (
    SELECT c.generation_id || '>' || r.generation_id AS pair_id,
           c.prompt_id, c.group_id, c.run, c.record_type,
           c.generation_id AS chosen_id, r.generation_id AS rejected_id,
           c.cer AS chosen_cer, r.cer AS rejected_cer,
           c.ssim AS chosen_ssim, r.ssim AS rejected_ssim,
           r.cer - c.cer AS cer_delta,
           c.ssim - r.ssim AS sim_delta
    FROM with_chosen c JOIN points r ON r.k = c.rk
    WHERE c.k <> r.k
      AND (r.cer > c.cer OR (r.cer = c.cer AND r.ssim < c.ssim))
      AND r.duration BETWEEN $min_duration AND $max_duration
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
