"""Benchmarks: `make bench` (or `python -m benchmarks [suite ...]`) writes benchmarks/results.md."""
