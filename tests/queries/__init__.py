"""Tests of queries/."""
