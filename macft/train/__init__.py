"""Training: the loop, objectives, checkpoints."""
