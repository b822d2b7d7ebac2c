"""Online GRPO: rollout, rewards, the rollouts table, the loop."""
