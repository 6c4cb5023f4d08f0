"""Studies: probe, sweep (queue and worker), report (tables, plots, outcomes, statistics), warm start and base rates."""
