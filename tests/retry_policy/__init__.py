"""Tests of retry_policy/."""
