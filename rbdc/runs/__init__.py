"""A run: the stage loop, its run directory and manifest, one writer per run, parallel stage children, and the
launchers (torchrun, Slurm)."""
