"""Tests of producer/."""
