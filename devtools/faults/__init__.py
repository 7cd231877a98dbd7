"""Fault injection: scenarios shared by the pytest suite (tests/test_faults.py) and ``python -m bench.faults``."""
