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
