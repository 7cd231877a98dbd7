"""Metrics the ingest worker counts, after each commit, and the producer's spool episodes.

With ``PROMETHEUS_MULTIPROC_DIR`` set in the environment of the worker and
the web process (the Procfile does it), the worker's counters reach the web
process's ``/metrics`` through that directory (prometheus_client's multiprocess
mode); the variable must be set before the process starts.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
TRANSACTION_MESSAGES_BUCKETS = (1, 2, 5, 10, 50, 100, 250, 500, 1000, 2000)

EVENTS_STORED = Counter("analytics_events_stored", "Events committed to analytics_events.")
EVENTS_DUPLICATE = Counter("analytics_events_duplicate", "Redelivered events dropped because already stored.")
EVENTS_DEAD_LETTERED = Counter("analytics_events_dead_lettered", "Events or messages written to dead_letters.")
BATCH_SIZE = Histogram(
    "analytics_ingest_batch_events",
    "Events per ingest transaction (one broker message with the Celery task, one flush with the aggregator).",
    buckets=BATCH_SIZE_BUCKETS,
)
TRANSACTION_MESSAGES = Histogram(
    "analytics_ingest_transaction_messages",
    "Broker messages committed per ingest transaction by the aggregator (INGEST_MODE=aggregate).",
    buckets=TRANSACTION_MESSAGES_BUCKETS,
)
INGEST_LAG = Gauge(
    "analytics_ingest_lag_seconds",
    "Age of the oldest event of the last committed batch, at its commit: how far storage runs behind track().",
    multiprocess_mode="mostrecent",
)


MESSAGES_PARKED = Counter(
    "analytics_messages_parked",
    "Ingest messages that could not be stored nor dead-lettered in PostgreSQL for a reason about the "
    "message, parked on the broker's <queue>.dead (python -m cli dead-letters requeue-broker moves them back).",
)
PRODUCER_SPOOL_FULL = Counter(
    "analytics_producer_spool_full",
    "Times a producer's spool reached PRODUCER_SPOOL_MAX_BYTES (one per episode): events then wait in "
    "the memory buffer, and beyond PRODUCER_BUFFER_MAX_EVENTS are dropped.",
)


def batch_committed(events: int, stored: int, duplicates: int, dead_lettered: int, oldest_age_s: float | None) -> None:
    BATCH_SIZE.observe(events)
    EVENTS_STORED.inc(stored)
    EVENTS_DUPLICATE.inc(duplicates)
    EVENTS_DEAD_LETTERED.inc(dead_lettered)
    if oldest_age_s is not None:
        INGEST_LAG.set(oldest_age_s)


def transaction_messages(messages: int) -> None:
    TRANSACTION_MESSAGES.observe(messages)


def message_parked() -> None:
    MESSAGES_PARKED.inc()


def producer_spool_full() -> None:
    PRODUCER_SPOOL_FULL.inc()


OTLP_SPANS = Counter(
    "analytics_otlp_spans",
    "Spans received by POST /v1/traces, by result: accepted (tracked as events), rejected (a model call that "
    "failed validation, counted in the answer's partial_success) or skipped (not a model call).",
    ["result"],
)


def otlp_spans(accepted: int, rejected: int, skipped: int) -> None:
    OTLP_SPANS.labels("accepted").inc(accepted)
    OTLP_SPANS.labels("rejected").inc(rejected)
    OTLP_SPANS.labels("skipped").inc(skipped)


ALERT_RULES = Gauge(
    "analytics_alert_rules",
    "Enabled alert rules in each state (ok, warning, critical) after the last evaluation cycle.",
    ["state"],
    multiprocess_mode="mostrecent",
)


def alert_rules_by_state(counts: Mapping[str, int]) -> None:
    for state, count in counts.items():
        ALERT_RULES.labels(state).set(count)
