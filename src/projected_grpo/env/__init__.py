"""LeetCode reward-hacking environment: problems, prompts, sandbox, grader."""
