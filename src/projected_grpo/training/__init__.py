"""Training: the GRPO loop, the policy, rollouts, the teacher pool, held-out eval, problem splits, the
run dir (I/O, lock), ranks and trackers."""
