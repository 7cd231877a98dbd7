"""Fault injection: scenarios shared by the pytest suite (tests/faults/test_faults.py) and ``python -m bench.faults``."""
