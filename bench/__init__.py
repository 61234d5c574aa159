"""Benchmarks: one home for all of them. Scripts (`python bench/throughput.py`, ...) and the R/W trade-off
study (`python -m bench.rw`); each says what it measures in its docstring."""
