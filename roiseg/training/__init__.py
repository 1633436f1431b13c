"""Training: loss, metrics, checkpoints, the train loop, validation pictures."""
