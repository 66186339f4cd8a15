"""Training: config, the loop, evaluation, plots, compare, the demo, DDP helpers."""
