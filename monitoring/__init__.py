"""Prometheus metrics: what the worker counts, and what /metrics reads at scrape time."""
