"""Training engine: schedule, the prompt model, the training loop, run folders."""
