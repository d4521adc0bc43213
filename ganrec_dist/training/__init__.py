"""Stage 4, training: the adversarial step (gan), sparse tables and their optimiser, batches,
the Ray Train worker and driver, checkpoints, resume, warm start, history and validation."""
