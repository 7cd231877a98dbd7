"""Alerting on the rollups and the cost figures: rules, their evaluation, a state machine per rule, and the
notification outbox that webhook delivery reads. Importing this package opens no connection."""
