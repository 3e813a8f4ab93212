"""The sweep engine: storage, the trial queue, workers, progress, status and SLURM."""
