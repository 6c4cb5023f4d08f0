"""Core math: the δS adapter, the Dr.GRPO loss, one optimiser pass and the one-sided projection."""
