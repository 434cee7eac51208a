"""hpcproc benchmarks: `python -m benchmarks [--only NAME] [--json]`."""
