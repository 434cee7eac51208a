"""Running programs on a batch system (Grid Engine and other DRMAA-1 schedulers)."""
