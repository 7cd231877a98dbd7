"""Baseline: one Celery task per event (``celery -A bench.per_event worker``).

The app uses the project's Celery configuration (``celeryconfig.build``: late
acks, publisher confirms on RabbitMQ, task events) with its one task routed to
the queue named by ``BENCH_PER_EVENT_QUEUE``. The task inserts its one row the
naive way, ORM ``add`` + ``commit``, in the worker process's own engine.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from celery import Celery

import celeryconfig
from bench.harness import baseline_row_extras
from config import get_settings
from models import AnalyticsEvent
from schema.event import us_to_timestamp
from tasks.base import DatabaseTask

TASK_NAME = "bench.insert_one"
QUEUE = os.environ.get("BENCH_PER_EVENT_QUEUE", "bench-per-event")

EXTRAS = baseline_row_extras()

app = Celery("bench-per-event", set_as_current=False)
app.conf.update(celeryconfig.build(get_settings()))
app.conf.update(task_routes={TASK_NAME: {"queue": QUEUE}}, beat_schedule={})


@app.task(bind=True, base=DatabaseTask, name=TASK_NAME)
def insert_one(self: DatabaseTask, event: dict[str, Any]) -> None:
    with self.session_factory() as session:
        session.add(
            AnalyticsEvent(
                event_id=uuid.UUID(hex=event["event_id"]),
                timestamp=us_to_timestamp(event["timestamp_us"]),
                tenant_id=event["tenant_id"],
                feature_name=event["feature_name"],
                user_id=event["user_id"],
                model=event["model"],
                input_tokens=event["input_tokens"],
                output_tokens=event["output_tokens"],
                tokens_used=event["input_tokens"] + event["output_tokens"],
                latency_ms=event["latency_ms"],
                status=event["status"],
                error_type=event["error_type"],
                **EXTRAS,
            )
        )
        session.commit()
