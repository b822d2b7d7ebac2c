"""Run infrastructure: the training config, checkpoints (files and table rows), run folders."""
