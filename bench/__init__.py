"""`make bench`: the benchmark runner (see bench/run.py)."""
