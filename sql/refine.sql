-- ttspo recipe: refine
--
-- A set rebuilt from what training and listening found (docs/review.md). From the
-- pairs of a base set version ($base: NAME, NAME@VERSION or NAME@TAG):
--   * drop the train pairs run $run never ranked right (pair_dynamics: wrong or a tie
--     at every epoch; macros.sql never_learned_pairs), matched by pair_id, so a set
--     version other than the one the run trained on refines too;
--   * drop the pairs whose latest human judgement chose the rejected generation
--     (labels: label_choices, the pair matched by its two generations, in either order);
--   * add the pairs people chose that the base lacks (a judgement of two generations of
--     one prompt, choice a or b), chosen = the one picked, as train pairs after the base's
--     positions, rejected_reward 0 (NeMo's reward for a pair of average deltas: there is
--     no z-score for a human preference). A chosen whose CER and SSIM are both worse
--     than its rejected's breaks the set contract and is left out (the metrics say no
--     twice; label_agreement() shows how often they disagree with people).
-- Reads pair_dynamics and labels: a store without one of them is a one-line error.
-- Metrics, run and record type come from generations (the build completes them), so
-- kept pairs read today's scores. `ttspo diff BASE NEW` counts each change's reason.
--
-- param base = prefs        the set version to refine
-- param run = ""            the DPO run whose never-learned train pairs are dropped ('' keeps them)
-- param drop_contradicted = true  drop pairs whose latest label chose the rejected
-- param add_chosen = true   add labeled pairs the base lacks
WITH
base AS MATERIALIZED (
    SELECT pair_id, prompt_id, group_id, chosen_id, rejected_id, chosen_reward,
           rejected_reward, split, position
    FROM query_table($base)
),
checked_run AS (
    -- a run that wrote no rows is a typo, not "nothing to drop"
    SELECT CASE WHEN $run = '' OR EXISTS (SELECT 1 FROM pair_dynamics WHERE run = $run)
                THEN true
                ELSE error('run ''' || $run || ''' has no rows in pair_dynamics') END AS ok
),
never AS (
    SELECT DISTINCT pair_id FROM never_learned_pairs('pair_dynamics', $run), checked_run
    WHERE $run <> '' AND ok
),
judged AS MATERIALIZED (SELECT * FROM label_choices(lab := 'labels')),
contradicted AS (
    SELECT b.pair_id
    FROM base b JOIN judged j
      ON j.low_id = least(b.chosen_id, b.rejected_id)
     AND j.high_id = greatest(b.chosen_id, b.rejected_id)
    WHERE $drop_contradicted AND j.chosen_id = b.rejected_id
),
kept AS (
    SELECT * FROM base
    WHERE pair_id NOT IN (SELECT pair_id FROM never)
      AND pair_id NOT IN (SELECT pair_id FROM contradicted)
),
added AS (
    SELECT c.prompt_id, c.group_id, j.chosen_id, j.other_id AS rejected_id
    FROM judged j
    JOIN generations c ON c.generation_id = j.chosen_id
    JOIN generations r ON r.generation_id = j.other_id
    WHERE $add_chosen
      AND c.prompt_id = r.prompt_id
      AND NOT (r.cer < c.cer AND r.ssim > c.ssim)
      AND NOT EXISTS (SELECT 1 FROM base b
                      WHERE least(b.chosen_id, b.rejected_id) = j.low_id
                        AND greatest(b.chosen_id, b.rejected_id) = j.high_id)
)
SELECT prompt_id, group_id, chosen_id, rejected_id, chosen_reward, rejected_reward, split,
       position
FROM kept
UNION ALL
SELECT prompt_id, group_id, chosen_id, rejected_id, 1.0::DOUBLE, 0.0::DOUBLE, 'train',
       coalesce((SELECT max(position) FROM base), -1)
           + row_number() OVER (ORDER BY chosen_id, rejected_id)
FROM added
ORDER BY position
