"""Studies: grids of runs as data (rbdc study), their tuning section, and the local process pool that runs them."""
