"""Tests of faults/."""
