"""Training: one optimizer step, checkpoints, dev scoring."""
