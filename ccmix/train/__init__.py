"""Training runs: the fit loop, evaluation, checkpoints, the run folder with its lock and segments, interrupts and data parallelism."""
