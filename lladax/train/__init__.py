"""Training: the train job, its step, batches, checkpoints, optimizer and metrics."""
