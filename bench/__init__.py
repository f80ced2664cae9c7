"""Benchmarks for s2v-batch: one module per benchmark, each runnable as `python -m bench.<name>`."""
