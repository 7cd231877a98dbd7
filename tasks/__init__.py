"""Celery tasks, one module per domain: ingest, partitions."""
