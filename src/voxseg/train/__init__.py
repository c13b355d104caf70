"""Training: recipe planning, the loop, checkpoints, distributed helpers."""
