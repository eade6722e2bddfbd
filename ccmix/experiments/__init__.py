"""Experiments: sweeps (plan, local, SLURM, stopping, results), the subcommands, the notebooks' parameters and benchmarks."""
