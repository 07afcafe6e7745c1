"""Training data: OSUM's formats, ASR+X batches, augmentation."""
