"""Celery configuration, derived from config.Settings (environment variables).

``build(settings)`` is the single source; the module's globals are what it
returns for the process's settings, so ``config_from_object("celeryconfig")``
works as Celery expects. The producer calls ``build`` with its own settings.
Reading the environment is all this module does at import.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab

from config import Settings, get_settings
from tasks.broker import ingest_queue
from tasks.names import (
    ALERTS_EVALUATE,
    ALERTS_TASKS,
    INGEST_WRITE_BATCH,
    PARTITIONS_APPLY_RETENTION,
    PARTITIONS_ENSURE_AHEAD,
    PARTITIONS_TASKS,
    PRICES_REFRESH,
    PRICES_TASKS,
    ROLLUPS_RUN,
    ROLLUPS_TASKS,
    WEBHOOKS_DISPATCH,
    WEBHOOKS_TASKS,
)

# Hourly, so that a month is created long before it starts even if some runs
# fail; the write path creates a missing month anyway (storage.events).
PARTITION_ENSURE_EVERY = timedelta(hours=1)
# Daily at a quiet hour (UTC); retention only ever removes whole old months.
PARTITION_RETENTION_AT = crontab(hour=3, minute=17)
PARTITION_RETENTION_EXPIRES_S = 6 * 3600
MAINTENANCE_QUEUE = "maintenance"
REDIS_RESTORE_SWEEP_S = 10  # seconds between sweeps for unacknowledged messages


def build(settings: Settings) -> dict[str, Any]:
    if settings.broker_is_redis:
        visibility_timeout = settings.redis_visibility_timeout_s
        transport_options: dict[str, Any] = {
            "visibility_timeout": visibility_timeout,
            # kombu looks for messages a dead worker left unacknowledged only
            # every interval x throttle seconds (10 x 10 by default), so they
            # would wait up to ~100 s more than the visibility timeout.
            "unacked_restore_interval": max(1, min(REDIS_RESTORE_SWEEP_S, visibility_timeout)),
            "unacked_restore_throttle": 1,
        }
    else:
        # Publisher confirms: a publish returns only once RabbitMQ has the message.
        transport_options = {"confirm_publish": True}
    return {
        "broker_url": settings.celery_broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # results live in PostgreSQL, not in a result backend
        # Acknowledge a batch only after its transaction committed; a worker that
        # dies mid-batch leaves the message to be redelivered (writes are idempotent).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task that fails (it should not: write_batch retries or parks what it
        # cannot store) is rejected without requeue, not acknowledged: on RabbitMQ
        # the ingest queue's dead-letter exchange keeps it in "<queue>.dead"
        # (tasks.broker). Celery 5.7 replaces task_acks_on_failure_or_timeout
        # (deprecated, warns) by these two; both False means what it did.
        "task_acks_on_failure": False,
        "task_acks_on_timeout": False,
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        # Celery would lower the prefetch after a reconnect and raise it again as
        # acks come in; the prefetch here is small, and that code runs on the path
        # where tasks.consumer catches kombu's Redis cleanup error.
        "worker_enable_prefetch_count_reduction": False,
        # The ingest queue with its dead-letter exchange (RabbitMQ; tolerant of a
        # queue declared before, see tasks.broker). Other queues are created on demand.
        "task_queues": [ingest_queue(settings.ingest_queue, dead_letter_exchange=not settings.broker_is_redis)],
        "task_routes": {
            INGEST_WRITE_BATCH: {"queue": settings.ingest_queue},
            PARTITIONS_TASKS: {"queue": MAINTENANCE_QUEUE},
            ROLLUPS_TASKS: {"queue": settings.rollup_queue},
            PRICES_TASKS: {"queue": MAINTENANCE_QUEUE},
            ALERTS_TASKS: {"queue": settings.alerts_queue},
            WEBHOOKS_TASKS: {"queue": settings.alerts_queue},
        },
        # Messages the worker cannot run are dead-lettered, not dropped.
        "worker_consumer": "tasks.consumer:DeadLetteringConsumer",
        "worker_send_task_events": True,  # Flower's task rates
        "task_send_sent_event": False,  # an event per publish would double producer traffic
        # Beat keeps each entry's last run in its schedule file (Procfile:
        # --schedule), so a restart neither repeats nor skips a run. ``expires``
        # drops runs that queued up while no worker consumed "maintenance", so a
        # backlog does not run the same job many times in a row; the jobs
        # themselves are safe to run concurrently (see tasks.partitions).
        "beat_schedule": {
            "ensure-partitions": {
                "task": PARTITIONS_ENSURE_AHEAD,
                "schedule": PARTITION_ENSURE_EVERY,
                "options": {"expires": PARTITION_ENSURE_EVERY.total_seconds()},
            },
            "partition-retention": {
                "task": PARTITIONS_APPLY_RETENTION,
                "schedule": PARTITION_RETENTION_AT,
                "options": {"expires": PARTITION_RETENTION_EXPIRES_S},
            },
            # Runs may overlap safely (storage.rollups); expiring after one
            # interval keeps a stopped worker from facing a pile of runs.
            "rollup-pending": {
                "task": ROLLUPS_RUN,
                "schedule": timedelta(seconds=settings.rollup_interval_s),
                "options": {"expires": settings.rollup_interval_s},
            },
            # The whole rate table again, for a catalog upgraded since (pricing.rates).
            "prices-refresh": {
                "task": PRICES_REFRESH,
                "schedule": timedelta(seconds=settings.prices_refresh_interval_s),
                "options": {"expires": settings.prices_refresh_interval_s},
            },
            # One evaluator at a time (alerts.evaluate); a run that finds another still going returns at once.
            "alerts-evaluate": {
                "task": ALERTS_EVALUATE,
                "schedule": timedelta(seconds=settings.alert_evaluate_interval_s),
                "options": {"expires": settings.alert_evaluate_interval_s},
            },
            # New notifications and due retries (alerts.delivery); runs may overlap safely.
            "webhooks-dispatch": {
                "task": WEBHOOKS_DISPATCH,
                "schedule": timedelta(seconds=settings.webhook_dispatch_interval_s),
                "options": {"expires": settings.webhook_dispatch_interval_s},
            },
        },
        "timezone": "UTC",
        "enable_utc": True,
    }


globals().update(build(get_settings()))
