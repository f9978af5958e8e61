"""Benchmarks of the gateway (scripts, not tests); `python bench/run.py` is the entry point."""
