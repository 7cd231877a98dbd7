"""Tests of schema/."""
