"""Benchmarks: ``python -m bench.ingest`` (see bench/ingest.py)."""
