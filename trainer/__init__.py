"""ttspo trainer: losses, policies, Lance data, the training loop. Runs under torchrun."""
