"""Training: setup (device, optimizer, threads), the loop, tasks, checkpoints, logs and the run."""
